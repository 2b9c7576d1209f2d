"""The queue's disk fills up (checkpoints, caches and pip on one rented disk): the worker stopped
with sqlite3's "database or disk is full" (every running job then "interrupted"), `copylora run`
said "internal error: OperationalError", and opening the queue advised moving it aside.

A full disk is made here with SQLite's own page limit (``PRAGMA max_page_count``): the same
SQLITE_FULL a full filesystem gives, on any machine. The last test fills a real tmpfs where
this machine lets it mount one."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import types

import pytest

import engine.jobs.queue as queue_module
from copylora_tui.cli.main import EXIT_FAILED, main
from engine.jobs.queue import JobStatus, Queue, QueueWriteError
from engine.train.progress import Progress
from tests.helpers import REPO, copy_example, mount_tmpfs, one_line, wait_for

FULL = "its disk is full; free space there"


def fill(queue: Queue) -> None:
    """No page left for this connection's database: writes that need one fail with SQLITE_FULL."""
    pages = queue.db.execute("PRAGMA page_count").fetchone()[0]
    queue.db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(QueueWriteError):
        for _ in range(2000):
            queue.enqueue("merge", "/p", label="x" * 2000)


def free(queue: Queue) -> None:
    queue.db.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_disk_is_said_skipped_for_progress_and_the_queue_works_once_freed(tmp_path):
    queue = Queue(tmp_path / "state")
    job = queue.enqueue("merge", "/p", label="merge")
    fill(queue)
    with pytest.raises(QueueWriteError) as caught:
        queue.enqueue("merge", "/p", label="y" * 2000)
    assert str(caught.value) == (f"cannot write the job queue {queue.path}: {FULL} (df -h {queue.path.parent}) and try again")
    # progress is advisory: skipped, said once (a minute apart at most), never raised
    said: list[str] = []
    queue.on_skipped_write = said.append
    for step in range(2000):
        assert queue.report_progress(job.id, Progress(step, 2000, 1.0, 1.0, 1e-4, 1.0, 1.0, 1.0), point=True) is None
    assert len(said) == 1 and said[0].startswith("progress not recorded: cannot write the job queue") and said[0].endswith("(the work goes on)")
    free(queue)
    # the refused transactions were rolled back: the connection takes new ones
    assert queue.enqueue("merge", "/p", label="after").label == "after"
    queue.finish(job.id, JobStatus.DONE)
    # ended at its last step, not at the last one the disk took (it showed "done 77/300")
    assert queue.get(job.id).status is JobStatus.DONE and queue.get(job.id).step == 1999
    assert max(point["step"] for point in queue.points(job.id)) == 1999


