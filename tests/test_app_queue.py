"""The Queue screen follows a real queue database live, and its keys steer jobs.

Rows are written by the test through the queue API, exactly as the worker and the trainer
write them (claim, report_progress, finish); the screen must show each change after a poll.
"""

from __future__ import annotations

from textual.widgets import DataTable

from copylora_tui.app import CopyloraApp
from copylora_tui.core.snapshot import QueueSnapshot
from copylora_tui.screens.monitor import MonitorScreen
from copylora_tui.screens.queue import QueueScreen, job_detail
from copylora_tui.widgets.job_table import JobTable
from engine.jobs.queue import JobStatus, Queue, artifacts_text
from engine.train.progress import Progress
from tests.test_app_support import build_demo, make_projects, notices, running_job, screen_text, use_home, wait_until


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


async def test_footers_fit_and_cancel_names_its_job(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    running_job(queue, project, step=10, total=200)
    notes: list[str] = []
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: "3 Monitor" in screen_text(app).splitlines()[-1])
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        monkeypatch.setattr(app, "notify", lambda message, **_k: notes.append(message))
        await pilot.press("2")  # the queue's last key (3 would do what m does: hidden there)
        await wait_until(pilot, lambda: "1 Projects" in screen_text(app).splitlines()[-1])
        await pilot.press("c")
        await wait_until(pilot, lambda: notes)
        assert notes[-1].startswith("#1 train A of example-monochrome: cancelling")


def commands_done(app) -> bool:
    return not [w for w in app.workers if w.group == "command" and not w.is_finished]



async def test_a_held_key_shows_one_notification_and_at_most_three_stay(tmp_path, monkeypatch):
    from copylora_tui.app import MAX_NOTIFICATIONS
    from copylora_tui.screens.queue import QueueScreen

    use_home(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    build_demo(tmp_path)
    app = CopyloraApp("projects", poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries)
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.selected_job_id() is not None)
        table = app.screen.query_one("#jobs")
        table.move_cursor(row=table.row_count - 1)  # #1, done: c says "nothing to cancel" each time
        await wait_until(pilot, lambda: app.screen.selected_job_id() == 1)
        await pilot.press(*["c"] * 8)  # a held key
        await wait_until(pilot, lambda: commands_done(app) and any("nothing to cancel" in n for n in notices(app)))
        await pilot.pause()
        assert sum("#1 is done: nothing to cancel" in n for n in notices(app)) == 1
        for _ in range(3):  # four different messages: the oldest goes
            await pilot.press("up", "c")
            await wait_until(pilot, lambda: commands_done(app))
        await pilot.pause()
        shown = notices(app)
        assert len(shown) == MAX_NOTIFICATIONS, shown
        assert "job #4 is failed: nothing to cancel" in shown[-1] and not any("#1 is done" in n for n in shown)


# What the runners of engine.jobs.runner return, shape for shape.
RUNNER_ARTIFACTS = {
    "train": {"lora": "/p/out/x_A.safetensors", "state": "/p/out/runs/A/state-00000005.pt", "steps": 5},
    "merge": {"lora": "/p/out/x.safetensors", "stats": "/p/out/x.stats.json"},
    "sample": {"grid": "/p/out/samples/x-grid.png"},
    "reg": {"reg_images": ["/p/reg/class-0000.png", "/p/reg/class-0001.png"]},
}



def test_artifacts_of_every_runner_read_as_one_line():
    assert artifacts_text(RUNNER_ARTIFACTS["train"]) == "lora: x_A.safetensors, state: state-00000005.pt, steps: 5"
    assert artifacts_text(RUNNER_ARTIFACTS["reg"]) == "reg_images: 2 files"
    assert artifacts_text({"odd": {"a": 1}, "none": None, "float": 0.5}) == "odd: 1 item, none: None, float: 0.5"



