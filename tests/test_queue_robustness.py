"""The queue under the conditions users met (issue 12): two ``run``s of one project at once,
a worker that died under a running job, a side that stopped at a checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from copylora_tui.app import CopyloraApp
from copylora_tui.cli.main import main
from copylora_tui.core.projects import RESUMABLE, summarise
from copylora_tui.screens.queue import QueueScreen
from engine.jobs.queue import JobStatus, Queue
from engine.train.controls import TrainControls
from engine.train.progress import Progress
from tests.helpers import copy_example
from tests.test_app_support import make_projects, screen_text, use_home, wait_until


def test_two_runs_of_one_project_at_once_queue_it_once(tmp_path, monkeypatch):
    """Deciding what is up to date takes time (hashing); both runs decide, then insert."""
    import engine.jobs.enqueue as enqueue
    from engine.project.outputs import SideLora

    root = copy_example(tmp_path)
    home = tmp_path / "state"
    slow = SideLora.status

    def status(self):
        time.sleep(0.3)  # both threads are past their decision before either inserts
        return slow(self)

    monkeypatch.setattr(SideLora, "status", status)
    results: list = []
    errors: list = []

    def run() -> None:
        queue = Queue(home)  # each "process" its own connection
        try:
            results.append(enqueue.enqueue_project(queue, root))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            queue.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    jobs = Queue(home).jobs()
    assert sorted(j.label for j in jobs) == ["merge", "preview", "train A+B"]
    actions = sorted(step.action for steps in results for step in steps)
    assert actions.count("queued") == 3 and actions.count("already queued") == 3


def _dead_pid() -> tuple[int, str | None]:
    from engine.jobs.procs import process_start

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = process_start(child.pid)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return child.pid, start


def _interrupted_job(queue: Queue, project) -> int:
    """A job the worker was running when it (and the job's process) were killed."""
    job = queue.enqueue("train", str(project), side="a", label="train A", total=200)
    queue.claim(None)
    queue.set_pid(job.id, *_dead_pid())
    queue.report_progress(job.id, Progress(57, 200, 0.2, 0.19, 1e-4, 6.0, 24.0, 9.0, None), point=True)
    return job.id


async def test_running_job_of_a_dead_worker_shows_as_interrupted(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    _interrupted_job(queue, project)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: "interrupted" in screen_text(app))  # the A column of Projects
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and "interrupted at step 57" in screen_text(app))
        text = screen_text(app)
        assert "6.0 it/s" not in text and "00:24" not in text  # no speed, no frozen ETA
        await pilot.press("enter")
        await wait_until(pilot, lambda: "interrupted at step 57" in screen_text(app) and "Monitor" in screen_text(app))
        assert "ETA" not in screen_text(app)