def test_opening_a_queue_on_a_full_disk_does_not_advise_moving_it_aside(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    real = sqlite3.connect

    def on_a_full_disk(*args, **kwargs):
        db = real(*args, **kwargs)
        db.execute("PRAGMA max_page_count = 1")  # a fresh queue needs several pages for its tables
        return db

    monkeypatch.setattr(queue_module.sqlite3, "connect", on_a_full_disk)
    assert main(["queue"]) == EXIT_FAILED
    said = one_line(capsys.readouterr().err)
    assert FULL in said and "Move it aside" not in said and "internal error" not in said


def test_the_worker_holds_an_ended_job_until_its_end_can_be_recorded(tmp_path, monkeypatch):
    """A job whose process ended while the disk was full stays the worker's: recorded on a later
    pass, not left "running" with a dead process for good."""
    from engine.jobs.worker import Running, Worker

    worker = Worker(tmp_path / "state")
    queue = Queue(tmp_path / "state")
    job = queue.enqueue("merge", "/p", label="merge")
    assert queue.claim(None).id == job.id

    class Ended:
        pid = 999_999

        def poll(self):
            return 1

    worker.running[job.id] = Running(job.id, None, Ended())
    real_finish = queue.finish

    def full_disk(*args, **kwargs):
        raise QueueWriteError(f"cannot write the job queue {queue.path}: {FULL}")

    monkeypatch.setattr(queue, "finish", full_disk)
    with pytest.raises(QueueWriteError):
        worker.reap(queue)
    assert job.id in worker.running and queue.get(job.id).status is JobStatus.RUNNING
    monkeypatch.setattr(queue, "finish", real_finish)
    worker.reap(queue)
    assert not worker.running
    assert queue.get(job.id).status is JobStatus.FAILED and "the job process died (exit code 1)" in queue.get(job.id).error


def test_the_worker_waits_for_space_and_then_starts_the_queued_job(tmp_path, monkeypatch, capsys):
    """Its loop met the full disk (claiming a job is a write) and stopped; now it says so once,
    waits, and takes the job when the write goes through."""
    import threading

    import engine.jobs.worker as worker_module
    from engine.jobs.worker import Worker

    monkeypatch.setenv("COPYLORA_WARM_START", "0")
    monkeypatch.setattr(worker_module, "DISK_WAIT_S", 0.2)
    home = tmp_path / "state"
    job = Queue(home).enqueue("merge", str(tmp_path / "no-such-project"), label="merge")
    real_claim, refused = Queue.claim, []

    def claim(self, gpu):
        if len(refused) < 3:
            refused.append(gpu)
            raise QueueWriteError(f"cannot write the job queue {self.path}: {FULL}")
        return real_claim(self, gpu)

    monkeypatch.setattr(Queue, "claim", claim)
    worker = Worker(home)
    queue = Queue(home)

    def stop_when_done():
        wait_for(lambda: queue.get(job.id).status.finished, timeout=120, what="the job to end")
        worker.stopping = True

    watcher = threading.Thread(target=stop_when_done)
    watcher.start()
    assert worker.run() == 0
    watcher.join()
    assert len(refused) == 3 and queue.get(job.id).status is JobStatus.FAILED  # it ran: its project is not there
    out = capsys.readouterr().out
    assert out.count(f"{FULL}") == 1 and "waiting for space (running jobs go on)" in out


def test_a_job_records_its_result_once_the_disk_has_room(monkeypatch, capsys):
    import engine.jobs.runner as runner

    monkeypatch.setattr(runner, "RECORD_RETRY_S", 0.0)
    calls = []

    class Filling:
        def finish(self, job_id, status, **facts):
            calls.append((job_id, status, facts))
            if len(calls) < 3:
                raise QueueWriteError("cannot write the job queue /s/queue.db: its disk is full")

    runner.record(Filling(), 7, {"asked": False}, JobStatus.DONE, artifacts={"lora": "x"})
    assert [c[0] for c in calls] == [7, 7, 7] and calls[-1][2] == {"artifacts": {"lora": "x"}}
    out = capsys.readouterr().out
    assert out.count("cannot record the result (done)") == 1 and "the result is recorded" in out
    calls.clear()


def test_a_job_asked_to_stop_while_its_result_waits_goes_back_to_the_queue(tmp_path, monkeypatch, capsys):
    """The worker stopping while a finished job waited for room to record its result: the job
    ended with a QueueWriteError traceback and the worker recorded "the job process died". Now
    it exits as stopped, and the worker, once it can write, puts it back at the head of the queue."""
    import engine.jobs.runner as runner
    from engine.jobs.worker import Worker

    queue = Queue(tmp_path)
    job = queue.enqueue("merge", "/p", label="merge")
    queue.claim(None)
    stop = {"asked": False}

    def merged(_queue, _job, _stop):
        stop["asked"] = True  # SIGTERM from the worker stopping, while the disk is full
        return {"lora": "x.safetensors"}

    class Full:
        def __getattr__(self, name):
            return getattr(queue, name)

        def finish(self, *args, **kwargs):
            raise QueueWriteError(FULL)

    monkeypatch.setitem(runner.RUNNERS, "merge", merged)
    assert runner.run_job(Full(), job.id, stop, types.SimpleNamespace(describe=lambda: "threads: 1")) == runner.EXIT_STOPPED
    assert "asked to stop while the result (done) waited to be recorded" in capsys.readouterr().out
    Worker.record_exit(types.SimpleNamespace(log=lambda _line: None), queue, job.id, runner.EXIT_STOPPED)
    assert queue.get(job.id).status is JobStatus.QUEUED  # to run again: its outputs are written


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB filesystem (tmpfs), where this machine lets the tests mount one."""
    yield from mount_tmpfs(tmp_path / "disk", "2M")


def fill_disk(filler) -> None:
    """Write ``filler`` until its disk has no byte left."""
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


@pytest.mark.slow
def test_the_worker_lives_through_a_real_full_disk(tmp_path, small_disk, monkeypatch):
    from engine.jobs.worker import start_detached, stop_worker, worker_pid

    home = small_disk / "state"
    monkeypatch.setenv("COPYLORA_HOME", str(home))
    root = copy_example(tmp_path, "mono")
    start_detached(home)
    try:
        filler = small_disk / "filler"
        fill_disk(filler)  # every byte left
        env = {**os.environ, "COPYLORA_HOME": str(home)}
        refused = subprocess.run([sys.executable, "-m", "copylora_tui", "run", str(root), "--max_steps", "2"],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == EXIT_FAILED and FULL in refused.stderr and "internal error" not in refused.stderr
        from engine.jobs.worker import HEARTBEAT_S

        time.sleep(HEARTBEAT_S + 1)  # the worker's heartbeat (and a GPU sample where there is a GPU) meet the full disk
        assert worker_pid(home), (home / "worker.log").read_text()[-2000:]
        filler.unlink()
        queue = Queue(home)
        done = subprocess.run([sys.executable, "-m", "copylora_tui", "run", str(root), "--max_steps", "2", "--wait"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert all(job.status is JobStatus.DONE for job in queue.jobs())
        assert "progress not recorded: cannot write the job queue" in (home / "worker.log").read_text()
    finally:
        stop_worker(home)
        wait_for(lambda: not worker_pid(home), timeout=30, what="the worker to stop")


@pytest.mark.parametrize("who", ["runner", "worker"])
def test_a_log_on_a_full_disk_costs_lines_not_the_process(tmp_path, who):
    """stdout on /dev/full (every write: "No space left on device"): print raised in the worker's
    log() (the worker stopped) and in a job's (its training stopped), and a print that failed left
    Python's exit with status 120."""
    code = {"runner": "from engine.jobs.runner import log\nfor i in range(3): log(f'line {i}')",
            "worker": "from engine.jobs.worker import Worker\nw = Worker(sys.argv[1])\nfor i in range(3): w.log(f'line {i}')"}[who]
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-c", f"import sys\n{code}\nprint('still here', file=sys.stderr)", str(tmp_path / "state")],
                              cwd=REPO, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "still here", done.stderr


def test_a_queue_opened_on_a_real_full_disk_says_the_disk_is_full(small_disk):
    """With no process on the queue, opening it makes its WAL index: on a full disk SQLite calls
    that an I/O error (SQLITE_IOERR_SHMSIZE), and every command said "check the disk"."""
    env = {**os.environ, "COPYLORA_HOME": str(small_disk / "state")}

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "copylora_tui", *args], env=env, capture_output=True, text=True, timeout=120)

    open_queue = Queue(small_disk / "state")  # as a worker or the app holds it
    open_queue.enqueue("merge", "/p/night-sky", label="merge")  # made while there was room
    fill_disk(small_disk / "filler")  # every byte left
    # a write says the disk is full, with the queue open elsewhere (exit 2 said: "fix the command") ...
    done = command("cancel", "1")
    said = one_line(done.stderr)
    assert done.returncode == EXIT_FAILED and FULL in said and "I/O error" not in said, said
    open_queue.close()
    (small_disk / "filler").unlink()
    Queue(small_disk / "state").close()  # the last connection, with room: the WAL merged, its files gone
    assert not (small_disk / "state" / "queue.db-shm").exists()
    fill_disk(small_disk / "filler")
    # with no process on it (its WAL index cannot be made), `copylora queue` shows the jobs as
    # last written, and says why (it showed nothing) ...
    done = command("queue")
    assert done.returncode == 0 and "night-sky" in done.stdout and "merge" in done.stdout, done
    said = one_line(done.stderr)
    assert FULL in said and said.endswith("the queue as last written:"), said
    done = command("cancel", "1")  # ... and a write says the disk is full
    said = one_line(done.stderr)
    assert done.returncode == EXIT_FAILED and FULL in said and "I/O error" not in said, said
    listed = json.loads(command("queue", "--json").stdout)["jobs"]
    assert [(j["id"], j["status"]) for j in listed] == [(1, "queued")]
    # the app's reader: the same view, said on the worker line, and opened again once there is room
    from copylora_tui.core.reader import QueueReader
    from copylora_tui.core.snapshot import read_snapshot

    reader = QueueReader(small_disk / "state")
    snapshot = read_snapshot(reader.queue(), reader.jobs)
    assert [j.id for j in snapshot.jobs] == [1] and snapshot.worker_text().startswith("queue shown as last written: cannot write")
    with pytest.raises(QueueWriteError, match=FULL):  # a write on it says why, not "a read-only file?"
        reader.queue().cancel(1)
    (small_disk / "filler").unlink()
    reader._opened_at -= 60  # READ_ONLY_RETRY_S later
    assert reader.queue().read_only is None and read_snapshot(reader.queue(), reader.jobs).worker_text().startswith("worker not running")
    reader.close()


