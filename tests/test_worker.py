"""The worker daemon with real processes on the tiny model: crash recovery, failures that do
not stop the queue, cancel → retry, one worker per state folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from engine.jobs.enqueue import enqueue_project
from engine.jobs.procs import alive
from engine.jobs.queue import Queue
from engine.jobs.worker import WorkerRunning, start_detached, stop_worker, worker_pid
from tests.helpers import copy_example, wait_for

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "state"
    monkeypatch.setenv("COPYLORA_HOME", str(path))
    yield path
    pid = worker_pid(path)
    if pid and pid > 0:
        try:
            os.killpg(pid, signal.SIGKILL)  # the worker and any job it left
        except ProcessLookupError:
            pass


def project(tmp_path, name: str, save_every: int = 10):
    root = copy_example(tmp_path, name)
    toml = root / "copylora.toml"
    text = toml.read_text().replace("save_every_n_steps = 100", f"save_every_n_steps = {save_every}")
    # A small, quick preview: these tests are about the queue, not the pictures.
    text = text.replace("steps = 8", "steps = 1").replace("size = [128, 192]", "size = [64, 64]")
    toml.write_text(text)
    return root


def lora_tensors(path):
    from engine.lora.files import load_lora_file

    return {n: (w.down, w.up) for n, w in load_lora_file(path).modules.items()}


def test_kill_9_worker_then_restart_resumes_and_matches_uninterrupted_run(tmp_path, home):
    import torch

    root = project(tmp_path, "crash")
    queue = Queue(home)
    steps = enqueue_project(queue, root, max_steps=60)
    train_a = steps[0].job
    start_detached(home)
    wait_for(lambda: (queue.get(train_a.id).step or 0) >= 25, what="training to pass step 25")

    # 1. kill -9 the worker alone: its child is told (PR_SET_PDEATHSIG), checkpoints and exits
    # (waited for, not slept on: the next worker would stop a child that outlived it itself).
    child = queue.get(train_a.id)
    assert child.pid, child
    os.kill(worker_pid(home), signal.SIGKILL)
    wait_for(lambda: not worker_pid(home), what="the worker to die")
    wait_for(lambda: not alive(child.pid, child.pid_start), timeout=60, what="the orphaned job to checkpoint and exit")
    start_detached(home)
    wait_for(lambda: (queue.get(train_a.id).start_step or 0) > 0, what="the job to resume")
    first_resume = queue.get(train_a.id).start_step
    assert first_resume >= 25  # continued, not restarted from step 0

    # 2. kill -9 worker and job together (a reboot): the periodic checkpoint is the way back.
    wait_for(lambda: (queue.get(train_a.id).step or 0) >= first_resume + 12, what="more steps")
    os.killpg(worker_pid(home), signal.SIGKILL)
    killed_at = queue.get(train_a.id).step
    wait_for(lambda: not worker_pid(home), what="the worker to die")
    start_detached(home)
    wait_for(lambda: queue.get(train_a.id).status == "done", what="train A+B to finish")
    job = queue.get(train_a.id)
    # The newest periodic checkpoint (every 10 steps) before the kill, past the first resume.
    assert first_resume < job.start_step <= killed_at and job.start_step % 10 == 0
    assert job.attempts == 3

    # The interrupted LoRAs equal an uninterrupted run of the same plan (both sides: the
    # default queue trains A and B together, engine.train.twin).
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.train.twin import train_twin

    assert job.side == "ab" and job.label == "train A+B"
    reference_root = project(tmp_path, "reference")
    plan = make_plan(load_project(reference_root), max_steps=60)
    reference = train_twin(plan, log=lambda _line: None)
    for side in ("a", "b"):
        expected, got = lora_tensors(reference[side].lora_path), lora_tensors(job.artifacts[f"lora_{side}"])
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[n][0], got[n][0]) and torch.equal(expected[n][1], got[n][1]) for n in expected)
    log = queue.log_path(train_a.id).read_text()
    assert "resuming A from step" in log and "resuming B from step" in log
    stop_worker(home)


def test_failing_project_does_not_stop_the_queue(tmp_path, home):
    queue = Queue(home)
    roots = [project(tmp_path, name) for name in ("one", "two", "three")]
    jobs = {root.name: enqueue_project(queue, root, max_steps=6) for root in roots}
    # Broken after it was checked and queued, as a disk or a careless copy can do.
    image = roots[1] / "b" / "monochrome.png"
    image.write_bytes(image.read_bytes()[:120])
    start_detached(home, per_gpu=2)  # two CPU slots: the two cores run two jobs at once
    all_ids = [s.job.id for steps in jobs.values() for s in steps]
    wait_for(lambda: all(queue.get(i).status in ("done", "failed") for i in all_ids), timeout=400, what="the queue to drain")
    status = {name: [queue.get(s.job.id).status for s in steps] for name, steps in jobs.items()}
    errors = {name: [queue.get(s.job.id).error for s in steps] for name, steps in jobs.items()}
    assert status["one"] == ["done", "done", "done"], errors  # train A+B (one twin job), merge, preview
    assert status["three"] == ["done", "done", "done"], errors
    # Each job re-validates its project when it starts, so the training of the broken project
    # fails with a readable message (naming the file), and the merge fails as its dependant.
    assert status["two"] == ["failed", "failed", "failed"], errors
    train_ab, merge, preview = (queue.get(s.job.id) for s in jobs["two"])
    assert "b.folder monochrome.png: corrupt image" in train_ab.error and "Traceback" not in train_ab.error
    assert merge.error.startswith(f"dependency #{train_ab.id} (train A+B) failed")
    assert preview.error.startswith(f"dependency #{merge.id} (merge) failed")
    # What finished is up to date, the preview included (it was queued again on every run while
    # its record held the CPU-scaled settings instead of the project's [sample]).
    again = enqueue_project(queue, roots[0], max_steps=6)
    assert [s.action for s in again] == ["up to date"] * 4, [(s.what, s.reason) for s in again]
    stop_worker(home)


def test_cancel_keeps_checkpoint_and_retry_resumes(tmp_path, home):
    queue = Queue(home)
    root = project(tmp_path, "cancel", save_every=1000)
    # One training and a job that waits for it (no B: it would run while A is cancelled).
    train_a = queue.enqueue("train", str(root), side="a", label="train A", params={"max_steps": 400}, total=400)
    merge = queue.enqueue("merge", str(root), label="merge", depends_on=[train_a.id])
    start_detached(home)
    wait_for(lambda: (queue.get(train_a.id).step or 0) >= 10, what="training to start")
    queue.cancel(train_a.id)
    wait_for(lambda: queue.get(train_a.id).status == "cancelled", what="the cancel")
    states = list((root / "output" / "runs" / "A").glob("state-*.pt"))
    assert len(states) == 1, "cancel must leave a resumable checkpoint"
    stopped_at = int(states[0].stem.split("-")[1])
    assert stopped_at >= 10
    assert queue.get(merge.id).status == "failed"  # it waited on the cancelled job
    queue.retry(train_a.id)
    assert queue.get(merge.id).status == "queued"  # and comes back with it
    wait_for(lambda: (queue.get(train_a.id).start_step or 0) > 0, what="the retry to resume")
    assert queue.get(train_a.id).start_step == stopped_at
    queue.cancel(train_a.id)  # (no need to train 400 steps here)
    wait_for(lambda: queue.get(train_a.id).status == "cancelled", what="the second cancel")
    stop_worker(home)


def test_an_idle_worker_leaves_the_state_folder_alone(home, monkeypatch):
    """With an empty queue the worker wrote a heartbeat every second (a 4 KB WAL frame each,
    ~350 MB a day on an idle box; on a cluster's shared state folder the Slurm loop wrote five a
    second). Now at most every HEARTBEAT_S, and `worker status` still says how long ago."""
    from engine.jobs.worker import HEARTBEAT_S

    monkeypatch.setenv("COPYLORA_WARM_START", "0")  # its loop turning from the start (a preload holds it for seconds)
    start_detached(home)
    wait_for(lambda: (home / "worker-code.json").is_file() and Queue(home).worker_row(), timeout=30, what="the worker to start")
    time.sleep(1.0)  # its first turn: a heartbeat, a GPU sample where there are GPUs

    def written():
        return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in home.iterdir() if p.is_file()}

    before = written()
    time.sleep(3.0)
    assert HEARTBEAT_S >= 5 and written() == before
    said = subprocess.run([sys.executable, "-m", "copylora_tui", "worker", "status"], capture_output=True, text=True, timeout=60)
    assert "heartbeat" in said.stdout and " s ago" in said.stdout, said.stdout
    stop_worker(home)


def test_one_worker_per_state_folder(home):
    pid = start_detached(home)
    with pytest.raises(WorkerRunning, match=f"already running.*pid {pid}"):
        start_detached(home)
    second = subprocess.run([sys.executable, "-m", "engine.jobs.worker", "--home", str(home)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 2 and "already running" in second.stderr
    said = subprocess.run([sys.executable, "-m", "copylora_tui", "worker", "start"], capture_output=True, text=True, timeout=60)
    assert said.returncode == 0 and f"a worker is already running on {home} (pid {pid})" in said.stdout  # as asked: one runs
    # the worker noted its own code as it started (for `worker status` to tell an update under it)
    from engine.jobs.worker import worker_code_change

    wait_for(lambda: (home / "worker-code.json").is_file(), timeout=30, what="the worker's note of its code")
    assert f'"pid": {pid}' in (home / "worker-code.json").read_text() and worker_code_change(home, pid) is None
    assert stop_worker(home) == pid
    assert worker_pid(home) is None
    # reaped by the process that started it (the app lives on after the worker it started stops)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10, what="the stopped worker to be reaped, not left a zombie")


def test_an_optimizer_that_cannot_be_made_fails_the_job_with_one_line(tmp_path, home):
    """Lion8bit has no torch fallback: on a machine without CUDA the job fails with the
    optimizer's own message, as a user's error (no traceback in the job's log), not as a bug."""
    from engine.jobs.runner import EXIT_FAILED

    root = project(tmp_path, "lion")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('optimizer_type = "AdamW8bit"', 'optimizer_type = "Lion8bit"'))
    assert 'optimizer_type = "Lion8bit"' in toml.read_text()
    queue = Queue(home)
    job = enqueue_project(queue, root)[0].job
    done = subprocess.run([sys.executable, "-m", "engine.jobs.runner", "--home", str(home), "--job", str(job.id)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == EXIT_FAILED, done.stdout + done.stderr
    failed = queue.get(job.id)
    assert failed.status == "failed" and failed.error.startswith("optimizer Lion8bit needs bitsandbytes on a CUDA GPU")
    assert "Traceback" not in done.stdout + done.stderr
    queue.close()


def test_the_folder_the_worker_started_in_may_be_removed(tmp_path, home, monkeypatch):
    """`cd projects/mono && copylora run .`, then the project deleted: the worker's folder was gone
    and os.getcwd() stopped the worker at its next job (every running job then "interrupted").
    Now jobs start in the state folder from then on, and `worker start` from a removed folder works."""
    queue = Queue(home)
    root = project(tmp_path, "mono")
    started_in = tmp_path / "started-in"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    start_detached(home)
    monkeypatch.chdir(tmp_path)
    started_in.rmdir()
    steps = enqueue_project(queue, root, max_steps=2)

    def finished(steps) -> bool:
        assert worker_pid(home), "the worker stopped: " + " | ".join((home / "worker.log").read_text().splitlines()[-2:])
        return all(queue.get(s.job.id).status.finished for s in steps)

    wait_for(lambda: finished(steps), timeout=300, what="the jobs to finish")
    assert [queue.get(s.job.id).status for s in steps] == ["done"] * len(steps), [queue.get(s.job.id).error for s in steps]
    assert worker_pid(home)  # still running
    assert f"the folder this process was started in was removed; jobs start in {home} from now on" in (home / "worker.log").read_text()
    stop_worker(home)
    wait_for(lambda: not worker_pid(home), timeout=30, what="the worker to stop")
    gone = tmp_path / "gone"  # `copylora worker start` typed in a folder removed since: it said "[Errno 2] No such file or directory"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    start_detached(home)
    again = enqueue_project(queue, root, max_steps=2, force=True)
    wait_for(lambda: finished(again), timeout=300, what="the jobs to finish")
    assert [queue.get(s.job.id).status for s in again] == ["done"] * len(again), [queue.get(s.job.id).error for s in again]
    stop_worker(home)


def test_a_worker_whose_state_folder_is_removed_stops(tmp_path, home):
    """`rm -rf ~/.local/state/copylora` to start afresh: the worker went on with the removed queue
    (unseen by `worker status`, its preloaded process held for good) and the next `copylora run`
    started a second one. Now it stops within seconds, its running job with it."""
    import shutil

    queue = Queue(home)
    root = project(tmp_path, "mono")
    enqueue_project(queue, root, max_steps=2000)  # long enough to be running when the folder goes
    pid = start_detached(home)
    wait_for(lambda: any(job.status.value == "running" and job.step > 0 for job in queue.jobs()), timeout=120, what="the training to run")
    job_pid = next(job.pid for job in queue.jobs() if job.status.value == "running")
    shutil.rmtree(home)

    def gone(pid: int) -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == pid  # our child: reaped here
        except ChildProcessError:
            return not os.path.exists(f"/proc/{pid}")

    wait_for(lambda: gone(pid), timeout=60, what="the worker to stop")
    wait_for(lambda: not os.path.exists(f"/proc/{job_pid}") or open(f"/proc/{job_pid}/stat").read().split()[2] == "Z",
             timeout=60, what="its job to stop")
    assert worker_pid(home) is None


def test_the_heartbeat_is_written_at_most_every_heartbeat_s(tmp_path, monkeypatch):
    """The Slurm loop beat every 0.2 s (five writes a second into the state folder the compute
    nodes share, often NFS); the local loop samples GPUs each second while jobs run."""
    import engine.jobs.worker as worker_module
    from engine.jobs.worker import Worker

    home = tmp_path / "state"
    queue = Queue(home)
    queue.worker_started(os.getpid(), ["cpu"], 1)
    worker = Worker(home)
    now = [1000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: now[0])
    written = []
    monkeypatch.setattr(queue, "heartbeat", lambda: written.append(now[0]))
    for _ in range(40):  # ten seconds of the Slurm loop's turns (0.25 s: exact in binary)
        worker.beat(queue)
        now[0] += 0.25
    worker.beat(queue)
    assert written == [1000.0, 1000.0 + worker_module.HEARTBEAT_S]
