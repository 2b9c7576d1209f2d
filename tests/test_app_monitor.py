"""The Monitor screen: live figures from the queue, the whole stored loss curve on
re-attach, GPU memory (or a clear 'no GPU'), the followed log, and a failed job's error."""

from __future__ import annotations

import pytest
from textual.widgets import Log, ProgressBar

from copylora_tui.app import CopyloraApp
from copylora_tui.core.formatting import rate_text
from copylora_tui.core.log_follow import wrap_line
from copylora_tui.screens.monitor import MonitorScreen
from copylora_tui.widgets.curve import Curve
from copylora_tui.widgets.log_tail import LogTail
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
        await wait_until(pilot, lambda: "no GPU: this machine has" in screen_text(app))
        assert app.screen.query_one("#gpu-panel").outer_size.width == 30  # a note: the loss gets the room
        for used in (1000.0, 4000.0, 6144.0):
            queue.record_gpus([{"index": 0, "name": "NVIDIA L4", "used_mb": used, "total_mb": 24576.0, "util": 97, "temp": 71, "power_w": 70.5}])
        await wait_until(pilot, lambda: "NVIDIA L4" in screen_text(app))
        await wait_until(pilot, lambda: app.screen.query_one("#gpu-panel").outer_size.width == 46)
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


async def test_a_twin_job_trained_side_after_side_names_the_side_its_loss_is(tmp_path, monkeypatch):
    """A twin job that trains A, then B showed "loss 0.61" with no side: at step 250 of 400 it
    is B's (A's 200 steps are done)."""
    import os

    from engine.jobs.procs import process_start

    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()  # 200 steps a side
    queue = Queue(env.home)
    job = queue.enqueue("train", str(project), side="ab", label="train A+B", total=400)
    queue.claim(None)
    queue.set_pid(job.id, os.getpid(), process_start(os.getpid()))
    queue.report_progress(job.id, Progress(150, 400, 0.61, 0.72, 1e-3, 7.0, 11.0, 17.0, None), point=True)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.project_summary(str(project)) is not None)  # the Projects screen has read it
        await open_monitor(pilot, app, job.id)
        await wait_until(pilot, lambda: "loss A 0.6100  smoothed A 0.7200" in screen_text(app))
        assert app.screen.query_one("#loss-panel").border_subtitle == "curve: A's, then B's smoothed loss"
        queue.report_progress(job.id, Progress(250, 400, 0.51, 0.62, 1e-3, 7.0, 11.0, 17.0, None), point=True)
        await wait_until(pilot, lambda: "loss B 0.5100  smoothed B 0.6200" in screen_text(app))
    queue.close()


def test_speed_has_one_unit():
    assert rate_text(12.46) == "12.5 it/s" and rate_text(1 / 4.6) == "4.6 s/it" and rate_text(None) == "—"



async def test_monitor_slow_job_says_s_per_it_once_and_the_clock_runs(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=3, total=40, it_per_s=1 / 4.6)
    app = CopyloraApp(project.parent, poll_s=0.1)
    started = queue.get(job.id).started_at
    app.clock = lambda: started + 65.0
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_show_monitor(job.id)
        await wait_until(pilot, lambda: "4.6 s/it" in screen_text(app))
        text = screen_text(app)
        assert "it/s" not in text and "running for 01:05" in text
        app.clock = lambda: started + 125.0  # no progress since (the model loads): the time still runs
        await wait_until(pilot, lambda: "running for 02:05" in screen_text(app), timeout=4)
        assert "curve: smoothed loss" in screen_text(app)



def test_wrap_line_keeps_every_character():
    line = "13:48:03 job #1: train A of /tmp/cap/projects/example-monochrome (attempt 1, pid 18648, CUDA_VISIBLE_DEVICES=unset)"
    rows = wrap_line(line, 40)
    assert all(len(r) <= 40 for r in rows) and len(rows) > 2
    assert "".join(r.strip() for r in rows).replace(" ", "") == line.replace(" ", "")
    assert wrap_line("short", 40) == ["short"] and wrap_line("", 10) == [""]


@pytest.mark.parametrize("width", [1, 3, 12, 40, 77])
def test_wrap_line_counts_cells_not_characters(width):
    """A Japanese project's log line: its characters are two cells wide. Rows counted in
    characters were up to twice the panel's width, and the panel cut their ends off (the Monitor
    showed 'wrote …/白黒 コピー-gri' and lost 'd.png in')."""
    from rich.cells import cell_len

    line = "22:06:10 wrote /tmp/jp/projects/白黒 コピー/output/samples/白黒 コピー-grid.png in 1.2 s; job #3 done: device: cpu"
    rows = wrap_line(line, width)
    assert all(cell_len(row) <= max(width, 2) for row in rows), rows
    assert "".join(row.strip() for row in rows).replace(" ", "") == line.replace(" ", "")
    assert wrap_line("白黒 コピー", 11) == ["白黒 コピー"]