def test_a_queue_read_on_a_full_disk_says_what_it_cannot_show(small_disk):
    """Read as last written (immutable: its WAL index cannot be made), changes still in its
    write-ahead log are not shown: said, not passed off as the whole queue."""
    home = small_disk / "state"
    first = Queue(home)
    first.enqueue("merge", "/p/one", label="merge")
    first.close()
    subprocess.run([sys.executable, "-c", "import os; from engine.jobs.queue import Queue; q = Queue(os.environ['H']); "
                    "q.db.execute('PRAGMA wal_autocheckpoint = 0'); q.enqueue('merge', '/p/two', label='merge'); os._exit(0)"],
                   env={**os.environ, "H": str(home)}, check=True)  # a process that ended without merging its log
    (home / "queue.db-shm").unlink()
    fill_disk(small_disk / "filler")
    queue = Queue(home, reading=True)
    assert queue.read_only is not None and FULL in queue.read_only
    shown = [job.project for job in queue.jobs()]
    assert shown == ["/p/one"] and queue.read_only.endswith("its newest changes (in queue.db-wal) are not shown"), (shown, queue.read_only)
    queue.close()


def test_a_checkpoint_on_a_full_disk_says_the_disk_is_full(small_disk):
    """torch.save on a full disk raises "[enforce fail at inline_container.cc:672] . unexpected
    pos 2813120 vs 2813008": the job failed with that line."""
    import torch

    from engine.files import atomic_write

    fill_disk(small_disk / "filler")
    (small_disk / "filler").write_bytes(b"\0" * ((small_disk / "filler").stat().st_size - 200_000))  # room for a bit, not for all
    state = {"weights": torch.zeros(1_000_000)}  # 4 MB
    with pytest.raises(OSError) as caught:
        atomic_write(small_disk / "state-00000010.pt", lambda tmp: torch.save(state, tmp))
    said = str(caught.value)  # with the room left, as a user reads it
    assert re.fullmatch(rf"cannot write {re.escape(str(small_disk / 'state-00000010.pt'))}: no space left on its disk "
                        rf"\(\d+\.\d MB free; df -h {re.escape(str(small_disk))}\)", said), said
    assert not list(small_disk.glob(".state-*"))  # its temporary file went


