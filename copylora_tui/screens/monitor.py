"""One job, live: progress, speed, ETA, loss curve, learning rate, GPU memory, the log and
the job's newest preview grid.

Every figure comes from the queue: the ETA is the trainer's own (the same in every client,
and right after re-attaching, unlike a progress bar's estimate that restarts from zero), and
the curve is the job's stored history, so opening the monitor of a job that has run for an
hour shows the whole hour. The log is the job's log file, followed as it grows. The preview
pane sits beside the log, and is hidden on narrow terminals (o still reports its path).
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import ProgressBar, Static

from copylora_tui.core.formatting import block_bar, copy_trend, eta_text, loss_text, mb_text, project_label, rate_text, slurm_pending
from copylora_tui.core.history import newest_attempt
from copylora_tui.core.projects import sides_apart
from copylora_tui.core.reader import QueueReader
from copylora_tui.core.snapshot import QueueSnapshot, retry_hint
from copylora_tui.widgets.app_footer import AppFooter
from copylora_tui.widgets.app_header import AppHeader
from copylora_tui.widgets.curve import Curve
from copylora_tui.widgets.guard import ActsWhileOpen, while_open
from copylora_tui.widgets.job_table import status_cell
from copylora_tui.widgets.log_tail import LogTail
from copylora_tui.widgets.preview_pane import PreviewPane, show_preview_path
from copylora_tui.widgets.snapshot_watch import catch_up, watch_snapshot
from copylora_tui.widgets.steady import SteadyStatic, set_border_titles
from engine.jobs.queue import Job, JobStatus
from engine.train.progress import format_duration


def job_name(snapshot: QueueSnapshot, job_id: int) -> str:
    """'#3 train A of example-monochrome': what a key acts on, said in its notification."""
    job = snapshot.job(job_id)
    return f"#{job_id} {job.label} of {project_label(job.project)}" if job is not None else f"#{job_id}"


def interrupted_text(job: Job) -> str:
    return (f"interrupted at step {job.step or 0}: the worker stopped while this ran (a restart, a kill). "
            "Start the worker (w on the queue screen) and it resumes from its newest checkpoint")

POLL_S = 0.5
HISTORY_IDLE_S = 5.0  # a job that does not run: its curve cannot move, but a GPU's VRAM history still may

# What a job that does not train counts in its progress rows (a merge has no loss to draw).
PROGRESS_UNITS = {"merge": "modules merged", "sample": "pictures drawn", "reg": "class images made"}


def gpu_of(job: Job | None, gpus: tuple[dict, ...]) -> dict | None:
    """The GPU sample of the job's slot (the worker's CUDA_VISIBLE_DEVICES), else the first."""
    if not gpus:
        return None
    if job is not None and job.gpu is not None and job.gpu.isdigit():
        match = [g for g in gpus if g["gpu"] == int(job.gpu)]
        if match:
            return match[0]
    return gpus[0]


def progress_text(job: Job, width: int = 30) -> Text:
    """A job without a loss (a merge, a preview grid, class images): what its progress rows
    count, done of total, and a bar."""
    unit = PROGRESS_UNITS.get(job.kind, "steps done")
    total = job.total or 0
    done = total if job.status is JobStatus.DONE else (job.step or 0)
    if not total:  # nothing counted yet (or a job from before its kind reported progress)
        if job.status is JobStatus.DONE:
            return Text(f"{job.label}: done", style="dim")
        note = "waits for its turn" if job.status.waiting else "starting"
        return Text(f"{job.label}: {note} · its progress ({unit}) shows here", style="dim")
    text = Text.assemble((f"{done}/{total}", "bold"), f" {unit}")
    if job.live and job.it_per_s:
        text.append(f"  {rate_text(job.it_per_s)}", style="dim")
    text.append("\n")
    text.append(block_bar(done / total, width), style="cyan")
    text.append(f" {100 * done / total:.0f}%")
    return text


class MonitorScreen(ActsWhileOpen, Screen):
    BINDINGS = [
        Binding("escape", "back", "Back", id="monitor.back"),
        Binding("c", "cancel", "Cancel", id="monitor.cancel"),
        Binding("p", "pause_resume", "Pause", id="monitor.pause"),
        Binding("r", "retry", "Retry", id="monitor.retry"),
        Binding("s", "save_now", "Save", id="monitor.save"),
        Binding("v", "sample_now", "Sample", id="monitor.sample"),
        Binding("o", "open_preview", "Preview", id="monitor.preview"),
        # 3 (Monitor) leads to this screen: hidden here so the job's keys fit a 100-column footer
        Binding("3", "app.show_monitor", "Monitor", id="app.monitor", show=False),
    ]
    # Below 90 columns the log needs the whole width: the preview pane is hidden (CSS).
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (90, "-wide")]

    def __init__(self, job_id: int) -> None:
        super().__init__()  # no id: a screen of this kind may still be leaving when the next arrives
        self.job_id = job_id
        self._history_at = float("-inf")  # when the history was last asked for (time.monotonic)
        self._reader = None  # this screen's connection (a QueueReader), used from its worker thread only
        self._points_step: int | None = None
        self._copy_trends: tuple[str, str] = ("", "")  # ↑/↓/→ of A's (or the one side's) and B's copy checks
        self._saw_it_run = False  # watched while running: when it is done, follow its chain

    def compose(self) -> ComposeResult:
        yield AppHeader()
        yield SteadyStatic("", id="job-title", classes="status-line")
        yield ProgressBar(total=100, show_eta=False, show_percentage=True, id="progress")
        yield SteadyStatic("", id="numbers")
        yield SteadyStatic("", id="job-error", classes="detail")
        with Horizontal(id="panels"):
            with Vertical(id="loss-panel", classes="panel"):
                yield SteadyStatic("", id="loss-line")
                yield Curve(id="loss-curve", empty="the loss curve appears with the first steps")
            with Vertical(id="gpu-panel", classes="panel"):
                yield SteadyStatic("", id="gpu-line")
                yield Curve(id="vram-curve", low=0.0, label=lambda v: f"{v / 1024:.0f}G" if v >= 1024 else f"{v:.0f}M", empty="")
        with Horizontal(id="bottom"):
            yield LogTail(self.app_log_path(), id="log", classes="panel")
            yield PreviewPane(self._preview_target, interval=POLL_S, id="monitor-preview", classes="panel")
        yield AppFooter()

    def app_log_path(self):
        """The job's log, read only: its folder is not made here (a full disk or a file where
        logs/ should be must not stop the screen from opening; the tail then says no log)."""
        from engine.jobs.state_home import job_log, state_folder

        return job_log(state_folder(self.app.home), self.job_id)

    def _preview_target(self):
        """The job's own previews, once the first snapshot has it (called in the pane's thread)."""
        from copylora_tui.core.previews import job_target

        job = self.app.snapshot.job(self.job_id)
        return job_target(job) if job is not None else None

    @while_open
    def on_mount(self) -> None:
        self.title = f"Monitor #{self.job_id}"
        self.query_one("#loss-panel").border_title = "loss"
        self.query_one("#loss-panel").border_subtitle = "curve: smoothed loss"
        self.query_one("#gpu-panel").border_title = "GPU"
        self.query_one("#log").border_title = f"log · job-{self.job_id}.log"
        watch_snapshot(self, self.show_snapshot)
        self.set_interval(POLL_S, self.poll_history)
        self.set_interval(1.0, self.tick)  # "running for" goes on while a job loads its model
        self.read_history()

    @while_open
    def tick(self) -> None:
        job = self.app.snapshot.job(self.job_id)
        if job is not None and job.live:
            self.query_one("#numbers", Static).update(self._numbers(job))

    def on_unmount(self) -> None:
        if self._reader is not None:
            self._reader.close()

    # ------------------------------------------------------------------ live data

    @while_open
    def show_snapshot(self, snapshot: QueueSnapshot) -> None:
        job = snapshot.job(self.job_id)
        title = self.query_one("#job-title", Static)
        if job is None:
            if snapshot.home is not None or snapshot.error:  # read (not the empty one before the first read)
                title.update(Text(f"job #{self.job_id} is not in the queue (removed by `copylora clean`, or another state folder)",
                                  style="red"))
            return
        if job.live:
            self._saw_it_run = True
        elif job.status is JobStatus.DONE and self._saw_it_run and self.follow_chain(job, snapshot):
            return
        where = f"GPU {job.gpu}" if job.gpu else ("CPU" if job.live else "")
        title.update(Text.assemble((f"#{job.id} {job.label}", "bold"), f" · {project_label(job.project)}  ", status_cell(job), f"  {where}"))
        bar = self.query_one("#progress", ProgressBar)
        total = job.total or 0
        done = total if job.status is JobStatus.DONE else (job.step or 0)
        bar.update(total=total or None, progress=done)
        self.query_one("#numbers", Static).update(self._numbers(job))
        message = None
        if job.status is JobStatus.FAILED:
            message = Text(f"failed: {job.error or 'no reason recorded'}  ({retry_hint(job, snapshot)})", style="bold red")
        elif job.status is JobStatus.CANCELLED:
            message = Text(job.error or "cancelled", style="dim")
        elif job.interrupted:
            message = Text(interrupted_text(job), style="bold yellow")
        elif job.status is JobStatus.QUEUED and not snapshot.worker_running:
            message = Text("waiting: the worker is not running (w on the queue screen starts it)", style="yellow")
        error = self.query_one("#job-error", Static)
        error.update(message or "")
        error.display = message is not None  # no blank line while there is nothing to say
        self.query_one("#loss-line", Static).update(self._loss_line(job))
        panel = self.query_one("#loss-panel")
        trains = job.kind == "train"
        self.query_one("#loss-curve", Curve).display = trains  # the other kinds' panel shows their progress
        twin = job.smooth_loss_b is not None
        curve = "curve: A's smoothed loss" if twin else "curve: A's, then B's smoothed loss" if self._side_now(job) else "curve: smoothed loss"
        set_border_titles(panel, "loss" if trains else "progress", curve if trains else "")
        self.query_one("#gpu-line", Static).update(self._gpu_text(job, snapshot))
        # Without GPU readings the panel says one note: at 80 columns its 46 left the loss 34, and
        # "lr 1.00e-03" wrapped onto a line of its own.
        self.set_class(gpu_of(job, snapshot.gpus) is None, "-no-gpu")
        if job.step != self._points_step:
            self.read_history()

    def _numbers(self, job: Job) -> Text:
        total = job.total or 0
        step = total if job.status is JobStatus.DONE else (job.step or 0)
        text = Text()
        if job.kind == "train":
            text.append(f"step {step}/{total or '?'}", style="bold")
        elif total:  # a merge counts modules, a preview pictures: not steps
            text.append(f"{step}/{total} {PROGRESS_UNITS.get(job.kind, 'done')}", style="bold")
        else:
            text.append("waiting" if job.status.waiting else "starting", style="bold")
        pending = slurm_pending(job)
        if job.live and not pending:  # (a pending job's speed is an earlier run's)
            text.append(f"   {rate_text(job.it_per_s)}   ETA {eta_text(job.eta_s)}")
        if job.started_at and job.finished_at:
            text.append(f"   ran {format_duration(job.finished_at - job.started_at)}", style="dim")
        elif job.started_at and pending:
            # submitted, no node yet: it "ran for 00:19" with nothing running
            reason = f" ({job.slurm['reason']})" if job.slurm.get("reason") else ""
            text.append(f"   waiting for a Slurm node{reason} for {format_duration(max(0.0, self.app.clock() - job.started_at))}", style="dim")
        elif job.started_at and job.live:
            text.append(f"   running for {format_duration(max(0.0, self.app.clock() - job.started_at))}", style="dim")
        if job.start_step:
            text.append(f"   resumed at step {job.start_step}", style="dim")
        return text

    def _loss_line(self, job: Job) -> Text:
        if job.kind != "train":
            return progress_text(job)
        lr = f"{job.lr:.2e}" if job.lr is not None else "—"
        if job.smooth_loss_b is not None:  # twin training: A and B in one batch
            line = Text.assemble("loss A ", (loss_text(job.loss), "bold"), " B ", (loss_text(job.loss_b), "bold"),
                                 "  smoothed A ", (loss_text(job.smooth_loss), "bold cyan"),
                                 " B ", (loss_text(job.smooth_loss_b), "bold magenta"), f"  lr {lr}")
        else:
            side = f"{side} " if (side := self._side_now(job)) else ""  # A's, then B's: say whose
            line = Text.assemble(f"loss {side}", (loss_text(job.loss), "bold"), f"  smoothed {side}", (loss_text(job.smooth_loss), "bold cyan"),
                                 f"  lr {lr}")
        if job.copy_db is not None:  # how well the LoRA copies its teacher (engine.train.copy_check)
            line.append("\ncopy ")
            if job.copy_db_b is not None:
                line.append_text(Text.assemble("A ", (f"{job.copy_db:.1f} dB", "bold"), " ", self._copy_trends[0],
                                               "  B ", (f"{job.copy_db_b:.1f} dB", "bold"), " ", self._copy_trends[1]))
            else:
                line.append_text(Text.assemble((f"{job.copy_db:.1f} dB", "bold"), " ", self._copy_trends[0]))
        return line

    def _side_now(self, job: Job) -> str | None:
        """"A" or "B": the side a twin job that trains A, then B, is at; None for other jobs
        (or before the Projects screen has read the project: how many steps A has)."""
        summary = self.app.project_summary(job.project)
        steps = sides_apart(job, summary) if summary is not None else None
        if steps is None:
            return None
        return "A" if (job.step or 0) < steps[0] else "B"

    def _gpu_text(self, job: Job, snapshot: QueueSnapshot) -> Text:
        gpu = gpu_of(job, snapshot.gpus)
        peak = f"job peak {mb_text(job.vram_mb)}" if job.vram_mb else ""
        if gpu is None:
            note = "no GPU: this machine has no NVIDIA GPU (or no NVML driver); jobs run on the CPU"
            if not snapshot.worker_running:
                note = "no GPU samples (the worker samples GPUs while it runs)"
            return Text.assemble((note, "yellow"), f"\n{peak}" if peak else "")
        used, total = gpu.get("used_mb") or 0.0, gpu.get("total_mb") or 0.0
        text = Text()
        text.append(f"{gpu.get('name') or 'GPU'} #{gpu['gpu']}\n", style="bold")
        text.append(f"VRAM {block_bar(used / total if total else 0.0, 12)} {mb_text(used)}/{mb_text(total)}\n")
        util = f"{gpu['util']:.0f}%" if gpu.get("util") is not None else "—"
        temp = f"{gpu['temp']:.0f}°C" if gpu.get("temp") is not None else "—"
        power = f"  {gpu['power_w']:.0f} W" if gpu.get("power_w") is not None else ""
        text.append(f"util {util}  {temp}{power}  {peak}", style="dim")
        return text

    def on_screen_resume(self) -> None:
        catch_up(self, self.show_snapshot)

    def poll_history(self) -> None:
        """The curve and VRAM history while the job runs; of a job that does not run (finished,
        waiting), every HISTORY_IDLE_S: a finished job's curve was read and redrawn twice a
        second for as long as its monitor stayed open."""
        job = self.app.snapshot.job(self.job_id)
        if job is not None and not job.live and time.monotonic() - self._history_at < HISTORY_IDLE_S:
            return
        self.read_history()

    def read_history(self) -> None:
        """Curve and VRAM history from the database, in a thread (one read at a time)."""
        self._history_at = time.monotonic()
        if self._reader is None:
            self._reader = QueueReader(self.app.home)
        if self._reader.begin():
            self._read_history()

    @work(thread=True, group="monitor-history", exit_on_error=False)
    def _read_history(self) -> None:
        try:
            queue = self._reader.queue()
            job = queue.get(self.job_id)
            points = queue.points(self.job_id)
            gpu = int(job.gpu) if job.gpu and job.gpu.isdigit() else 0
            history = queue.gpu_history(gpu)
        except Exception:
            return
        finally:
            self._reader.end()
        points = newest_attempt(points, job.started_at, job.start_step)
        self.post_message(self.HistoryRead(job.step, points, history))

    class HistoryRead(Message, bubble=False):
        """The curve and VRAM history, read in a thread; Textual drops it if the screen has closed."""

        def __init__(self, step: int | None, points: list[dict], history: list[dict]) -> None:
            super().__init__()
            self.step, self.points, self.history = step, points, history

    def on_monitor_screen_history_read(self, message: HistoryRead) -> None:
        self._show_history(message.step, message.points, message.history)

    def _show_history(self, step: int | None, points: list[dict], history: list[dict]) -> None:
        self._points_step = step
        trends = (copy_trend(points, "copy_db"), copy_trend(points, "copy_db_b"))
        if trends != self._copy_trends:
            self._copy_trends = trends
            job = self.app.snapshot.job(self.job_id)
            if job is not None:  # the line was drawn before the history came: draw it again with the arrows
                self.query_one("#loss-line", Static).update(self._loss_line(job))
        self.query_one("#loss-curve", Curve).values = [p["smooth_loss"] for p in points if p.get("smooth_loss") is not None]
        vram = self.query_one("#vram-curve", Curve)
        if history:
            vram.high = max((h.get("total_mb") or 0.0) for h in history) or None
        vram.values = [h["used_mb"] for h in history if h.get("used_mb") is not None]

    def follow_chain(self, job: Job, snapshot: QueueSnapshot) -> bool:
        """The watched job is done: go on to the next job of its project (train A → train B →
        merge → preview), as a user watching a run wants. A job opened after it ended stays."""
        chain = [j for j in snapshot.for_project(job.project) if j.id != job.id and j.status in (JobStatus.RUNNING, JobStatus.QUEUED)]
        # the one running now, else the next in the queue's order (the worker's order)
        following = next((j for j in chain if j.live), None) or (chain[0] if chain else None)
        if following is None:
            return False
        self.notify(f"#{job.id} {job.label} done: following #{following.id} {following.label}")
        self.app.action_show_monitor(following.id)
        return True

    # ------------------------------------------------------------------ actions

    def selected_job_id(self) -> int | None:
        return self.job_id

    def _command(self, command) -> None:
        job_id = self.job_id
        what = job_name(self.app.snapshot, job_id)
        self.app.queue_command(lambda queue: f"{what}: {command(queue, job_id)}")

    def action_cancel(self) -> None:
        self._command(lambda queue, job_id: queue.cancel(job_id))

    def action_retry(self) -> None:
        self._command(lambda queue, job_id: queue.retry(job_id))

    def action_pause_resume(self) -> None:
        self._command(lambda queue, job_id: queue.resume(job_id) if queue.get(job_id).status is JobStatus.PAUSED else queue.pause(job_id))

    def action_save_now(self) -> None:
        self._command(lambda queue, job_id: queue.request(job_id, "save-now"))

    def action_sample_now(self) -> None:
        self._command(lambda queue, job_id: queue.request(job_id, "sample-now"))

    def action_open_preview(self) -> None:
        show_preview_path(self.query_one("#monitor-preview", PreviewPane))

    def action_back(self) -> None:
        if not self.app.close_keys_panel():
            self.app.close_screen(self)
