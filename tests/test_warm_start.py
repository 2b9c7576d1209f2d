"""Warm job starts (engine/jobs/warm_start.py, warm_client.py): jobs forked from a process that
has torch and the libraries loaded, held by the worker as its own children.

The worker-level tests run the real worker; the others drive the preloaded process and the
worker's client from a small script of their own (it must be a child subreaper, which a pytest
process should not become)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.jobs.enqueue import enqueue_project
from engine.jobs.queue import Queue
from engine.jobs.worker import start_detached, stop_worker, worker_pid
from tests.helpers import copy_example, wait_for

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "state"
    monkeypatch.setenv("COPYLORA_HOME", str(path))
    monkeypatch.delenv("COPYLORA_WARM_START", raising=False)
    yield path
    pid = worker_pid(path)
    if pid and pid > 0:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def small_project(tmp_path, name: str) -> Path:
    root = copy_example(tmp_path, name)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("steps = 8", "steps = 1").replace("size = [128, 192]", "size = [64, 64]"))
    return root


def worker_log(home: Path) -> str:
    return (home / "worker.log").read_text()


def test_warm_jobs_give_the_cold_jobs_results_bit_for_bit(tmp_path, home, monkeypatch):
    """A project's jobs (train A+B, merge, preview) forked from the preloaded process write the
    same LoRAs as the same jobs started cold; the worker's log says which way each started."""
    import torch

    from engine.lora.files import load_lora_file

    results = {}
    for how in ("warm", "cold"):
        if how == "cold":
            monkeypatch.setenv("COPYLORA_WARM_START", "0")
        root = small_project(tmp_path, how)
        queue = Queue(home)
        steps = enqueue_project(queue, root, max_steps=6)
        start_detached(home)
        wait_for(lambda: all(queue.get(s.job.id).status == "done" for s in steps), what=f"the {how} jobs")
        stop_worker(home)
        train, merge = queue.get(steps[0].job.id).artifacts, queue.get(steps[1].job.id).artifacts
        files = {"A": train["lora_a"], "B": train["lora_b"], "merge": merge["lora"]}
        results[how] = {kind: load_lora_file(path).modules for kind, path in files.items()}
        for step in steps:
            log = queue.log_path(step.job.id).read_text()
            assert "Traceback" not in log and "threads: " in log
        assert list((root / "output" / "samples").glob("*-grid.png"))
    text = worker_log(home)
    assert text.count(", warm\n") == 3 and text.count(", cold\n") == 3
    assert "warm start: torch" in text and "(full tier); jobs start from it" in text
    assert "warm start off (switched off by COPYLORA_WARM_START=0)" in text
    for kind in ("A", "B", "merge"):
        warm, cold = results["warm"][kind], results["cold"][kind]
        assert warm.keys() == cold.keys()
        assert all(torch.equal(warm[n].down, cold[n].down) and torch.equal(warm[n].up, cold[n].up) for n in warm)


def test_a_lost_preloaded_process_leaves_jobs_to_start_cold(tmp_path, home):
    """The preloaded process killed (OOM killer, a stray kill): the next jobs start cold and the
    worker says why, once. (The jobs are merges of a project without LoRAs: they fail at once, in
    their own logs, which is all this needs of them.)"""
    root = small_project(tmp_path, "lost")
    queue = Queue(home)
    start_detached(home)
    wait_for(lambda: "jobs start from it" in worker_log(home), what="the preloaded process")
    preloaded = [child for child, command in _children_of(worker_pid(home)).items() if "warm_start" in command]
    assert len(preloaded) == 1
    assert "  warm start: torch, transformers, diffusers" in _status()
    os.kill(preloaded[0], signal.SIGKILL)
    jobs = [queue.enqueue("merge", str(root)) for _ in range(2)]
    wait_for(lambda: all(queue.get(j.id).status == "failed" for j in jobs), what="the jobs")
    assert all("job #" in queue.log_path(j.id).read_text() for j in jobs)
    text = worker_log(home)
    assert text.count("warm start off: the preloaded process is gone") == 1 and text.count(", cold\n") == 2
    assert "  warm start off: the preloaded process is gone; jobs start cold" in _status()
    stop_worker(home)