def test_queue_worker_status_and_the_app_say_progress_stopped_with_the_full_disk(tmp_path, monkeypatch, capsys):
    """The state folder's disk full while a job trains: `queue` showed "running 77/300 4.6 it/s"
    and `worker status` a heartbeat 49 s old for minutes, with no word of why. They say it now,
    with the time the progress shown is of; so does the app's worker line."""
    from copylora_tui.cli.main import main
    from copylora_tui.core.snapshot import read_snapshot

    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    queue = Queue(tmp_path / "state")
    job = queue.enqueue("train", "/p/one", side="a", total=300)
    queue.claim(None)
    queue.report_progress(job.id, Progress(77, 300, 1.0, 1.0, 1e-4, 4.6, 48.0, 16.0), point=True)
    assert queue.full_disk_note() is None
    monkeypatch.setattr(queue_module, "_nearly_full", lambda folder: True)
    since = time.strftime("%H:%M:%S", time.localtime(queue.get(job.id).updated_at))
    said = (f"the disk of the state folder {queue.home} is full (df -h {queue.home}): running jobs train on, their progress "
            f"shown is as of {since}, recorded again once there is room")
    assert main(["queue"]) == 0
    assert capsys.readouterr().err.strip() == f"copylora: {said}"
    monkeypatch.setattr("engine.jobs.worker.worker_pid", lambda home: os.getpid())  # a worker runs (this process)
    assert main(["worker", "status"]) == 0
    assert f"  {said}" in capsys.readouterr().out.splitlines()
    monkeypatch.undo()
    monkeypatch.setattr(queue_module, "_nearly_full", lambda folder: True)
    snapshot = read_snapshot(queue)
    assert snapshot.disk_full == said and snapshot.worker_text().startswith(said + " · worker not running")
    queue.finish(job.id, JobStatus.DONE)
    assert queue.full_disk_note().endswith("is full (df -h " + str(queue.home) + "): nothing can be queued or started until there is room")


