"""A table of jobs that updates in place from each queue snapshot.

Rows are keyed by job id and only changed cells are rewritten, so the cursor stays on the
same job while progress moves twice a second; the rows are rebuilt only when the set or the
order of jobs changes, or a column's width (see fitted_table: widths are set with the cells,
never left to the table's idle). Progress bars are text (``━━━╌╌``) so they need no colour
to read.
"""

from __future__ import annotations

from typing import Callable

from rich.text import Text

from copylora_tui.core.formatting import STATUS_STYLE, bar, eta_text, job_copy_text, job_loss_text, project_label, rate_text, slurm_pending, when_text
from copylora_tui.widgets.fitted_table import FittedTable, cell_width, plain
from engine.jobs.queue import Job, JobStatus


def status_cell(job: Job) -> Text:
    text = job.shown_status
    if slurm_pending(job):
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
    "project": ("project", lambda j: Text(project_label(j.project), no_wrap=True, overflow="ellipsis")),  # cut first when narrow
    "task": ("task", lambda j: Text(j.label, no_wrap=True, overflow="ellipsis")),
    "status": ("status", status_cell),
    "progress": ("progress", progress_cell),
    "bar": ("progress", lambda j: progress_cell(j, 10, counts=False)),  # for narrow panels
    "rate": ("speed", lambda j: Text(rate_text(j.it_per_s) if j.live and not slurm_pending(j) else "", justify="right")),
    "eta": ("ETA", lambda j: Text(eta_text(j.eta_s) if j.live and not slurm_pending(j) else "", justify="right")),
    "loss": ("loss", lambda j: Text(job_loss_text(j), justify="right", no_wrap=True, overflow="ellipsis")),  # cut: visibly
    "copy": ("copy", lambda j: Text(job_copy_text(j), justify="right")),
    "finished": ("finished", lambda j: when_text(j.finished_at) if j.finished_at else ""),
}


# Columns cut, in this order, where the table is narrower than its contents: (name, least
# width; None: cut away only where no row fills it).
CUTS: tuple[tuple[str, int | None], ...] = (("project", 6), ("eta", None), ("task", 9))


class JobTable(FittedTable):
    def __init__(self, columns: tuple[str, ...], **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self.column_names = columns
        self._order: list[int] = []
        self._cells: dict[int, list] = {}
        # job id: (the Job the cells were made of, its cells, their widths). The queue's reads
        # hand back the same Job while its row is unchanged (engine.jobs.job_cache), so only
        # the jobs that moved are formatted again: a queue of months is thousands of rows.
        self._made: dict[int, tuple[Job, list, list[int]]] = {}

    def on_mount(self) -> None:
        self.show(self.specs(), [])

    def specs(self) -> list[tuple[str, str, int | None]]:
        return [(name, COLUMNS[name][0], None) for name in self.column_names]

    def selected_job_id(self) -> int | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def _row(self, job: Job) -> tuple[Job, list, list[int]]:
        made = self._made.get(job.id)
        if made is None or made[0] is not job:
            cells = [COLUMNS[name][1](job) for name in self.column_names]
            made = (job, cells, [cell_width(cell) for cell in cells])
        return made

    def _fitted(self, widths: list[int]) -> list[int]:
        """The columns' widths, cut where they are wider than the table (at 80 columns a twin
        job's loss ran off the right edge, "los", "A 0", behind a sideways scroll bar): the
        project's first, to 6 at the least (the line under the table names it whole), then an
        ETA column no job fills (its header alone), then the task's, to 9 at the least."""
        room = self.content_room(len(widths), len(self._made))
        if room is None:
            return widths
        widths = list(widths)
        for name, least in CUTS:
            excess = sum(widths) - room
            if excess <= 0:
                break
            if name not in self.column_names:
                continue
            index = self.column_names.index(name)
            if least is None:  # only where empty in every row
                if any(made[2][index] for made in self._made.values()):
                    continue
                least = 0
            widths[index] = max(least, widths[index] - excess)
        return widths

    def on_resize(self) -> None:
        if self._order:  # the widths follow the table's (rebuilt, the cursor kept, where one moves)
            self.show_jobs([self._made[job_id][0] for job_id in self._order])

    def show_jobs(self, jobs: list[Job]) -> None:
        order = [j.id for j in jobs]
        self._made = {job.id: self._row(job) for job in jobs}
        cells = {job_id: made[1] for job_id, made in self._made.items()}
        widths = self._fitted([max([cell_width(label), *(made[2][index] for made in self._made.values())])
                               for index, (_key, label, _width) in enumerate(self.specs())])  # fitted_widths, from the rows' own
        if order != self._order or widths != list(self.column_widths().values()):
            keep = self.selected_job_id()
            specs = [(key, label, width) for (key, label, _none), width in zip(self.specs(), widths)]
            self.show(specs, [(str(job_id), cells[job_id]) for job_id in order])
            self._cells, self._order = cells, order
            if keep in order:
                self.move_cursor(row=order.index(keep), animate=False)
            return
        for job_id in order:
            old = self._cells.get(job_id) or [None] * len(self.column_names)
            if old is cells[job_id]:
                continue  # the same Job: nothing in its row moved
            for name, new, before in zip(self.column_names, cells[job_id], old):
                if new != before:
                    self.set_cell(str(job_id), name, plain(new))  # the width is already right
        self._cells = cells