def test_queue_cli_says_interrupted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    root = copy_example(tmp_path)
    job_id = _interrupted_job(Queue(tmp_path / "state"), root)
    assert main(["queue"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # Rich wraps at the test console's width
    assert "interrupted" in out and "`copylora worker start` resumes it" in out
    assert main(["queue", "--json"]) == 0
    job = json.loads(capsys.readouterr().out)["jobs"][0]
    assert job["id"] == job_id and job["status"] == "running" and job["interrupted"] is True


def test_cancel_and_pause_take_an_interrupted_job_at_once(tmp_path, monkeypatch, capsys):
    """An order left for a job nobody runs was wiped when the next worker queued it again: a
    cancelled interrupted job trained on at `worker start`."""
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    root = copy_example(tmp_path)
    queue = Queue(tmp_path / "state")
    cancelled = _interrupted_job(queue, root)
    merge = queue.enqueue("merge", str(root), label="merge", depends_on=[cancelled])
    assert main(["cancel", str(cancelled)]) == 0
    assert "cancelled (it was interrupted: `copylora retry` resumes it from its newest checkpoint, if it wrote one)" in capsys.readouterr().out
    job = queue.get(cancelled)
    assert job.status is JobStatus.CANCELLED and job.control is None and job.pid is None
    assert queue.get(merge.id).status is JobStatus.FAILED  # as for a job cancelled while waiting
    assert queue.retry(cancelled) == "queued again" and queue.get(merge.id).status is JobStatus.QUEUED

    queue.claim(None)
    paused = cancelled
    queue.set_pid(paused, *_dead_pid())
    assert main(["pause", str(paused)]) == 0
    assert queue.get(paused).status is JobStatus.PAUSED
    assert queue.resume(paused).startswith("queued")

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # a process that runs it: the order waits for it
    try:
        from engine.jobs.procs import process_start

        queue.claim(None)
        queue.set_pid(paused, live.pid, process_start(live.pid))
        assert main(["cancel", str(paused)]) == 0
        job = queue.get(paused)
        assert job.status is JobStatus.RUNNING and job.control == "cancel"
    finally:
        live.kill()
        live.wait()


def test_a_side_with_a_checkpoint_is_resumable_not_missing(tmp_path):
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.train.trainer import train

    root = copy_example(tmp_path)
    plan = make_plan(load_project(root))
    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    result = train(plan, "a", log=lambda _l: None, controls=TrainControls(should_stop=stop_after_three))
    assert result.status == "stopped" and result.step == 3
    summary = summarise(root.resolve())
    assert summary.sides["a"].state == RESUMABLE
    assert summary.sides["a"].reason == "step 3/200, resumable (r continues it)"
    assert summary.sides["b"].reason == "no LoRA yet"
    # other settings: that checkpoint would not be continued, and the screen says so
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("network_dim = 8", "network_dim = 4"))
    assert "made with other settings" in summarise(root.resolve()).sides["a"].reason
    # a plan shortened past the checkpoint: it is never resumed (SideRun.resume_or_reset), so not shown as resumable
    toml.write_text(toml.read_text().replace("network_dim = 4", "network_dim = 8").replace("max_train_epochs = 40\n", "")
                    .replace("# max_train_steps =", "max_train_steps = 2"))
    assert summarise(root.resolve()).sides["a"].reason == "no LoRA yet"


def test_worker_status_exit_code_is_documented():
    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text()
    assert "`copylora worker status` exits `3` when no worker runs" in readme
    assert main(["worker", "status"]) in (0, 3)


def test_many_clients_opening_a_fresh_queue_at_once(tmp_path):
    """Switching a new database to WAL takes a lock SQLite does not wait for: two `copylora
    run` (or the app and the worker) opening a fresh state folder at once got "database is
    locked" (seen here 3 times in 180 opens before the fix)."""
    errors: list[str] = []
    for rep in range(50):
        home = tmp_path / f"state-{rep}"
        barrier = threading.Barrier(8)

        def open_it() -> None:
            barrier.wait()
            try:
                queue = Queue(home)
                queue.jobs()
                queue.close()
            except Exception as exc:  # noqa: BLE001 - counted below
                errors.append(repr(exc))

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_a_job_whose_project_was_moved_since_it_was_queued_says_so(tmp_path, capsys):
    """It said "1 problem: /x/mono: no such project folder", as if the path had been mistyped."""
    import shutil
    from types import SimpleNamespace

    from engine.jobs.enqueue import enqueue_project
    from engine.jobs.runner import EXIT_FAILED, run_job

    root = copy_example(tmp_path, "mono")
    queue = Queue(tmp_path / "state")
    steps = enqueue_project(queue, root, max_steps=2)
    shutil.move(root, tmp_path / "mono-renamed")
    first = steps[0].job
    assert queue.claim(None).id == first.id
    assert run_job(queue, first.id, {"asked": False}, SimpleNamespace(describe=lambda: "threads: 1")) == EXIT_FAILED
    assert queue.get(first.id).error == (f"the project folder {root} is gone (moved or removed since this job was queued): "
                                         "`copylora run` the project where it is now")
    assert all(queue.get(s.job.id).status.value == "failed" for s in steps)  # its dependants with it


def test_the_worker_line_counts_an_interrupted_job_among_those_that_wait_for_it(tmp_path):
    from copylora_tui.core.snapshot import read_snapshot

    root = copy_example(tmp_path)
    queue = Queue(tmp_path / "state")
    _interrupted_job(queue, root)
    queue.enqueue("merge", str(root), label="merge")
    assert read_snapshot(queue).worker_text() == "worker not running — 2 job(s) wait for it"


def test_cancel_of_an_interrupted_job_that_a_worker_takes_meanwhile(tmp_path, monkeypatch):
    """Between reading a job as interrupted and ending it, a worker starting may queue it again
    (the order then went on a queued row, wiped at its claim) or claim it (then it runs: the order
    is for its process, not an end written over a job that is starting)."""
    import engine.jobs.worker as worker_module

    root = copy_example(tmp_path)
    queue = Queue(tmp_path / "state")
    for then, status, control in (("queued", JobStatus.CANCELLED, None), ("claimed", JobStatus.RUNNING, "cancel")):
        job_id = _interrupted_job(queue, root)

        def worker_takes_it(home, job_id=job_id, then=then):
            queue.requeue_at_head(job_id, "interrupted")
            if then == "claimed":
                assert queue.claim(None).id == job_id
            return None

        monkeypatch.setattr(worker_module, "worker_pid", worker_takes_it)
        queue.cancel(job_id)
        monkeypatch.undo()
        job = queue.get(job_id)
        assert (job.status, job.control) == (status, control), then
        if job.status is JobStatus.RUNNING:
            queue.finish(job_id, JobStatus.CANCELLED)


@pytest.mark.parametrize("order, ends", [("cancel", "cancelled"), ("pause", "paused"), (None, "queued")])
def test_an_order_given_just_before_the_worker_died_is_kept(tmp_path, monkeypatch, order, ends):
    """A cancel (or pause) the last worker had not passed on, or whose stop checkpoint was being
    written, when it was killed: the next worker's recovery requeued the job, wiping the order,
    and it trained to its end. Now the order is what the job comes to; without one it is requeued."""
    import os

    from engine.jobs.worker import Worker

    home = tmp_path / "state"
    queue = Queue(home)
    job = queue.enqueue("train", "/p", side="a", label="train A", total=300)
    dependant = queue.enqueue("merge", "/p", label="merge", depends_on=[job.id])
    queue.claim(None)
    monkeypatch.setattr("engine.jobs.worker.worker_pid", lambda home: os.getpid())  # the order is given while a worker lives
    if order:
        getattr(queue, order)(job.id)
        assert queue.get(job.id).control == order
    worker = Worker(home)
    said: list[str] = []
    worker.log = said.append
    worker.recover(queue)
    assert queue.get(job.id).status is JobStatus(ends)
    if order == "cancel":
        assert "`copylora retry` resumes it" in queue.get(job.id).error and queue.get(dependant.id).status.finished  # its merge with it
    if order:
        assert f"with a {order} order" in said[-1]
    queue.close()


def test_recovery_leaves_a_job_that_recorded_its_own_end_as_it_stopped(tmp_path):
    """A job in its final save when its worker died goes on and records done; the next worker's
    recovery (its SIGTERM, a wait) then wrote cancelled (or queued) over it: a finished LoRA shown
    as cancelled, its merge failed. The job is read again after it stopped."""
    import os

    from engine.jobs.procs import process_start
    from engine.jobs.worker import Worker

    home = tmp_path / "state"
    queue = Queue(home)
    job = queue.enqueue("train", "/p", side="a", label="train A", total=3)
    queue.claim(None)
    queue._control(job.id, "cancel")  # ordered just before the last worker died
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time\n"
        "from engine.jobs.queue import Queue\n"
        "def done(*_):\n"
        f"    Queue({str(home)!r}).finish({job.id}, 'done', artifacts={{'lora': 'x.safetensors'}}); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, done)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
    queue.set_pid(job.id, child.pid, process_start(child.pid))
    worker = Worker(home)
    said: list[str] = []
    worker.log = said.append
    worker.recover(queue)
    child.wait(timeout=30)
    assert queue.get(job.id).status is JobStatus.DONE and "ended done as it stopped" in said[-1], said
    queue.close()
