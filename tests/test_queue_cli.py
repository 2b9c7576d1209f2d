"""Queue commands from the command line, without a worker (jobs only queued): what a user
types to inspect and steer the queue."""

from __future__ import annotations

import json
import os
import sys
import threading
import types

import pytest

from copylora_tui.cli.main import EXIT_FAILED, EXIT_USAGE, main
from engine.jobs.queue import JobStatus, Queue
from tests.helpers import copy_example, train_sides_apart


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def test_run_queues_a_and_b_as_one_twin_job_when_they_train_alike(tmp_path, home, capsys):
    root = copy_example(tmp_path)
    assert main(["run", str(root), "--no-worker", "--max-steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "train A+B queued #1" in out and "merge     queued #2" in out  # the names align
    assert main(["queue", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(j["label"], j["side"]) for j in listed["jobs"]] == [("train A+B", "ab"), ("merge", None), ("preview", None)]
    assert listed["jobs"][1]["depends_on"] == [1]
    assert main(["run", str(root), "--no-worker"]) == 0
    assert "train A+B already queued" in capsys.readouterr().out
    # Sides set differently: two jobs, whatever the switch says.
    other = copy_example(tmp_path, "other")
    toml = other / "copylora.toml"
    toml.write_text(toml.read_text().replace("# Any [train] key set here overrides it for this side only.\n\n[merge]",
                                              "learning_rate = 0.0005\n\n[merge]"))
    assert main(["run", str(other), "--no-worker"]) == 0
    out = capsys.readouterr().out
    assert "train A  queued" in out and "train B  queued" in out


def test_run_json_says_each_step_and_its_job_for_scripts(tmp_path, home, capsys):
    """A script queuing many concepts parsed `run`'s text for the job numbers to follow. --json
    gives each step (action, reason, job), the jobs, and the worker (none here: --no_worker);
    a twin's reason is said once where A's and B's are the same, each side's where they differ."""
    root = copy_example(tmp_path)
    assert main(["run", str(root), "--no_worker", "--max_steps", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(s["what"], s["action"], s["job"]) for s in out["steps"]] == [("train A+B", "queued", 1), ("merge", "queued", 2),
                                                                           ("preview", "queued", 3)]
    assert out["jobs"] == [1, 2, 3] and out["worker"] is None
    assert out["steps"][0]["project_folder"] == str(root) and out["steps"][0]["reason"] == "no LoRA yet"
    assert main(["run", str(root), "--no_worker", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [(s["action"], s["job"]) for s in again["steps"]] == [("already queued", 1), ("already queued", 2), ("already queued", 3)]
    Queue(home).cancel(1)
    (root / "output").mkdir(exist_ok=True)
    (root / "output" / "example-monochrome_B.safetensors").write_bytes(b"not a LoRA")
    assert main(["run", str(root), "--no_worker", "--json"]) == 0
    reason = json.loads(capsys.readouterr().out)["steps"][0]["reason"]
    assert reason.startswith("A: no LoRA yet; B: ") and "no LoRA yet" not in reason[len("A: no LoRA yet"):], reason


def test_run_queue_and_steer(tmp_path, home, capsys):
    root = train_sides_apart(copy_example(tmp_path))
    assert main(["run", str(root), "--no-worker", "--max-steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "train A  queued #1" in out and "merge    queued #3" in out
    # Running it again queues nothing twice.
    assert main(["run", str(root), "--no-worker"]) == 0
    assert "already queued" in capsys.readouterr().out
    assert main(["queue", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [j["label"] for j in listed["jobs"]] == ["train A", "train B", "merge", "preview"]
    assert listed["jobs"][2]["depends_on"] == [1, 2] and listed["worker_pid"] is None
    assert main(["move", "2", "top"]) == 0
    assert main(["pause", "1"]) == 0
    assert main(["queue"]) == 0
    table = capsys.readouterr().out
    assert "worker not running" in table and "paused" in table
    assert main(["cancel", "2"]) == 0
    assert Queue(home).get(3).status == "failed"  # the merge depended on it
    capsys.readouterr()
    assert main(["retry", "3"]) == EXIT_USAGE  # refused: a dependant comes back with its dependency, not alone
    assert "waits for #2, which is cancelled: retry #2" in capsys.readouterr().err
    assert main(["retry", "2"]) == 0
    assert "worker is not running" in capsys.readouterr().out
    assert Queue(home).get(3).status == "queued"
    assert main(["cancel", "99"]) == EXIT_USAGE  # no such job: the input to fix
    assert "no job #99" in capsys.readouterr().err


def test_run_refuses_invalid_projects_and_queues_nothing(tmp_path, home, capsys):
    good = copy_example(tmp_path, "good")
    bad = copy_example(tmp_path, "bad")
    toml = bad / "copylora.toml"
    toml.write_text(toml.read_text().replace("new_rank = 16", "new_rank = -2"))
    assert main(["run", str(good), str(bad), "--no-worker"]) == EXIT_USAGE
    assert "merge.new_rank" in capsys.readouterr().err
    assert Queue(home).jobs() == []


def test_logs_prints_and_tails(tmp_path, home, capsys):
    root = copy_example(tmp_path)
    main(["run", str(root), "--no-worker"])
    queue = Queue(home)
    queue.log_path(1).write_text("line 1\nline 2\nline 3\n")
    capsys.readouterr()
    assert main(["logs", "1", "-n", "2"]) == 0
    assert capsys.readouterr().out == "line 2\nline 3\n"
    queue.claim(None)
    queue.finish(1, "done")
    assert main(["logs", "1", "-f"]) == 0  # a finished job: -f prints and returns
    assert "line 3" in capsys.readouterr().out


def test_worker_status_when_stopped(home, capsys):
    assert main(["worker", "status"]) == 3
    assert "not running" in capsys.readouterr().out


def test_worker_stop_says_what_it_stopped(home, capsys, monkeypatch):
    """It said "running jobs checkpointed and queued first" with no job running."""
    monkeypatch.setattr("engine.jobs.worker.stop_worker", lambda: 4242)  # a worker that stops at once
    assert main(["worker", "stop"]) == 0
    assert capsys.readouterr().out.strip() == "worker 4242 stopped; no job was running"

    queue = Queue(home)
    for project in ("/p/one", "/p/two", "/p/three", "/p/four"):
        queue.enqueue("train", project, side="a", total=10)
    for _ in range(4):
        queue.claim(None)
    from engine.jobs.procs import process_start

    queue.set_pid(3, os.getpid(), process_start(os.getpid()))  # alive: still writing its checkpoint
    queue.set_pid(4, os.getpid(), "not its start")  # its process is gone: the worker killed it past the grace

    def stop() -> int:  # one checkpointed and queued first, one whose checkpoint a full disk refused, one still writing
        queue.requeue_at_head(1, "the worker stopped")
        queue.finish(2, "failed", error="stopped at step 5, but its checkpoint could not be written")
        return 4242

    monkeypatch.setattr("engine.jobs.worker.stop_worker", stop)
    monkeypatch.setattr("engine.jobs.worker.worker_pid", lambda home=None: 4242)  # one runs, and waits for its jobs
    assert main(["worker", "stop"]) == 0
    # It said "running jobs checkpointed and queued first" of a job the full disk had failed.
    assert capsys.readouterr().out.splitlines() == [
        "stopping the worker: 4 running job(s) write their checkpoint first (up to 2 minutes)…",
        "worker 4242 stopped",
        "  #1 train a of one: checkpointed at step 0, queued first (the next worker resumes it)",
        "  #2 train a of two: failed: stopped at step 5, but its checkpoint could not be written",
        "  #3 train a of three: still stopping (its checkpoint is being written); `copylora queue` shows when it is queued",
        "  #4 train a of four: interrupted (it did not stop in time); the next worker resumes it from its last checkpoint"]
    # jobs left "running" by a worker that died: nothing to wait for, and nothing said of waiting
    monkeypatch.setattr("engine.jobs.worker.stop_worker", lambda: None)
    monkeypatch.setattr("engine.jobs.worker.worker_pid", lambda home=None: None)
    assert main(["worker", "stop"]) == 0
    assert capsys.readouterr().out.strip() == "no worker was running"


def test_gpu_stats_absent_without_nvml(monkeypatch):
    import engine.jobs.gpu as gpu

    monkeypatch.setattr(gpu, "_initialised", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as on a machine without the driver
    assert gpu.sample_gpus() == []


def test_gpu_stats_read_through_nvml(monkeypatch):
    """The NVML reading code, against a stand-in with NVML's API (no GPU on CI)."""
    import engine.jobs.gpu as gpu

    fake = types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: "h0",
        nvmlDeviceGetName=lambda h: b"NVIDIA H100",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=20 * 2**30, total=80 * 2**30),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=97),
        nvmlDeviceGetTemperature=lambda h, kind: 64,
        nvmlDeviceGetPowerUsage=lambda h: 612_000,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [types.SimpleNamespace(pid=42, usedGpuMemory=3 * 2**30)],
    )
    monkeypatch.setattr(gpu, "_initialised", None)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    (sample,) = gpu.sample_gpus()
    assert sample["name"] == "NVIDIA H100" and sample["used_mb"] == 20 * 1024 and sample["total_mb"] == 80 * 1024
    assert (sample["util"], sample["temp"], sample["power_w"]) == (97, 64, 612.0)
    assert sample["processes"] == {42: 3 * 1024}


# ----------------------------------------------------------------------------- run --wait returns


def test_run_wait_on_a_paused_job_says_how_to_resume_and_returns(tmp_path, home, capsys):
    root = copy_example(tmp_path)
    assert main(["run", str(root), "--no-worker", "--max-steps", "2"]) == 0
    assert main(["pause", "1"]) == 0
    capsys.readouterr()
    result = {}
    waiting = threading.Thread(target=lambda: result.setdefault("code", main(["run", str(root), "--no-worker", "--wait"])), daemon=True)
    waiting.start()
    waiting.join(timeout=60)  # before the fix: forever
    assert not waiting.is_alive(), "run --wait is still waiting on a paused job"
    err = capsys.readouterr().err
    assert result["code"] == EXIT_FAILED
    assert "#1 train A+B of example-monochrome is paused: resume it with `copylora resume 1`" in err
    assert Queue(home).get(1).status is JobStatus.PAUSED  # nothing was changed, only said



def test_run_wait_without_a_worker_says_how_to_start_one_and_returns(tmp_path, home, capsys, monkeypatch):
    from copylora_tui.cli import queue_commands

    monkeypatch.setattr(queue_commands, "NO_WORKER_GRACE_S", 0.5)
    root = copy_example(tmp_path)
    capsys.readouterr()
    result = {}
    waiting = threading.Thread(target=lambda: result.setdefault("code", main(["run", str(root), "--no-worker", "--wait", "--max-steps", "2"])),
                               daemon=True)
    waiting.start()
    waiting.join(timeout=60)  # before the fix: forever
    assert not waiting.is_alive(), "run --no-worker --wait is still waiting with no worker to run the jobs"
    assert result["code"] == EXIT_FAILED
    assert "no worker is running, so the jobs stay queued: start one with `copylora worker start`" in capsys.readouterr().err
    assert Queue(home).get(1).status is JobStatus.QUEUED


def test_names_and_errors_with_brackets_print_as_written(tmp_path, home, capsys, monkeypatch):
    """Project folders, labels and job errors are printed, never read as Rich markup: an
    error's "[train] caption" lost its "[train]", and a "[/]" (a path, a paste) ended
    `copylora queue` with a MarkupError."""
    monkeypatch.setenv("COLUMNS", "200")
    root = copy_example(tmp_path, "[Pony] style")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('name = "example-monochrome"', 'name = "pony-style"'))
    assert main(["run", str(root), "--no-worker", "--max-steps", "5"]) == 0
    capsys.readouterr()
    error = "set [train] caption = \"\"; /data/[old]/a[/]b.png cannot be read [/red]"
    Queue(home).finish(1, JobStatus.FAILED, error=error)
    assert main(["queue"]) == 0
    out = capsys.readouterr().out
    assert "[Pony] style" in out and f"#1 failed: {error}" in out, out


def test_run_wait_shows_names_and_errors_with_brackets_as_written(tmp_path, home, capsys, monkeypatch):
    """`run --wait`'s progress lines are Rich markup templates: a project folder "[Pony] a[b]c"
    lost its brackets there, and a failed job's "[/]" ended the command with a MarkupError."""
    from copylora_tui.cli import queue_commands

    monkeypatch.setenv("COLUMNS", "240")
    monkeypatch.setattr(queue_commands, "NO_WORKER_GRACE_S", 0.5)
    root = copy_example(tmp_path, "[Pony] a[b]c")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('name = "example-monochrome"', 'name = "pony"'))
    assert main(["run", str(root), "--no-worker", "--max-steps", "2"]) == 0
    capsys.readouterr()
    queue = Queue(home)
    queue.finish(1, JobStatus.FAILED, error="1 problem:\n  a[/]b.png: set [train] caption")  # as a check's problems read
    ids = [job.id for job in queue.jobs()]
    assert queue_commands._wait(queue, ids) == EXIT_FAILED
    err = capsys.readouterr().err
    # one line in the bar's row: "1 problem:" alone showed, the problem below it was cut
    assert "[Pony] a[b]c" in err and "failed: 1 problem: a[/]b.png: set [train] caption" in err, err


def test_queue_lists_the_waiting_jobs_and_the_newest_finished_ones_of_a_long_history(home, capsys):
    """Months of use: 6 000 finished jobs. `copylora queue` shows the active jobs and the 20
    newest finished ones, at once (it compared every job with every finished one: 44 s for
    9 300 jobs); --all shows every one."""
    import time

    queue = Queue(home)
    waiting = queue.enqueue("merge", "/p", label="merge")
    now = time.time()
    queue.db.executemany("INSERT INTO jobs (kind, project, label, status, position, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [("merge", f"/p{n}", "merge", "done", n, now, now - 3000 + n) for n in range(6000)])
    started = time.monotonic()
    assert main(["queue", "--json"]) == 0
    took = time.monotonic() - started
    listed = json.loads(capsys.readouterr().out)["jobs"]
    assert [j["id"] for j in listed] == [waiting.id] + list(range(6001, 5981, -1))  # newest finished first
    assert took < 5.0, took
    assert main(["queue", "--json", "--all"]) == 0
    assert len(json.loads(capsys.readouterr().out)["jobs"]) == 6001


def test_logs_on_a_terminal_does_not_obey_the_logs_control_sequences(tmp_path, home, capsys, monkeypatch):
    """A log prints what a training printed: a picture's name from a shared project may carry
    an escape sequence (the window title, OSC 52 clipboard writes, cursor moves). On a terminal
    those are dropped and colours kept; into a pipe the bytes go as they are."""
    root = copy_example(tmp_path)
    main(["run", str(root), "--no-worker"])
    log = Queue(home).log_path(1)
    hostile = "title\x1b]0;owned\x07 clip\x1b]52;c;ZXZpbA==\x1b\\ up\x1b[2A bell\x07 \x1b[31mred\x1b[0m 50%\r100% é\n"
    log.write_bytes(hostile.encode())
    capsys.readouterr()
    assert main(["logs", "1"]) == 0
    assert capsys.readouterr().out == hostile  # a pipe: unchanged
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["logs", "1"]) == 0
    assert capsys.readouterr().out == "title clip up bell\ufffd \x1b[31mred\x1b[0m 50%\r100% é\n"
    assert main(["logs", "1", "-n", "-1"]) == 2


def test_logs_reads_the_last_lines_from_the_end_and_keeps_characters_whole(tmp_path):
    import io

    from copylora_tui.cli.terminal_text import CHUNK, LogWriter, copy_range, last_lines_start

    path = tmp_path / "job.log"
    lines = [f"step {n} 日本語".encode() for n in range(40_000)]  # several chunks
    path.write_bytes(b"\n".join(lines) + b"\n")
    with open(path, "rb") as handle:
        size = path.stat().st_size
        for count in (1, 3, 7_000, 40_000, 50_000):
            handle.seek(0)
            assert handle.read()[last_lines_start(handle, size, count):] == b"".join(line + b"\n" for line in lines[-count:])
        out = io.StringIO()
        writer = LogWriter(out)
        for start in range(0, size, CHUNK - 1):  # reads that cut the three-byte characters apart
            copy_range(handle, start, min(size, start + CHUNK - 1), writer)
        writer.write(b"", final=True)
    assert out.getvalue() == path.read_text() and "\ufffd" not in out.getvalue()
    path.write_bytes(b"no newline at the end")
    with open(path, "rb") as handle:
        assert last_lines_start(handle, path.stat().st_size, 1) == 0


def test_an_escape_sequence_cut_between_two_reads_of_a_followed_log_is_still_dropped():
    import io

    from copylora_tui.cli.terminal_text import LogWriter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    writer = LogWriter(out)
    for piece in (b"a\x1b]0;ow", b"ned\x07b \x1b[3", b"1mc\x1b", b"[0m\n"):
        writer.write(piece)
    writer.write(b"", final=True)
    assert out.getvalue() == "ab \x1b[31mc\x1b[0m\n"


def test_on_a_terminal_names_from_a_shared_project_cannot_drive_it(tmp_path, home, capsys, monkeypatch):
    """A project folder named with escape sequences (window title, clipboard, clear screen):
    every command printed it as it was. On a terminal they are dropped; in a pipe kept."""
    import shutil

    name = "evil\x1b]0;OWNED\x07name\x1b]52;c;ZXZpbA==\x1b\\\x1b[2J\x1bc"
    root = tmp_path / name
    shutil.copytree(copy_example(tmp_path), root)
    capsys.readouterr()
    assert main(["check", str(root) + "x"]) == 2
    assert "\x1b]0;OWNED" in capsys.readouterr().err  # a pipe: as it is, for scripts
    for stream in (sys.stdout, sys.stderr):
        monkeypatch.setattr(stream, "isatty", lambda: True)
    for argv, code in ((["check", str(root)], 0), (["run", str(root), "--no-worker"], 0), (["queue"], 0),
                       (["check", str(root) + "x"], 2), (["queue", name], 2)):  # argparse: "unrecognized arguments: …" as typed
        try:
            assert main(argv) == code
        except SystemExit as exit:  # argparse's own error (it echoes the value)
            assert exit.code == code
        captured = capsys.readouterr()
        shown = captured.out + captured.err
        assert "evil" in shown and not any(bad in shown for bad in ("\x1b]", "\x07", "\x1b[2J", "\x1bc")), (argv, shown)
    assert sys.stdout.isatty() and type(sys.stdout).__name__ != "_GuardedStream"  # put back after the command


def test_rich_drawing_passes_the_terminal_guard_unchanged():
    import io

    from rich.console import Console
    from rich.progress import Progress

    from copylora_tui.cli.terminal_text import _GuardedStream

    outputs = []
    for guarded in (False, True):
        raw = io.StringIO()
        console = Console(file=_GuardedStream(raw) if guarded else raw, force_terminal=True, width=60, color_system="256",
                          _environ={})
        with Progress(console=console, auto_refresh=False) as progress:
            task = progress.add_task("[bold]merging[/] [red]A[/]", total=3)
            for _ in range(3):
                progress.advance(task)
                progress.refresh()
        console.print("[green]done[/]")
        outputs.append(raw.getvalue())
    assert "\x1b[2K" in outputs[0] and "\x1b[?25l" in outputs[0]  # what the guard must keep
    assert outputs[1] == outputs[0]


def test_clean_removes_finished_jobs_with_their_logs_and_keeps_what_waiting_jobs_need(home, capsys):
    import time

    queue = Queue(home)
    old = queue.enqueue("merge", "/p", label="merge")  # done long ago
    queue.claim(None)
    queue.report_progress(old.id, types.SimpleNamespace(step=1, total=1, loss=0.1, smooth_loss=0.1, lr=1e-4, it_per_s=1.0, eta_s=0.0,
                                                        vram_peak_mb=None, loss_b=None, smooth_loss_b=None, copy_db=None,
                                                        copy_db_b=None), point=True)
    queue.finish(old.id, "done")
    queue.db.execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (time.time() - 10 * 86400, old.id))
    failed = queue.enqueue("merge", "/q", label="merge")
    queue.claim(None)
    queue.finish(failed.id, "failed", error="boom")
    needed = queue.enqueue("train", "/r", side="a", label="train A", total=10)  # done, and a waiting merge needs it
    queue.claim(None)
    queue.finish(needed.id, "done")
    waiting = queue.enqueue("merge", "/r", label="merge", depends_on=[needed.id])
    from engine.jobs.state_home import channel_dir

    for job in (old, failed, needed):
        queue.log_path(job.id).parent.mkdir(parents=True, exist_ok=True)
        queue.log_path(job.id).write_text("log\n")
    channel_dir(home, old.id).mkdir(parents=True)  # it ran on Slurm: its channel's files
    (channel_dir(home, old.id) / "events.jsonl").write_text("{}\n")
    assert main(["clean", "--older-than", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "removed 1 finished job that finished more than 5 days ago, with their logs"
    assert not queue.log_path(old.id).exists() and queue.points(old.id) == [] and not channel_dir(home, old.id).exists()
    assert main(["clean", "--done_only"]) == 0
    assert capsys.readouterr().out == "no done jobs to remove; kept 1 that waiting jobs depend on\n"
    assert main(["clean"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "removed 1 finished job, with their logs; kept 1 that waiting jobs depend on"
    assert [j.id for j in queue.jobs()] == [waiting.id, needed.id] and queue.log_path(needed.id).exists()
    assert not queue.log_path(failed.id).exists()
    assert main(["clean", "--older_than", "-1"]) == EXIT_USAGE


def finished_history(home, jobs: int) -> Queue:
    """A queue of ``jobs`` finished jobs and 100 000 loss points (a queue of months, ~5 MB)."""
    import time

    queue = Queue(home)
    now = time.time()
    queue.db.executemany("INSERT INTO jobs (kind, project, label, status, position, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [("merge", "/p", "merge", "done", n, now, now) for n in range(jobs)])
    queue.db.executemany("INSERT INTO points (job_id, step, t, loss) VALUES (?, ?, ?, ?)",
                         [(1 + n // 1000, n % 1000, now, 0.5) for n in range(100_000)])
    return queue


def test_clean_gives_the_space_back_unless_the_queue_is_busy(home, capsys):
    import sqlite3
    import time

    queue = finished_history(home, jobs=200)
    now = time.time()
    big = queue.path.stat().st_size
    reader = sqlite3.connect(queue.path)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM jobs").fetchone()  # the app in the middle of a read
    assert main(["clean", "--older_than", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 200 finished jobs") and "the queue file" not in out  # busy: not waited for
    reader.rollback()
    queue.db.executemany("INSERT INTO jobs (kind, project, label, status, position, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [("merge", "/p", "merge", "done", 0, now, now)])
    from copylora_tui.cli.queue_commands import _file_size
    from copylora_tui.core.formatting import size_text

    was = _file_size(queue.path)
    assert main(["clean"]) == 0
    out = capsys.readouterr().out
    assert "the queue file " in out and queue.path.stat().st_size < big / 4
    assert f"(was {size_text(was)})" in out  # measured before the removal wrote its own pages to the WAL
    assert [j.id for j in Queue(home).jobs()] == []


def test_clean_says_the_queue_files_size_from_before_it(home, capsys):
    """The removal writes its pages to the write-ahead log first: measured after it, "was" read
    about twice the file (a 112 MB queue "was 219.2 MB")."""
    from copylora_tui.cli.queue_commands import _file_size
    from copylora_tui.core.formatting import size_text

    queue = finished_history(home, jobs=100)
    queue.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a queue left alone for a while: all in the file
    was = _file_size(queue.path)
    assert main(["clean"]) == 0
    out = capsys.readouterr().out
    assert f"is {size_text(_file_size(queue.path))} now (was {size_text(was)})" in out, (out, size_text(was))


def test_a_followed_log_line_ending_in_a_colour_is_shown_whole_at_once():
    """The last sequence of a read held back even when it had ended: a line ending in a colour
    reset lost its newline until the job wrote more."""
    import io

    from copylora_tui.cli.terminal_text import LogWriter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    LogWriter(out).write(b"\x1b[33mwarning\x1b[0m\n")
    assert out.getvalue() == "\x1b[33mwarning\x1b[0m\n"


def test_queue_fits_its_terminal_by_leaving_out_the_least_before_cutting(tmp_path, monkeypatch):
    """At 80 columns Rich squeezed every column: "192/1…", "train A…", a copy header "c"; at 60
    the job number, which cancel, retry and logs need, was gone."""
    from rich.cells import cell_len
    from rich.console import Console

    from copylora_tui.cli.queue_view import print_queue
    from engine.train.progress import Progress

    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    queue = Queue()
    for name in ("mono", "example-monochrome-with-a-very-long-name-of-sixty-four-characters-in-it"):
        job = queue.enqueue("train", f"/p/{name}", side="ab", label="train A+B", total=200)
        queue.claim(None)
        queue.report_progress(job.id, Progress(200, 200, 0.7, 0.74, 1e-3, 6.0, 0.0, 30.0, None, 0.7, 0.742, copy_db=-17.3, copy_db_b=-17.8,
                                               copy_step=200), point=True)
        queue.finish(job.id, "done")
        queue.enqueue("merge", f"/p/{name}", label="merge", total=192)
    for width, whole in ((140, ["A -17.3 B -17.8", "━━━━━━━━━━━━ 200/200"]), (80, ["A 0.7400 B 0.7420", "train A+B", "200/200"]),
                         (60, ["#1", "#4"])):
        console = Console(width=width, record=True)
        print_queue(queue.jobs(), None, tmp_path, console)
        lines = console.export_text().splitlines()
        assert all(cell_len(line) <= width for line in lines)
        for cell in whole:
            assert any(cell in line for line in lines), (width, cell, lines)



def test_run_wait_keeps_its_columns_past_job_9(home, capsys, monkeypatch):
    from copylora_tui.cli import queue_commands

    monkeypatch.setenv("COLUMNS", "120")
    queue = Queue(home)
    for n in range(10):
        job = queue.enqueue("merge", f"/p/project-{n}", label="merge")
        queue.claim(None)
        queue.finish(job.id, JobStatus.DONE)
    assert queue_commands._wait(queue, [9, 10]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("#")]
    assert [line.index("merge") for line in lines] == [4, 4], lines  # "#9  merge", "#10 merge"


def test_queue_shows_a_job_waiting_for_a_slurm_node_as_pending(home, monkeypatch):
    """`copylora queue` said "running 5.1 it/s ETA 00:34" of a job Slurm had not started."""
    from rich.console import Console

    from copylora_tui.cli.queue_view import print_queue
    from engine.train.progress import Progress

    queue = Queue(home)
    job = queue.enqueue("train", "/p/mono", side="a", label="train A", total=400)
    queue.claim("slurm")
    queue.report_progress(job.id, Progress(150, 400, 0.6, 0.7, 1e-3, 5.1, 34.0, 17.0, None), point=True)
    queue.set_slurm(job.id, {"id": "77", "state": "PENDING", "reason": "Resources", "node": ""})
    console = Console(width=140, record=True)
    print_queue(queue.jobs(), 4242, home, console)
    row = next(line for line in console.export_text().splitlines() if line.lstrip().startswith("#1"))
    assert "pending" in row and "5.1 it/s" not in row and "00:34" not in row and "Slurm 77 PENDING (Resources)" in row, row