async def test_queue_cursor_over_finished_jobs_of_every_kind(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    ids = []
    for kind, artifacts in RUNNER_ARTIFACTS.items():
        job = queue.enqueue(kind, str(project), side="a" if kind == "train" else None)
        queue.claim(None)
        queue.finish(job.id, "done", artifacts=artifacts)
        ids.append(job.id)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")  # the newest job (class images) is selected on opening
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.query_one("#jobs", DataTable).row_count == 4)
        for _ in ids:
            await pilot.press("down")
        await wait_until(pilot, lambda: "steps: 5" in screen_text(app))
        assert app.is_running and app._exception is None
    for job in Queue(env.home).jobs():
        job_detail(job, QueueSnapshot(jobs=(job,)))  # never raises


async def test_a_slurm_job_shows_what_slurm_says(tmp_path, monkeypatch):
    """The Slurm executor's jobs: "pending" while Slurm holds them, with Slurm's reason on the
    line under the table; its node once it runs; "interrupted on Slurm" when cut short."""
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = queue.enqueue("train", str(project), side="ab", label="train A+B", total=4000)
    queue.claim("slurm")
    queue.set_slurm(job.id, {"id": "4711", "state": "PENDING", "reason": "Resources", "node": ""})
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_queue(pilot, app)
        assert cells(app, job.id)[3] == "pending"
        await wait_until(pilot, lambda: "Slurm 4711 PENDING (Resources)" in screen_text(app))
        queue.set_slurm(job.id, {"id": "4711", "state": "RUNNING", "reason": "", "node": "gpu07"})
        await wait_until(pilot, lambda: cells(app, job.id)[3] == "running" and "Slurm 4711 RUNNING on gpu07" in screen_text(app))
        queue.requeue_at_head(job.id, "interrupted on Slurm (job 4711 stopped with a checkpoint): submitted again, resumes from its checkpoint")
        await wait_until(pilot, lambda: "interrupted on Slurm (job 4711" in screen_text(app))


async def test_the_app_follows_a_state_folder_removed_and_made_anew(tmp_path, monkeypatch):
    """`rm -rf ~/.local/state/copylora` while the app is open: it kept showing the removed queue
    (its reading connection held the deleted file) while its own commands went to the new one."""
    import shutil

    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    old = running_job(Queue(env.home), project, step=10, total=200)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_queue(pilot, app)
        assert cells(app, old.id)[3] == "running"
        shutil.rmtree(env.home)
        fresh = Queue(env.home)
        first = fresh.enqueue("merge", str(project), label="merge")
        second = fresh.enqueue("sample", str(project), label="preview")
        await wait_until(pilot, lambda: app.screen.query_one("#jobs", JobTable).row_count == 2 and "preview" in screen_text(app))
        assert [cells(app, job.id)[3] for job in (first, second)] == ["queued", "queued"]


async def test_a_long_history_shows_the_newest_finished_jobs_and_says_how_many_more(tmp_path, monkeypatch):
    """A queue of months: every running and waiting job, the newest FINISHED_SHOWN finished
    ones, and a line saying how many older ones `copylora queue --all` lists."""
    import copylora_tui.screens.queue as queue_screen

    monkeypatch.setattr(queue_screen, "FINISHED_SHOWN", 3)
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    finished = []
    for n in range(5):
        job = queue.enqueue("merge", str(project), label="merge")
        queue.claim(None)
        queue.finish(job.id, "failed" if n == 0 else "done", error="boom" if n == 0 else None)
        finished.append(job.id)
    waiting = queue.enqueue("merge", str(project), label="merge")
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_queue(pilot, app)
        table = app.screen.query_one("#jobs", JobTable)
        assert table._order == [waiting.id, *finished[::-1][:3]]
        assert "2 older finished jobs not shown: copylora queue --all" in screen_text(app)
        queue.retry(finished[0])  # an old one back in the queue: shown, and one fewer left out
        await wait_until(pilot, lambda: finished[0] in table._order)
        assert "1 older finished job not shown" in screen_text(app)


def drawn(app) -> str:
    """What the screen sends to the terminal, as a full redraw would."""
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, force_terminal=True, width=app.size.width, legacy_windows=False).print(app.screen._compositor.render_update(full=True), end="")
    return out.getvalue()


