"""The Monitor screen: live figures from the queue, the whole stored loss curve on
re-attach, GPU memory (or a clear 'no GPU'), the followed log, and a failed job's error."""

from __future__ import annotations

from textual.widgets import Log, ProgressBar

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.monitor import MonitorScreen
from copylora_tui.widgets.curve import Curve
from engine.jobs.queue import Queue
from engine.train.progress import Progress
from tests.test_app_support import make_projects, running_job, screen_text, use_home, wait_until


async def open_monitor(pilot, app, job_id):
    app.action_show_monitor(job_id)
    await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and f"#{job_id}" in screen_text(app))


async def test_live_step_eta_loss_and_whole_curve(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=3000, total=4000, points=900, eta_s=3725.0)  # an hour-long history
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, job.id)
        await wait_until(pilot, lambda: len(app.screen.query_one("#loss-curve", Curve).values) >= 900)
        text = screen_text(app)
        assert "step 3000/4000" in text and "ETA 1:02:05" in text and "12.5 it/s" in text
        assert "smoothed 0.1100" in text and "lr 1.00e-04" in text
        bar = app.screen.query_one("#progress", ProgressBar)
        assert bar.total == 4000 and bar.progress == 3000
        queue.report_progress(job.id, Progress(3500, 4000, 0.09, 0.08, 5e-5, 13.0, 38.0, 300.0, 2300.0), point=True)
        await wait_until(pilot, lambda: "step 3500/4000" in screen_text(app))
        text = screen_text(app)
        assert "ETA 00:38" in text and "smoothed 0.0800" in text and "lr 5.00e-05" in text
        await wait_until(pilot, lambda: app.screen.query_one("#loss-curve", Curve).values[-1] == 0.08)


async def test_log_is_followed_in_batches_with_carriage_returns_collapsed(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=1, total=10)
    log_path = queue.log_path(job.id)
    log_path.write_text("loading model\ncaching latents 10%\rcaching latents 100%\n")
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, job.id)
        log = app.screen.query_one("#log", Log)
        await wait_until(pilot, lambda: log.line_count >= 2)
        assert list(log.lines)[:2] == ["loading model", "caching latents 100%"]
        with open(log_path, "a") as handle:
            handle.write("".join(f"step {i}\n" for i in range(300)) + "half a li")
        await wait_until(pilot, lambda: log.lines[-1] == "step 299")
        with open(log_path, "a") as handle:
            handle.write("ne\n")
        await wait_until(pilot, lambda: log.lines[-1] == "half a line")


async def test_gpu_panel_with_and_without_a_gpu(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=5, total=10)
    monkeypatch.setattr("copylora_tui.core.snapshot.worker_pid", lambda home: 4242)  # a worker runs
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, job.id)
        await wait_until(pilot, lambda: "no GPU: this machine has no NVIDIA GPU" in screen_text(app))
        for used in (1000.0, 4000.0, 6144.0):
            queue.record_gpus([{"index": 0, "name": "NVIDIA L4", "used_mb": used, "total_mb": 24576.0, "util": 97, "temp": 71, "power_w": 70.5}])
        await wait_until(pilot, lambda: "NVIDIA L4" in screen_text(app))
        text = screen_text(app)
        assert "6.0 GB/24.0 GB" in text and "util 97%" in text and "71°C" in text
        await wait_until(pilot, lambda: len(app.screen.query_one("#vram-curve", Curve).values) == 3)


async def test_failed_job_error_on_the_monitor(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=5, total=10)
    queue.finish(job.id, "failed", error="the job process died (killed by SIGKILL) (out of memory? see the job log)")
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, job.id)
        await wait_until(pilot, lambda: "failed: the job process died (killed by SIGKILL)" in screen_text(app))
        await pilot.press("r")
        await wait_until(pilot, lambda: queue.get(job.id).status == "queued")
        await pilot.press("escape")
        assert not isinstance(app.screen, MonitorScreen)


async def test_a_twin_job_shows_both_sides_losses(tmp_path, monkeypatch):
    """A twin job (A and B as one batch) reports B's loss beside A's; the monitor and the
    queue's loss cells show both."""
    from copylora_tui.core.formatting import job_loss_text

    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = queue.enqueue("train", str(project), side="ab", label="train A+B", total=200)
    queue.claim(None)
    import os

    from engine.jobs.procs import process_start

    queue.set_pid(job.id, os.getpid(), process_start(os.getpid()))
    queue.report_progress(job.id, Progress(120, 200, 0.61, 0.72, 1e-3, 7.0, 11.0, 17.0, None, loss_b=0.64, smooth_loss_b=0.74),
                          point=True)
    assert queue.points(job.id)[-1]["smooth_loss_b"] == 0.74
    assert job_loss_text(queue.get(job.id)) == "A 0.7200 B 0.7400"
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, job.id)
        await wait_until(pilot, lambda: "smoothed A 0.7200 B 0.7400" in screen_text(app))
        assert "loss A 0.6100 B 0.6400" in screen_text(app)
        assert app.screen.query_one("#loss-panel").border_subtitle == "curve: A's smoothed loss"
    queue.close()