def _status() -> str:
    done = subprocess.run([sys.executable, "-m", "copylora_tui.cli.main", "worker", "status"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _children_of(pid: int) -> dict[int, str]:
    """{child pid: its command line} of ``pid``, from /proc (no ``ps`` on a bare machine)."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
            found[int(entry)] = command
    return found


# ---------------------------------------------------------------------- the parts, from a script

CLIENT = textwrap.dedent("""
    import json, os, sys, time
    from engine.jobs.queue import Queue
    from engine.jobs.warm_client import WarmStarter
    from engine.jobs.procs import stray_children

    home, project, env_extra, also = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
    said = []
    warm = WarmStarter(said.append, also=tuple(also))
    deadline = time.monotonic() + 120
    while warm.waiting() and time.monotonic() < deadline:
        time.sleep(0.05)
    result = {"state": warm.state, "said": said}
    if warm.state == "ready":
        queue = Queue(home)
        job = queue.enqueue("merge", project)
        env = dict(os.environ, **env_extra)
        process = warm.start(["--home", home, "--job", str(job.id)], env, queue.log_path(job.id), os.getcwd())
        result["pid_is_child"] = open(f"/proc/{process.pid}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        result["code"] = process.returncode
        result["status"] = queue.get(job.id).status
        result["log"] = queue.log_path(job.id).read_text()
    warm.close()
    result["strays"] = stray_children(set())
    print(json.dumps(result))
""")


def client(tmp_path, *also: str, env: dict | None = None) -> dict:
    """Start the preloaded process from a script (a subreaper), fork one merge job of a project
    without LoRAs (it fails at once, by design: what matters is how it ran) and report."""
    root = small_project(tmp_path, "parts")
    run_env = dict(os.environ, COPYLORA_HOME=str(tmp_path / "state"), OMP_NUM_THREADS="1")
    run_env.pop("COPYLORA_WARM_START", None)
    done = subprocess.run([sys.executable, "-c", CLIENT, str(tmp_path / "state"), str(root), json.dumps(env or {}), *also],
                          capture_output=True, text=True, cwd=REPO, env=run_env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_forked_job_is_the_workers_child_and_reports_its_exit_code(tmp_path):
    result = client(tmp_path)
    assert result["state"] == "ready" and result["pid_is_child"]
    assert result["code"] == 1 and result["status"] == "failed"  # no LoRAs to merge: refused in the job's own log
    assert "job #1: merge of" in result["log"] and "FAILED:" in result["log"]
    assert result["strays"] == []  # the middle process was reaped by the preloaded one


def test_when_the_full_tier_touches_cuda_the_base_tier_is_preloaded(tmp_path):
    """A library of the full tier that touches CUDA (bitsandbytes queries the GPU when it loads; the
    driver starts threads): the probe child sees a bad fork and the process starts again without
    diffusers, whatever threads the driver started."""
    pytest.importorskip("bitsandbytes")
    result = client(tmp_path, "tests.fake_full_tier_imports_bnb", "tests.fake_cuda_fork")
    assert result["state"] == "ready", result["said"]
    assert any("(base tier)" in line for line in result["said"]), result["said"]
    assert "diffusers" not in " ".join(result["said"])
    assert result["code"] == 1 and "job #1: merge of" in result["log"]


def test_diffusers_is_preloaded_without_bitsandbytes(tmp_path):
    """diffusers imports bitsandbytes (which touches CUDA on a GPU box) unless told not to: the
    preloaded process tells it (engine.lean_imports), so the full tier, diffusers included, stays
    where bitsandbytes is installed."""
    pytest.importorskip("bitsandbytes")
    result = client(tmp_path, "tests.fake_cuda_fork")
    assert result["state"] == "ready", result["said"]
    assert any("(full tier)" in line for line in result["said"]), result["said"]
    assert result["code"] == 1 and "job #1: merge of" in result["log"]


def test_a_job_forked_after_cuda_was_touched_replaces_itself_with_a_cold_start(tmp_path):
    result = client(tmp_path, "tests.fake_cuda_fork", env={"FAKE_BAD_FORK": "1"})
    log = result["log"]
    assert "this job starts cold" in log
    assert log.index("this job starts cold") < log.index("job #1: merge of")  # the exec'd runner did the job
    assert result["code"] == 1 and result["status"] == "failed"


def test_a_library_thread_in_the_preloaded_process_turns_warm_starts_off(tmp_path):
    result = client(tmp_path, "tests.fake_thread")
    assert result["state"] == "off"
    assert any("threads were running after the imports (fake-lib-thread; a fork keeps only one)" in line for line in result["said"]), result["said"]


LATE = textwrap.dedent("""
    import json, os, subprocess, sys, time
    import engine.jobs.warm_client as client
    from engine.jobs.procs import children, process_state
    from engine.jobs.queue import Queue

    client.REPLY_WAIT_S = 1.0
    home, project = sys.argv[1], sys.argv[2]
    said = []
    warm = client.WarmStarter(said.append, also=("tests.slow_fork",))
    while warm.waiting():
        time.sleep(0.05)
    server = warm.pid()
    queue = Queue(home)
    job = queue.enqueue("merge", project)
    argv = ["--home", home, "--job", str(job.id)]
    if os.environ["SLOW_FORK"] == "after":
        # The case's premise: the job took its ticket, only the reply is late. On a loaded machine
        # the two forks can take longer than the 1 s wait, so the wait starts once the ticket is
        # taken (the original test failed 'cold' under a full parallel suite).
        ticket = queue.log_path(job.id).with_name(queue.log_path(job.id).name + ".ticket")
        reply_after = warm._next

        def _next_once_taken(timeout):
            deadline = time.monotonic() + 60
            while (ticket.exists() or not ticket.parent.exists()) and time.monotonic() < deadline:
                time.sleep(0.01)
            return reply_after(timeout)

        warm._next = _next_once_taken
    process = warm.start(argv, dict(os.environ), queue.log_path(job.id), os.getcwd())
    how = "warm" if process is not None else "cold"
    if process is None:  # what the worker does
        with open(queue.log_path(job.id), "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "engine.jobs.runner", *argv], stdout=log, stderr=subprocess.STDOUT)
    while process.poll() is None:
        time.sleep(0.05)
    # Waited for, not slept on (it slept 4 s): a late fork can come no more (the preloaded process
    # is gone: the worker ends it when it gives up on a reply; or slow_fork said its fork came), and
    # every process it forked has ended (all of this subreaper's children are gone or zombies):
    # a second run of the job would be in the log by then.
    mark, deadline = os.environ["SLOW_FORK_MARK"], time.monotonic() + 120

    def over(pid):
        return process_state(pid) in (None, b"Z")

    while not (over(server) or os.path.exists(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    while not all(over(pid) for pid in children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert time.monotonic() < deadline, "the late fork's processes did not end"
    left = sorted(p.name for p in queue.log_path(job.id).parent.iterdir() if ".ticket" in p.name)
    print(json.dumps({"how": how, "code": process.returncode, "said": said, "log": queue.log_path(job.id).read_text(), "left": left}))
""")


@pytest.mark.parametrize("when, how", [("before", "cold"), ("after", "warm")])
def test_a_fork_that_comes_too_late_never_runs_the_job_twice(tmp_path, when, how):
    """No reply in time: the worker cancels the job's ticket and starts it cold; a fork that comes
    after that finds no ticket and exits without running (``before``). If the forked job took its
    ticket first (``after``: only the reply was late), it is the job: the worker finds it among its
    children and holds it. Either way the job runs once."""
    root = small_project(tmp_path, "late")
    env = dict(os.environ, COPYLORA_HOME=str(tmp_path / "state"), OMP_NUM_THREADS="1", SLOW_FORK=when,
               SLOW_FORK_MARK=str(tmp_path / "late-fork"))
    done = subprocess.run([sys.executable, "-c", LATE, str(tmp_path / "state"), str(root)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["how"] == how and result["code"] == 1
    assert result["log"].count("job #1: merge of") == 1, result["log"]
    assert result["left"] == []  # no ticket files left behind
    assert any("no reply in 1 s" in line for line in result["said"]), result["said"]


def test_forked_jobs_get_their_own_randomness_environment_folder_and_stdio(tmp_path):
    """What a fresh process would have: Python's and numpy's generators seeded anew (two jobs never
    share a stream), the job's environment and folder, stdin at /dev/null, output in its log; its
    exit code reaches the worker."""
    script = textwrap.dedent("""
        import json, os, sys, time
        from engine.jobs.warm_client import WarmStarter
        folder = sys.argv[1]
        warm = WarmStarter(lambda line: None, also=("tests.fake_runner",))
        while warm.waiting():
            time.sleep(0.05)
        out = []
        for n in (1, 2):
            log = os.path.join(folder, f"job-{n}.log")
            job = warm.start(["--job", str(n)], dict(os.environ, JOB_MARKER=f"m{n}"), log, folder)
            while job.poll() is None:
                time.sleep(0.05)
            out.append({"code": job.returncode, "said": json.loads(open(log).read())})
        warm.close()
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert first["code"] == second["code"] == 7
    assert first["said"]["random"] != second["said"]["random"] and first["said"]["numpy"] != second["said"]["numpy"]
    assert [first["said"]["marker"], second["said"]["marker"]] == ["m1", "m2"]
    assert first["said"]["argv"] == ["--job", "1"] and first["said"]["cwd"] == str(tmp_path) and first["said"]["stdin"] == ""


def test_code_changed_on_disk_is_preloaded_again_before_the_next_fork(tmp_path):
    """An update under a running worker (`git pull`, `pip install -U`): a forked job would run the
    code loaded before it, a cold one the new code. The preloaded process sees a loaded file
    changed, that job starts cold, the process loads again, and the jobs after it fork from the
    new code."""
    module = tmp_path / "lib" / "updated_library.py"
    module.parent.mkdir()
    module.write_text("VERSION = 1\n")
    script = textwrap.dedent("""
        import json, os, sys, time
        from engine.jobs.warm_client import WarmStarter
        folder, module = sys.argv[1], sys.argv[2]
        said = []
        warm = WarmStarter(said.append, also=("tests.fake_runner", "updated_library"))
        def ready():
            while warm.waiting():
                time.sleep(0.05)
            return warm.state
        def job(n):
            process = warm.start(["--job", str(n)], dict(os.environ), os.path.join(folder, f"job-{n}.log"), folder)
            if process is None:
                return "cold"
            while process.poll() is None:
                time.sleep(0.05)
            return "warm"
        out = {"first": (ready(), job(1))}
        with open(module, "w") as handle:
            handle.write("VERSION = 2\\n")
        os.utime(module, ns=(time.time_ns(), time.time_ns() + 10**9))
        out["after the update"] = job(2)
        out["then"] = (ready(), job(3))
        out["said"] = said
        warm.close()
        print(json.dumps(out))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(module.parent), str(REPO)]))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(module)], capture_output=True, text=True, cwd=REPO,
                          timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["first"] == ["ready", "warm"] and result["after the update"] == "cold" and result["then"] == ["ready", "warm"]
    assert f"warm start: {module} changed since it was preloaded; preloading again (this job starts cold)" in result["said"]
    assert not list(tmp_path.glob("*.ticket*"))


def test_a_preloaded_process_too_slow_to_import_is_not_waited_for(tmp_path):
    """Imports that hang (a dead network file system, a swapping box): past LOAD_WAIT_S jobs start
    cold, and the worker's stop does not wait for the imports to end."""
    script = textwrap.dedent("""
        import json, time
        import engine.jobs.warm_client as client
        client.LOAD_WAIT_S = 1.0
        said = []
        warm = client.WarmStarter(said.append, also=("tests.slow_import",))
        while warm.waiting():
            time.sleep(0.05)
        began = time.monotonic()
        warm.close()
        print(json.dumps({"state": warm.state, "said": said, "close_s": time.monotonic() - began}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "off" and result["close_s"] < 3
    assert result["said"] == ["warm start off: the preloaded process took over 1 s to import; jobs start cold (each imports torch "
                              "and the libraries itself)"]


def test_a_hung_preloaded_process_costs_one_wait_then_jobs_start_cold(tmp_path):
    """Stopped (SIGSTOP, a debugger) or hung: the job waits REPLY_WAIT_S, then starts cold, and the
    process is ended at once (it would never heed SIGTERM while stopped)."""
    script = textwrap.dedent("""
        import json, os, signal, time
        import engine.jobs.warm_client as client
        client.REPLY_WAIT_S = 1.0
        said = []
        warm = client.WarmStarter(said.append)
        while warm.waiting():
            time.sleep(0.05)
        preloaded = warm.pid()
        os.kill(preloaded, signal.SIGSTOP)
        began = time.monotonic()
        job = warm.start(["--job", "1"], dict(os.environ), os.path.join(os.environ["FOLDER"], "job-1.log"), os.getcwd())
        gone = not os.path.exists(f"/proc/{preloaded}")
        print(json.dumps({"job": job is None, "seconds": time.monotonic() - began, "gone": gone, "said": said[-1], "state": warm.state}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1", FOLDER=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["job"] and result["gone"] and result["state"] == "off" and result["seconds"] < 3
    assert result["said"].startswith("warm start off: the preloaded process could not fork a job (no reply in 1 s)")
    assert not list(tmp_path.glob("*.ticket*"))


def test_a_zombie_orphan_is_found_and_only_it(tmp_path):
    """What reaches the worker as subreaper when a job's own child outlives it: found as a stray,
    never one of the worker's known children."""
    script = textwrap.dedent("""
        import json, os, subprocess, sys, time
        from engine.jobs.procs import become_subreaper, stray_children
        assert become_subreaper()
        known = subprocess.Popen([sys.executable, "-c", "pass"])
        middle = os.fork()
        if middle == 0:
            if os.fork() == 0:
                time.sleep(0.3)
                os._exit(0)
            os._exit(0)
        os.waitpid(middle, 0)
        time.sleep(1.0)  # both have ended by now, neither is reaped: two zombies, one of them known
        strays = stray_children({known.pid})
        for pid in strays:
            os.waitpid(pid, 0)
        print(json.dumps({"strays": len(strays), "after": stray_children({known.pid}), "known": known.poll()}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"strays": 1, "after": [], "known": 0}


def test_forked_job_handle_without_a_child():
    from engine.jobs.warm_client import ForkedJob

    parent = ForkedJob(os.getppid())  # alive, but not ours to wait for
    assert parent.poll() is None
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    handle = ForkedJob(gone.pid)  # already reaped: judged by life
    assert handle.poll() == 1
    handle.send_signal(signal.SIGTERM)  # nothing left to signal: no error


def test_the_switch_reads_like_a_setting():
    from engine.jobs.warm_client import wanted

    assert wanted({}) and wanted({"COPYLORA_WARM_START": "1"}) and wanted({"COPYLORA_WARM_START": " yes "})
    assert not any(wanted({"COPYLORA_WARM_START": v}) for v in ("0", "off", "OFF", "no", "false"))


@pytest.mark.gpu
def test_warm_jobs_train_on_cuda(tmp_path, home):
    """On a GPU box: the preloaded process (whichever tier its probe allowed) forks jobs that train,
    merge and preview on CUDA, with the slot's CUDA_VISIBLE_DEVICES set after the fork."""
    root = small_project(tmp_path, "cuda")
    queue = Queue(home)
    steps = enqueue_project(queue, root, max_steps=6)
    start_detached(home, gpus="0")
    wait_for(lambda: all(queue.get(s.job.id).status in ("done", "failed") for s in steps), what="the jobs")
    stop_worker(home)
    text = worker_log(home)
    logs = "\n".join(queue.log_path(s.job.id).read_text() for s in steps)
    assert [queue.get(s.job.id).status for s in steps] == ["done"] * len(steps), text + logs[-3000:]
    assert text.count(", warm\n") == len(steps), text
    assert "CUDA_VISIBLE_DEVICES=0" in logs and "device: cuda" in logs, logs[-3000:]


def test_status_reads_what_this_worker_said_of_warm_starts(tmp_path):
    from engine.jobs.warm_client import last_said

    log = tmp_path / "worker.log"
    log.write_text("2026-12-05 10:00:00 worker 11 on /s: slots ['cpu']\n"
                   "2026-12-05 10:00:06 warm start: torch, transformers preloaded in 5.4 s (full tier); jobs start from it\n"
                   "2026-12-05 11:00:00 worker 12 on /s: slots ['cpu']\n"
                   "2026-12-05 11:00:01 job #3 (merge of /p) started: pid 40, slot cpu, cold\n")
    assert last_said(log, 12) is None  # the new worker has said nothing yet: not the old one's line
    assert last_said(log, 11) == "warm start: torch, transformers preloaded in 5.4 s (full tier); jobs start from it"
    with log.open("a") as handle:
        handle.write("2026-12-05 11:00:05 warm start: torch preloaded in 3.9 s (base tier); jobs start from it\n"
                     "2026-12-05 11:09:00 warm start off: the preloaded process is gone; jobs start cold (...)\n")
    assert last_said(log, 12) == "warm start off: the preloaded process is gone; jobs start cold (...)"
    assert last_said(tmp_path / "missing.log", 12) is None


def test_ctrl_c_on_a_foreground_worker_stops_it_and_its_warm_job_cleanly(tmp_path, home):
    """`copylora worker start --foreground`, Ctrl-C in its terminal: the signal reaches the worker,
    the preloaded process and the job (one process group). The job checkpoints and goes back to the
    queue, the worker stops, nobody prints a traceback."""
    root = small_project(tmp_path, "fg")
    queue = Queue(home)
    steps = enqueue_project(queue, root, max_steps=400)
    train = steps[0].job
    worker = subprocess.Popen([sys.executable, "-m", "copylora_tui.cli.main", "worker", "start", "--foreground"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: (queue.get(train.id).step or 0) >= 3, what="the training to pass step 3")
        job_pid = queue.get(train.id).pid  # a forked job's command line is the preloaded process' too
        assert Path(f"/proc/{job_pid}/comm").read_text().strip() == f"copylora-{train.id}"  # what top shows
        assert f"#{train.id} train A+B of fg: step " in _status() and f", pid {job_pid}" in _status()
        preloaded = [child for child, command in _children_of(worker.pid).items() if "warm_start" in command and child != job_pid]
        assert len(preloaded) == 1
        os.killpg(worker.pid, signal.SIGINT)
        out, _ = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert worker.returncode == 0 and "Traceback" not in out, out
    assert ", warm\n" in out and "worker stopped" in out
    job = queue.get(train.id)
    assert job.status == "queued", (job.status, out)
    log = queue.log_path(train.id).read_text()
    assert "received SIGINT: stopping at the next step with a checkpoint" in log and "Traceback" not in log
    from engine.jobs.procs import alive

    assert not alive(preloaded[0])


def test_a_worker_killed_while_its_preloaded_process_imports_leaves_no_traceback(tmp_path):
    """kill -9 of the worker while its preloaded process still imported: that process died on a
    BrokenPipeError traceback in the worker's log when it said it was ready."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "engine.jobs.warm_start", "--tier", "base"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.stdout is not None and process.stdin is not None
    process.stdout.close()  # the worker's end of the replies, gone
    process.stdin.close()
    assert process.stderr is not None
    err = process.stderr.read()
    assert process.wait(timeout=120) == 0 and b"Traceback" not in err, err.decode()[-2000:]