async def test_a_folder_named_with_escape_sequences_does_not_reach_the_terminal(tmp_path, monkeypatch):
    """A shared project's folder named with escape sequences (window title, clipboard through
    OSC 52, clear screen): the Queue screen sent them to the terminal as they were."""
    import shutil

    env = use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    evil = projects / "evil\x1b]0;OWNED\x07name\x1b]52;c;ZXZpbA==\x1b\\\x1b[2J\x9b2J"
    shutil.move(projects / "example-monochrome", evil)
    Queue(env.home).enqueue("train", str(evil.resolve()), side="a", label="train A", total=10)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_queue(pilot, app)
        app.notify(f"queued {evil.name}")
        await pilot.pause(0.3)
        shown = drawn(app)
        assert shown.count("evil") == 2 and "OWNED" in shown  # the name is there, its sequences harmless
        assert not any(bad in shown for bad in ("\x1b]0;", "\x1b]52", "\x1b[2J", "\x9b")), repr(shown)


async def test_the_lines_under_the_tables_say_what_the_jobs_do_now(tmp_path, monkeypatch):
    """Projects: the line under the table said a training's checkpoint as read when its project
    was ("A: step 100/200, resumable (r continues it)") while the job was at step 270 of 3000, and
    "r continues it" for a paused job, where r does nothing. Queue: "r retries" on a job that
    failed because the one it waits for did, where r is refused ("retry #N")."""
    from copylora_tui.screens.projects import ProjectsScreen

    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=270, total=3000)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(140, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and f"A: job #{job.id} running, step 270/3000" in screen_text(app))
        queue.report_progress(job.id, Progress(271, 3000, 0.1, 0.1, 1e-4, 12.5, 90.0, 20.0, None), point=False)
        await wait_until(pilot, lambda: "step 271/3000" in screen_text(app))  # each step, not only when the cell's percent moves
        with queue.transaction() as db:  # as the job leaves it once paused: the worker marks it so
            db.execute("UPDATE jobs SET status = 'paused', pid = NULL WHERE id = ?", (job.id,))
        await wait_until(pilot, lambda: f"A: job #{job.id} paused at step 271/3000 (the Queue resumes it: 2, then p)" in screen_text(app))

    first = queue.enqueue("train", str(project), side="b", label="train B", total=10)
    merge = queue.enqueue("merge", str(project), label="merge", depends_on=[first.id])
    preview = queue.enqueue("sample", str(project), label="preview", depends_on=[merge.id])
    queue.claim(None)
    queue.finish(first.id, "failed", error="the picture is gone")
    snapshot = QueueSnapshot(jobs=tuple(queue.jobs()))
    assert job_detail(snapshot.job(first.id), snapshot).plain.endswith("(r retries)")
    for waiting in (merge, preview):
        assert job_detail(snapshot.job(waiting.id), snapshot).plain.endswith(f"(r on #{first.id} retries it, and this one with it)")


async def test_the_job_table_fits_80_columns_by_cutting_the_project_name(tmp_path, monkeypatch):
    """At 80 columns a twin job's loss ("A 0.1100 B 0.1250") ran off the right edge, behind a
    sideways scroll bar: the project's name is cut instead (the line under the table has it whole)."""
    import os

    from engine.jobs.procs import process_start
    from engine.jobs.queue import TWIN

    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    twin = queue.enqueue("train", str(project), side=TWIN, label="train A+B", total=4000)
    queue.claim(None)
    queue.set_pid(twin.id, os.getpid(), process_start(os.getpid()))
    queue.report_progress(twin.id, Progress(300, 4000, 0.12, 0.11, 1e-4, 5.0, 700.0, 60.0, None, loss_b=0.13, smooth_loss_b=0.125),
                          point=True)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_queue(pilot, app)
        table = app.screen.query_one("#jobs", JobTable)
        await wait_until(pilot, lambda: "A 0.1100 B 0.1250" in screen_text(app))
        assert table.virtual_size.width <= table.size.width and "examp…" in screen_text(app)
        await pilot.resize_terminal(120, 24)  # room again: the whole name
        await wait_until(pilot, lambda: "example-monochrome  train A+B" in screen_text(app))