async def test_long_log_lines_are_wrapped_not_cut(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=3, total=40)
    tail = "the-end-of-a-long-line.safetensors"
    queue.log_path(job.id).write_text(f"12:00:00 wrote {'/very/long/path' * 6}/{tail}\n")
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_show_monitor(job.id)
        await wait_until(pilot, lambda: "of-a-long-line.safetensors" in screen_text(app))
        log = app.screen.query_one(LogTail)
        assert tail in "".join(row.strip() for row in log.lines)  # every character is on screen
        assert len(log.lines) > 1 and all(len(row) < log.scrollable_content_region.width for row in log.lines)



async def test_monitor_follows_the_chain_of_a_job_it_watched(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    a = running_job(queue, project, step=190, total=200)
    b = queue.enqueue("train", str(project), side="b", label="train B", total=200)
    merge = queue.enqueue("merge", str(project), label="merge", depends_on=[a.id, b.id])
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_show_monitor(a.id)
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and "190/200" in screen_text(app))
        queue.report_progress(a.id, Progress(200, 200, 0.1, 0.1, 1e-4, 10.0, 0.0, 20.0, None), point=True)
        queue.finish(a.id, "done", artifacts={"lora": "x_A.safetensors", "steps": 200})
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.job_id == b.id)
        # the toast that says so (toasts are not in a headless screenshot: read what was notified)
        await wait_until(pilot, lambda: any("following #2 train B" in n.message for n in app._notifications))
        # a job opened after it ended stays where it is
        app.action_show_monitor(a.id)
        await wait_until(pilot, lambda: app.screen.job_id == a.id)
        await pilot.pause(0.5)
        assert app.screen.job_id == a.id and merge.id != a.id


def two_attempts(queue, project: str) -> int:
    """A 4000-step training (a point every 4th step, as the runner writes them) that diverged
    at step 2000 and failed, retried from its checkpoint at step 1600, done: the first
    attempt's points 1603…1999 (loss 2.0) lie between the second's 1601…4000 (loss 0.1)."""
    from engine.train.progress import Progress

    job = queue.enqueue("train", project, side="a", label="train A", total=4000)
    queue.claim(None)
    for step in range(3, 2000, 4):
        loss = 0.5 if step <= 1600 else 2.0
        queue.report_progress(job.id, Progress(step, 4000, loss, loss, 1e-3, 10.0, 60.0, 1.0), point=True)
    queue.finish(job.id, "failed", error="loss became nan at step 2001")
    with queue.transaction() as db:  # that attempt ran a while ago
        db.execute("UPDATE points SET t = t - 1000 WHERE job_id = ?", (job.id,))
    queue.retry(job.id)
    assert queue.claim(None).id == job.id
    queue.set_start_step(job.id, 1600, 4000)
    for step in [*range(1601, 4000, 4), 4000]:
        queue.report_progress(job.id, Progress(step, 4000, 0.1, 0.1, 1e-3, 10.0, 60.0, 1.0), point=True)
    queue.finish(job.id, "done")
    return job.id



async def test_a_resumed_job_shows_its_newest_attempts_loss(tmp_path, monkeypatch):
    from copylora_tui.screens.monitor import MonitorScreen
    from engine.jobs.queue import Queue

    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    queue = Queue()
    job_id = two_attempts(queue, str(folder.resolve()))
    queue.close()
    app = CopyloraApp(folder.parent, poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.snapshot.job(job_id) is not None)
        await pilot.press("3")  # the newest job's monitor
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.query_one("#loss-curve").values)
        values = app.screen.query_one("#loss-curve").values
        assert 2.0 not in values  # the failed attempt's steps past the checkpoint are gone
        assert values[-1] == 0.1 and values.count(0.5) == len(range(3, 1601, 4))
        assert "smoothed 0.1000" in screen_text(app) and "resumed at step 1600" in screen_text(app)



def test_newest_attempt_keeps_the_last_curve_until_the_new_attempt_writes():
    from copylora_tui.core.history import newest_attempt

    old = [{"step": s, "t": 100.0 + s} for s in (10, 20, 30)]
    assert newest_attempt(old, 500.0, 20) == old  # resumed, still loading its model: nothing of its own yet
    new = old + [{"step": 25, "t": 600.0}]
    assert [p["step"] for p in newest_attempt(new, 500.0, 20)] == [10, 20, 25]
    assert newest_attempt(new, None, None) == new


