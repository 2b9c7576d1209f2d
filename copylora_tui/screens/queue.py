"""Every job of the queue with its progress, and the keys that steer them.

The header line says whether the worker daemon runs (and starts it on ``w``); the table
follows the app's snapshot; the line under it explains the highlighted job: a failed job's
error in full, what a waiting job waits for.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static

from copylora_tui.core.formatting import job_copy_text, project_label, rate_text
from copylora_tui.core.snapshot import QueueSnapshot, retry_hint
from copylora_tui.widgets.app_footer import AppFooter
from copylora_tui.widgets.app_header import AppHeader
from copylora_tui.widgets.guard import ActsWhileOpen, while_open
from copylora_tui.widgets.job_table import JobTable
from copylora_tui.widgets.snapshot_watch import catch_up, watch_snapshot
from copylora_tui.widgets.steady import SteadyStatic
from engine.jobs.queue import Job, JobStatus, artifacts_text

# The newest finished jobs the table shows (every running and waiting one is shown). A queue of
# months held 9 000 finished jobs, and a table of all of them took 4 s of CPU to open each time
# the screen was; `copylora queue --all` lists every one, `copylora clean` removes them.
FINISHED_SHOWN = 200


def shown_jobs(jobs: tuple[Job, ...]) -> tuple[list[Job], int]:
    """The jobs the table shows (in the snapshot's order), and how many finished ones it leaves out."""
    finished = [j for j in jobs if j.status.finished]
    left_out = max(0, len(finished) - FINISHED_SHOWN)
    return [j for j in jobs if not j.status.finished] + finished[:FINISHED_SHOWN], left_out


def job_detail(job: Job | None, snapshot: QueueSnapshot) -> Text:
    if job is None:
        return Text("no jobs: run a project from the Projects screen (1, then r)", style="dim")
    head = f"#{job.id} {job.label} of {project_label(job.project)}: "
    if job.status is JobStatus.FAILED:
        return Text.assemble((head, "bold"), (f"failed: {job.error or 'no reason recorded'}", "red"), f"  ({retry_hint(job, snapshot)})")
    if job.status is JobStatus.CANCELLED:
        return Text.assemble((head, "bold"), (job.error or "cancelled", "dim"), "  (r retries; it resumes from its checkpoint)")
    if job.status.waiting:
        waits = [d for d in job.depends_on if (dep := snapshot.job(d)) is not None and dep.status is not JobStatus.DONE]
        reason = f"waits for {', '.join(f'#{d}' for d in waits)}" if waits else ("paused (p resumes)" if job.status is JobStatus.PAUSED else "next free slot")
        if job.status is JobStatus.QUEUED and job.error and job.error.startswith("interrupted"):
            reason = job.error  # a Slurm job cut short (time limit, preemption, node failure), to be submitted again
        if job.status is JobStatus.QUEUED and not snapshot.worker_running:
            reason += " · the worker is not running: w starts it"
        return Text.assemble((head, "bold"), reason)
    if job.id in snapshot.room_waits:  # its progress stands still meanwhile: say why
        from engine.jobs.room_wait import room_wait_text

        return Text.assemble((head, "bold"), (room_wait_text(snapshot.room_waits[job.id]), "bold yellow"))
    if job.interrupted:
        from copylora_tui.screens.monitor import interrupted_text

        return Text.assemble((head, "bold"), (interrupted_text(job), "yellow"))
    if job.status is JobStatus.RUNNING and job.slurm:  # the Slurm executor: Slurm's own word (engine.jobs.slurm)
        from engine.jobs.slurm import status_text

        state = status_text(job.slurm)
        speed = f" · {rate_text(job.it_per_s)}" if job.it_per_s and job.slurm.get("state") == "RUNNING" else ""
        return Text.assemble((head, "bold"), f"{state}{speed} · enter opens the monitor")
    if job.status is JobStatus.RUNNING:
        where = f"GPU {job.gpu}" if job.gpu else "CPU"
        copy = job_copy_text(job)  # the table has no room for it at 100 columns: said here
        copy = f" · copy {copy}{'' if copy.endswith('dB') else ' dB'}" if copy else ""
        return Text.assemble((head, "bold"), f"running on {where} · {rate_text(job.it_per_s)}{copy} · enter opens the monitor")
    return Text.assemble((head, "bold"), ("done", "green"), f"  {artifacts_text(job.artifacts)}")


class QueueScreen(ActsWhileOpen, Screen):
    BINDINGS = [
        Binding("enter,m", "monitor", "Monitor", id="queue.monitor"),
        Binding("c", "cancel", "Cancel", id="queue.cancel"),
        Binding("r", "retry", "Retry", id="queue.retry"),
        Binding("p", "pause_resume", "Pause", id="queue.pause"),
        Binding("K,shift+up", "move('up')", "Move", id="queue.up", key_display="K/J"),
        Binding("J,shift+down", "move('down')", "Down", id="queue.down", show=False),
        Binding("w", "start_worker", "Worker", id="queue.worker"),
        Binding("escape", "back", "Back", id="queue.back", show=False),
        # 2 (Queue) leads here, and 3 (Monitor) does what m does (the highlighted job's monitor):
        # hidden so that the keys of this screen fit an 80-column footer
        Binding("2", "app.show_queue", "Queue", id="app.queue", show=False),
        Binding("3", "app.show_monitor", "Monitor", id="app.monitor", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()  # no id: a screen of this kind may still be leaving when the next arrives

    def compose(self) -> ComposeResult:
        yield AppHeader()
        yield SteadyStatic("", id="worker-line", classes="status-line")
        # No speed column: with it a twin job's loss ("A 0.7426 B 0.7420") ran past 100 columns;
        # the highlighted job's speed is in the line under the table, and in its monitor.
        yield JobTable(("job", "project", "task", "status", "progress", "eta", "loss"), id="jobs")
        yield SteadyStatic("", id="job-detail", classes="detail")
        yield AppFooter()

    @while_open
    def on_mount(self) -> None:
        self.title = "Queue"
        watch_snapshot(self, self.show_snapshot)

    def on_screen_resume(self) -> None:
        catch_up(self, self.show_snapshot)

    @while_open
    def show_snapshot(self, snapshot: QueueSnapshot) -> None:
        line = self.query_one("#worker-line", Static)
        jobs, left_out = shown_jobs(snapshot.jobs)
        older = (f"  ·  {left_out} older finished job{'s' * (left_out != 1)} not shown: copylora queue --all "
                 "(copylora clean removes them)", "dim") if left_out else ""
        if snapshot.worker_running:
            line.update(Text.assemble(("● ", "green"), snapshot.worker_text(), older))
        else:
            line.update(Text.assemble(("○ ", "yellow"), (snapshot.worker_text(), "yellow"), ("  ·  w starts it", "bold"), older))
        self.query_one("#jobs", JobTable).show_jobs(jobs)
        self.show_detail()

    @while_open
    def show_detail(self) -> None:
        snapshot: QueueSnapshot = self.app.snapshot
        job_id = self.selected_job_id()
        self.query_one("#job-detail", Static).update(job_detail(snapshot.job(job_id) if job_id else None, snapshot))

    def on_data_table_row_highlighted(self, _event) -> None:
        self.show_detail()

    def on_data_table_row_selected(self, _event) -> None:
        self.action_monitor()

    def selected_job_id(self) -> int | None:
        tables = self.query("#jobs")  # none yet while the screen is being built
        return tables.first(JobTable).selected_job_id() if tables else None

    def _with_job(self, command) -> None:
        """Run ``command(queue, job_id) -> str`` in a thread; its message is shown after the
        job's name (taken here, on the UI thread: threads cannot reach the app)."""
        from copylora_tui.screens.monitor import job_name

        job_id = self.selected_job_id()
        if job_id is not None:
            what = job_name(self.app.snapshot, job_id)
            self.app.queue_command(lambda queue: f"{what}: {command(queue, job_id)}")

    def action_monitor(self) -> None:
        job_id = self.selected_job_id()
        if job_id is not None:
            self.app.action_show_monitor(job_id)

    def action_cancel(self) -> None:
        self._with_job(lambda queue, job_id: queue.cancel(job_id))

    def action_retry(self) -> None:
        self._with_job(lambda queue, job_id: queue.retry(job_id))

    def action_pause_resume(self) -> None:
        def toggle(queue, job_id):
            job = queue.get(job_id)
            return queue.resume(job_id) if job.status is JobStatus.PAUSED else queue.pause(job_id)

        self._with_job(toggle)

    def action_move(self, where: str) -> None:
        self._with_job(lambda queue, job_id: queue.move(job_id, where))

    def action_start_worker(self) -> None:
        self.app.action_start_worker()

    def action_back(self) -> None:
        if not self.app.close_keys_panel():
            self.app.close_screen(self)
