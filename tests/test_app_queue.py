"""The Queue screen follows a real queue database live, and its keys steer jobs.

Rows are written by the test through the queue API, exactly as the worker and the trainer
write them (claim, report_progress, finish); the screen must show each change after a poll.
"""

from __future__ import annotations

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.monitor import MonitorScreen
from copylora_tui.screens.queue import QueueScreen
from copylora_tui.widgets.job_table import JobTable
from engine.jobs.queue import Queue
from engine.train.progress import Progress
from tests.test_app_support import make_projects, running_job, screen_text, use_home, wait_until


def cells(app, job_id: int) -> list[str]:
    table = app.screen.query_one("#jobs", JobTable)
    return [str(c) for c in table.get_row(str(job_id))]


async def open_queue(pilot, app):
    await pilot.press("2")
    await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.query_one("#jobs", JobTable).row_count > 0)


async def test_progress_eta_and_status_update_live(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=100, total=4000, eta_s=600.0)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_queue(pilot, app)
        row = cells(app, job.id)
        assert row[3] == "running" and "100/4000" in row[4] and row[5] == "10:00"
        queue.report_progress(job.id, Progress(2000, 4000, 0.2, 0.15, 1e-4, 20.0, 100.0, 100.0, None), point=True)
        await wait_until(pilot, lambda: "2000/4000" in cells(app, job.id)[4])
        assert cells(app, job.id)[5] == "01:40" and cells(app, job.id)[6] == "0.1500"
        await wait_until(pilot, lambda: "20.0 it/s" in screen_text(app))  # the speed: in the line under the table
        queue.report_progress(job.id, Progress(4000, 4000, 0.2, 0.15, 1e-4, 20.0, 0.0, 200.0, None), point=True)
        queue.finish(job.id, "done", artifacts={"lora": str(project / "output" / "x_A.safetensors")})
        await wait_until(pilot, lambda: cells(app, job.id)[3] == "done")
        assert cells(app, job.id)[5] == ""  # no ETA once done
        assert "x_A.safetensors" in screen_text(app)


async def test_failed_job_shows_its_error_and_retry_queues_it(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=10, total=200)
    queue.finish(job.id, "failed", error="loss became nan at step 11; lower learning_rate")
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_queue(pilot, app)
        assert cells(app, job.id)[3] == "failed"
        assert "loss became nan at step 11" in screen_text(app)
        await pilot.press("r")
        await wait_until(pilot, lambda: cells(app, job.id)[3] == "queued")
        assert "worker is not running" in screen_text(app)


async def test_cancel_pause_resume_move_and_worker_keys(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    running = running_job(queue, project, step=10, total=200)
    first = queue.enqueue("train", str(project), side="b", label="train B", total=200)
    second = queue.enqueue("merge", str(project), label="merge")
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_queue(pilot, app)
        assert app.screen.selected_job_id() == running.id
        await pilot.press("c")  # running: an order to checkpoint and stop
        await wait_until(pilot, lambda: cells(app, running.id)[3] == "cancel…")
        assert queue.get(running.id).control == "cancel"
        await pilot.press("down", "p")
        await wait_until(pilot, lambda: cells(app, first.id)[3] == "paused")
        await pilot.press("p")
        await wait_until(pilot, lambda: cells(app, first.id)[3] == "queued")
        await pilot.press("J")  # move train B below the merge; the cursor follows it
        await wait_until(pilot, lambda: [j.id for j in queue.jobs(("queued",))] == [second.id, first.id])
        await wait_until(pilot, lambda: app.screen.selected_job_id() == first.id)
        await pilot.press("c")
        await wait_until(pilot, lambda: cells(app, first.id)[3] == "cancelled")
        await pilot.press("w")
        await wait_until(pilot, lambda: env.worker_calls != [])
        await pilot.press("up")
        await pilot.press("enter")
        assert isinstance(app.screen, MonitorScreen) and app.screen.job_id == second.id


async def test_no_jobs_and_unreadable_queue(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    app = CopyloraApp(make_projects(tmp_path), poll_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: "no jobs" in screen_text(app))
        await pilot.press("3")  # no job to monitor: a message, no screen
        assert isinstance(app.screen, QueueScreen)