async def test_copy_figures_and_their_trend_under_the_loss(tmp_path, monkeypatch):
    """A twin job's copy checks: each side's newest figure in dB, and which way it went since the
    check before (read from the stored history); the queue screen's line on the job says the same."""
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=10, total=400)
    for step, a, b in ((100, 20.0, 18.0), (200, 21.5, 17.5), (300, 21.55, 17.0)):
        queue.report_progress(job.id, Progress(step, 400, 0.1, 0.1, 1e-4, 5.0, 20.0, 30.0, None, 0.2, 0.2,
                                               copy_db=a, copy_db_b=b, copy_step=step), point=True)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: "copy A 21.6 B 17.0 dB" in screen_text(app))  # the queue's line on the selected job
        await open_monitor(pilot, app, job.id)
        await wait_until(pilot, lambda: "copy A 21.6 dB →  B 17.0 dB ↓" in screen_text(app))


async def test_the_monitor_opens_when_the_logs_folder_cannot_be_made(tmp_path, monkeypatch):
    import shutil

    from tests.test_app_support import make_projects, running_job, use_home, wait_until

    env = use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    queue = Queue(env.home)
    running_job(queue, projects / "example-monochrome", step=50, total=200, points=30)
    queue.close()
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.snapshot.jobs)
        shutil.rmtree(env.home / "logs")
        (env.home / "logs").write_text("a file where the folder was")  # as a full or broken disk leaves it
        await pilot.press("3")  # compose made the folder, and its CopyloraError ended the app
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen))
        await pilot.pause(0.5)
        assert app.is_running and app._exception is None


async def test_a_job_cleaned_away_under_its_monitor_says_so(tmp_path, monkeypatch):
    """`copylora clean` in another terminal removed the finished job the monitor showed, and the
    queue was empty after: the monitor went on showing the job as it was."""
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=5, total=10)
    queue.finish(job.id, "done")
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_monitor(pilot, app, job.id)
        assert queue.clean()[0] == [job.id]
        await wait_until(pilot, lambda: f"job #{job.id} is not in the queue (removed by `copylora clean`" in screen_text(app))


async def test_a_job_waiting_for_a_slurm_node_says_so_not_running(tmp_path, monkeypatch):
    """A job submitted to Slurm and pending showed "6.3 it/s ETA 07:14 running for 00:19": an
    earlier run's speed, and a run that was not."""
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = queue.enqueue("train", str(project), side="a", label="train A", total=400)
    queue.claim("slurm")
    queue.report_progress(job.id, Progress(150, 400, 0.61, 0.72, 1e-3, 6.3, 434.0, 17.0, None), point=True)
    queue.set_slurm(job.id, {"id": "77", "state": "PENDING", "reason": "Resources", "node": ""})
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, job.id)
        await wait_until(pilot, lambda: "waiting for a Slurm node (Resources) for" in screen_text(app))
        assert "it/s" not in screen_text(app) and "running for" not in screen_text(app)
        await pilot.press("2")  # the Queue table likewise
        await wait_until(pilot, lambda: "pending" in screen_text(app))
        assert "6.3 it/s" not in screen_text(app) and "07:14" not in screen_text(app)
    queue.close()


async def test_the_log_keeps_following_when_its_pane_gets_shorter_and_stops_where_the_user_scrolled_up(tmp_path):
    """A cancel and a retry from the CLI under the Monitor: the pane got shorter, the end moved
    below the view, and Log (which follows only while the view is at its end) left the retried
    job's lines out of sight. The pane follows until the user scrolls up, and again once they
    scroll back to the end."""
    from textual.app import App

    from copylora_tui.widgets import log_tail

    path = tmp_path / "job.log"
    path.write_text("".join(f"line {n}\n" for n in range(60)))

    class Holder(App):
        CSS = "LogTail { height: 20; }"

        def compose(self):
            yield log_tail.LogTail(path)

    app = Holder()
    async with app.run_test(size=(80, 30)) as pilot:
        log = app.query_one(log_tail.LogTail)
        await wait_until(pilot, lambda: log.line_count >= 60 and log.is_vertical_scroll_end)
        log.styles.height = 8  # the Monitor's layout changed under it
        await pilot.pause(0.2)
        with open(path, "a") as handle:
            handle.write("attempt 2: resuming A from step 122\n")
        await wait_until(pilot, lambda: "attempt 2" in log.lines[-1])
        await wait_until(pilot, lambda: log.is_vertical_scroll_end)  # its line is on screen
        log.scroll_to(y=0, animate=False, immediate=True)  # the user reads the start
        await pilot.pause(0.1)
        with open(path, "a") as handle:
            handle.write("a later line\n")
        await wait_until(pilot, lambda: "a later line" in log.lines[-1])
        await pilot.pause(0.2)
        assert log.scroll_offset.y == 0 and not log.following  # left where the user is
        log.scroll_end(animate=False, immediate=True)
        await pilot.pause(0.1)
        with open(path, "a") as handle:
            handle.write("the last line\n")
        await wait_until(pilot, lambda: "the last line" in log.lines[-1] and log.is_vertical_scroll_end)