def test_clean_frees_space_on_a_full_disk_it_could_not_write(small_disk, capsys, monkeypatch):
    """`clean`, the command that frees space in the state folder, answered "its disk is full;
    free space there" on a full disk: SQLite writes its log before it deletes. The logs of the
    jobs it removes go first now, making the room."""
    from copylora_tui.cli.main import main

    monkeypatch.setenv("COPYLORA_HOME", str(small_disk))
    queue = Queue(small_disk)
    for n in range(4):
        job = queue.enqueue("merge", f"/p/{n}", label="merge")
        queue.claim(None)
        queue.finish(job.id, JobStatus.DONE)
        queue.log_path(job.id).write_bytes(b"a log line\n" * 20_000)  # 220 KB each
    waiting = queue.enqueue("merge", "/p/waiting", label="merge")
    queue.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    fill_disk(small_disk / "filler")
    queue.close()
    assert main(["clean"]) == 0
    assert "removed 4 finished jobs, with their logs" in capsys.readouterr().out
    assert [j.id for j in Queue(small_disk, reading=True).jobs()] == [waiting.id]
    assert not any(Queue(small_disk, reading=True).log_path(n).exists() for n in range(1, 5))


def test_a_job_waiting_for_disk_room_is_said_by_queue_and_the_app(tmp_path, monkeypatch, capsys):
    """A training waiting for room kept "running 100/100 ETA 00:00" in `queue` and the app for up
    to half an hour; only its log said why. Both read the log's newest lines: said while it
    waits, not once the write went through."""
    from copylora_tui.cli.main import main
    from copylora_tui.core.snapshot import read_snapshot
    from copylora_tui.screens.queue import job_detail
    from engine.jobs.room_wait import room_wait
    from engine.train import room

    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    queue = Queue(tmp_path / "state")
    job = queue.enqueue("train", "/p/one", side="a", total=100)
    queue.claim(None)
    queue.set_pid(job.id, os.getpid(), None)
    log = queue.log_path(job.id)
    log.parent.mkdir(parents=True, exist_ok=True)
    full = tmp_path / "out" / "runs" / "A"
    tries = iter([OSError(28, "No space left on device"), None])

    def write():
        failure = next(tries)
        if failure is not None:
            raise failure
        return "written"

    def logged(line: str) -> None:
        with open(log, "a") as handle:
            handle.write(f"12:00:00 {line}\n")
        if line.startswith("warning: no space left"):  # as the job waits: what the user sees
            assert room_wait(log) == str(tmp_path)  # (the nearest folder there is)
            assert main(["queue"]) == 0
            out = capsys.readouterr().out
            assert f"#{job.id} waiting for room on the disk of {tmp_path}: free some space there" in " ".join(out.split()), out
            snapshot = read_snapshot(queue)
            assert "waiting for room on the disk of" in str(job_detail(snapshot.job(job.id), snapshot))

    monkeypatch.setattr(room, "_waited", [0.0])
    monkeypatch.setattr(room.time, "sleep", lambda s: None)
    assert room.write_with_room(write, "the final checkpoint", full, logged) == "written"
    assert room_wait(log) is None and "waiting for room" not in capsys.readouterr().out
    main(["queue"])
    assert "waiting for room" not in capsys.readouterr().out