async def test_the_job_table_cuts_an_empty_eta_and_long_tasks_before_the_loss(tmp_path, monkeypatch):
    """With the project cut to its least, an interrupted twin job beside a merge and class
    images still ran its loss off the edge at 80 columns ("A 0.1100 B"): the ETA column, empty
    without a live job, and then long task names give way first."""
    import subprocess

    from engine.jobs.queue import TWIN

    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    reg = queue.enqueue("reg", str(project), label="class images", total=40)
    twin = queue.enqueue("train", str(project), side=TWIN, label="train A+B", total=4000, depends_on=[reg.id])
    queue.claim(None)
    queue.finish(reg.id, "done")
    queue.claim(None)
    gone = subprocess.Popen(["true"])
    gone.wait()
    queue.set_pid(twin.id, gone.pid, "gone")  # its process ended, no worker: interrupted
    queue.report_progress(twin.id, Progress(300, 4000, 0.12, 0.11, 1e-4, 5.0, 700.0, 60.0, None, loss_b=0.13, smooth_loss_b=0.125),
                          point=True)
    queue.enqueue("merge", str(project), label="merge +1·B −1·A", depends_on=[twin.id], total=None)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_queue(pilot, app)
        table = app.screen.query_one("#jobs", JobTable)
        await wait_until(pilot, lambda: "interrupted" in screen_text(app))
        text = screen_text(app)
        assert "A 0.1100 B 0.1250" in text and table.virtual_size.width <= table.size.width, text
        assert "merge +1·…" in text and "ETA" not in text
        await pilot.resize_terminal(120, 24)  # room again: every column whole
        await wait_until(pilot, lambda: "merge +1·B −1·A" in screen_text(app) and " ETA " in screen_text(app))


async def test_a_twin_job_trained_side_after_side_shows_each_side_in_its_cell(tmp_path, monkeypatch):
    """Trained A, then B, a twin job showed one percent ("▶ 40%") under A and B alike, with A done."""
    import os

    from copylora_tui.screens.projects import ProjectsScreen
    from engine.jobs.procs import process_start
    from engine.jobs.queue import TWIN

    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = queue.enqueue("train", str(project), side=TWIN, label="train A+B", total=400)  # A's 200 and B's 200, one after the other
    queue.claim(None)
    queue.set_pid(job.id, os.getpid(), process_start(os.getpid()))
    queue.report_progress(job.id, Progress(100, 400, 0.12, 0.11, 1e-4, 5.0, 60.0, 20.0, None), point=False)
    app = CopyloraApp(project.parent, poll_s=0.1)

    def cells() -> list[str]:
        table = app.screen.query_one("#projects", DataTable)
        return [str(c) for c in table.get_row_at(0)] if table.row_count else []

    def flat() -> str:  # the line under the table wraps
        return " ".join(screen_text(app).split())

    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and "▶ 50%" in cells())
        assert cells()[2:4] == ["▶ 50%", "next"]
        await wait_until(pilot, lambda: f"A: job #{job.id} running, step 100/200; B: next, after A (job #{job.id})" in flat())
        queue.report_progress(job.id, Progress(300, 400, 0.12, 0.11, 1e-4, 5.0, 20.0, 60.0, None), point=False)
        await wait_until(pilot, lambda: cells()[2:4] == ["✓ trained", "▶ 50%"])
        await wait_until(pilot, lambda: f"A: trained by job #{job.id}, which trains B now; B: job #{job.id} running, step 100/200" in flat())
    # queued with --max_steps 150 (the way the README's quick runs queue): 150 a side, not the plan's 200
    asked = queue.enqueue("train", str(project), side=TWIN, label="train A+B", total=300, params={"max_steps": 150})
    queue.finish(job.id, JobStatus.DONE)
    queue.claim(None)
    queue.set_pid(asked.id, os.getpid(), process_start(os.getpid()))
    queue.report_progress(asked.id, Progress(175, 300, 0.12, 0.11, 1e-4, 5.0, 20.0, 60.0, None), point=False)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and cells()[2:4] == ["✓ trained", "▶ 16%"])
        await wait_until(pilot, lambda: f"B: job #{asked.id} running, step 25/150" in flat())
