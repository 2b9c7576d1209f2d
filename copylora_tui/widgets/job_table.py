"""A table of jobs that updates in place from each queue snapshot.

Rows are keyed by job id and only changed cells are rewritten, so the cursor stays on the
same job while progress moves twice a second; the rows are rebuilt only when the set or the
order of jobs changes. Progress bars are text (``━━━╌╌``) so they need no colour to read.
"""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.widgets import DataTable

from copylora_tui.core.formatting import STATUS_STYLE, bar, eta_text, job_copy_text, job_loss_text, project_label, rate_text, when_text
from engine.jobs.queue import Job, JobStatus


def status_cell(job: Job) -> Text:
    text = job.shown_status
    if job.live and job.slurm and job.slurm.get("state") == "PENDING":
        text = "pending"  # submitted to Slurm, waiting for a node (the status line says why)
    if job.live and job.control:
        text = f"{job.control}…"  # cancelling/pausing: the job is writing its checkpoint
    return Text(text, style=STATUS_STYLE.get(job.shown_status, ""))


def progress_cell(job: Job, width: int = 10, counts: bool = True) -> Text:
    if not job.total:
        return Text(bar(1.0 if job.status is JobStatus.DONE else 0.0, width), style="dim")
    done = job.total if job.status is JobStatus.DONE else (job.step or 0)
    style = "cyan" if job.live else ("red" if job.status is JobStatus.FAILED else "yellow" if job.interrupted else "")
    return Text.assemble((bar(job.fraction, width), style), f" {done}/{job.total}" if counts else "")


COLUMNS: dict[str, tuple[str, Callable[[Job], object]]] = {
    "job": ("job", lambda j: Text(f"#{j.id}", justify="right")),
    "project": ("project", lambda j: project_label(j.project)),
    "task": ("task", lambda j: j.label),
    "status": ("status", status_cell),
    "progress": ("progress", progress_cell),
    "bar": ("progress", lambda j: progress_cell(j, 10, counts=False)),  # for narrow panels
    "rate": ("speed", lambda j: Text(rate_text(j.it_per_s) if j.live else "", justify="right")),
    "eta": ("ETA", lambda j: Text(eta_text(j.eta_s) if j.live else "", justify="right")),
    "loss": ("loss", lambda j: Text(job_loss_text(j), justify="right")),
    "copy": ("copy", lambda j: Text(job_copy_text(j), justify="right")),
    "finished": ("finished", lambda j: when_text(j.finished_at) if j.finished_at else ""),
}


class JobTable(DataTable):
    def __init__(self, columns: tuple[str, ...], **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self.column_names = columns
        self._order: list[int] = []
        self._cells: dict[int, list] = {}

    def on_mount(self) -> None:
        for name in self.column_names:
            self.add_column(COLUMNS[name][0], key=name)

    def selected_job_id(self) -> int | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def show_jobs(self, jobs: list[Job]) -> None:
        order = [j.id for j in jobs]
        if order != self._order:
            keep = self.selected_job_id()
            self.clear()
            self._cells = {}
            for job in jobs:
                cells = [COLUMNS[name][1](job) for name in self.column_names]
                self._cells[job.id] = cells
                self.add_row(*cells, key=str(job.id))
            self._order = order
            if keep in order:
                self.move_cursor(row=order.index(keep), animate=False)
            return
        for job in jobs:
            cells = [COLUMNS[name][1](job) for name in self.column_names]
            old = self._cells.get(job.id)
            for name, new, before in zip(self.column_names, cells, old or [None] * len(cells)):
                if new != before:
                    self.update_cell(str(job.id), name, new, update_width=True)
            self._cells[job.id] = cells
