"""The worker daemon: claims queued jobs and runs each in a child process, one per GPU slot.

It is started detached (own session, output to ``worker.log``), holds an exclusive lock on
``worker.lock`` (one worker per state folder), and keeps running when the app closes or SSH
drops. Its loop is plain: reap finished children, pass cancel/pause orders on as SIGTERM
(the child checkpoints and exits), fill free slots, sample the GPUs, beat its heart.

On start it recovers: a job still marked running whose process is gone (reboot, kill -9)
goes back to the head of the queue and resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CopyloraError, InputError
from engine.files import take_lock
from engine.jobs.log_line import log_line
from engine.jobs.procs import alive, process_start, stray_children
from engine.jobs.queue import JobStatus, Queue, QueueWriteError
from engine.jobs.state_home import state_home, worker_lock, worker_log, working_folder
from engine.jobs.warm_client import ForkedJob, WarmStarter
from engine.threads import JOBS_VARIABLE

POLL_S = 0.2
GPU_SAMPLE_S = 1.0  # while jobs run: the app's GPU panel follows them
GPU_IDLE_SAMPLE_S = 10.0  # with none: an idle worker wrote the state folder every second (~350 MB a day)
HEARTBEAT_S = 10.0  # only `worker status` reads it ("heartbeat 3.2 s ago"); the Slurm loop wrote it five times a second
STRAYS_S = 10.0  # how often to look for a job's orphaned children that ended (zombies) to reap
DISK_WAIT_S = 5.0  # while the queue's disk is full: how often to try again
HOME_CHECK_S = 2.0  # how often to check that the state folder is still this worker's (check_home)
STOP_GRACE_S = 120.0  # a stopping child gets this long to write its checkpoint


class WorkerRunning(CopyloraError):
    pass


@dataclass
class Running:
    job_id: int
    slot: str | None
    process: subprocess.Popen | ForkedJob
    signalled: bool = False


def lock_worker(home: Path):
    """The exclusive lock that makes this the only worker of ``home`` (released when the
    process dies, however it dies)."""
    handle, held_by = take_lock(worker_lock(home), str(os.getpid()))
    if handle is None:
        raise WorkerRunning(f"a worker is already running on {home} (pid {held_by or '?'}); `copylora worker status` shows it")
    return handle


def worker_pid(home: Path) -> int | None:
    """The running worker's pid, or None (the lock is the truth, not the database row)."""
    path = worker_lock(home)
    if not path.exists():
        return None
    try:
        handle = open(path, "a+")
    except PermissionError:  # another user's worker (a COPYLORA_HOME that is theirs): a look needs no writing
        handle = open(path)
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def last_worker_error(home: Path, started_at: float | None = None) -> str | None:
    """The error the last worker died of, from the end of its log: a traceback with no line of
    the worker's (they are timestamped) after it; None when it stopped as asked, lived on after a
    traceback (a thread's, a preloaded process's), or its log says nothing. ``started_at``: when
    the last worker started (the queue's worker row): a log not written since is an older one's (a
    worker in the foreground logs to its terminal). `worker status` and the app said only "not
    running" of a worker that had died, the reason in worker.log alone."""
    from engine.jobs.state_home import worker_log

    try:
        with open(worker_log(home), "rb") as handle:
            if started_at is not None and os.fstat(handle.fileno()).st_mtime < started_at - 1:
                return None
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 65536))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    lines = [line for line in lines if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts or any(_LOGGED.match(line) for line in lines[starts[-1]:]):
        return None
    # the exception's own line: the first after the traceback's indented frames
    last = next((line.strip() for line in lines[starts[-1] + 1:] if not line.startswith((" ", "\t"))), "")
    return (last if len(last) <= 300 else last[:297] + "...") or None


_LOGGED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")  # a line of the worker's own (Worker.log)


def _code_note(home: Path) -> Path:
    return home / "worker-code.json"


OWN_PACKAGES = ("engine", "copylora_tui")


def note_worker_code(home: Path) -> None:
    """This worker's own code as it started: each copylora module it loaded and its modification
    time, for :func:`worker_code_change` (advisory: a disk that refuses it costs only that)."""
    import json

    from engine.files import write_text_atomic
    from engine.jobs.warm_start import module_files

    mine = {getattr(module, "__file__", None) for name, module in list(sys.modules.items()) if name.split(".")[0] in OWN_PACKAGES}
    files = {path: mtime for path, mtime in module_files().items() if path in mine}  # an editable clone or site-packages alike
    try:
        write_text_atomic(_code_note(home), json.dumps({"pid": os.getpid(), "files": files}))
    except OSError:
        pass


def worker_code_change(home: Path, pid: int | None) -> str | None:
    """The first of the running worker's own files changed since it started (a ``git pull`` or
    ``pip install -U`` under it), or None: the worker loop then runs the code of before the update
    (its jobs start with the new), so `worker status` and the app say to restart it."""
    import json

    from engine.jobs.warm_start import first_change

    if not pid:
        return None
    try:
        note = json.loads(_code_note(home).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or note.get("pid") != pid or not isinstance(note.get("files"), dict):
        return None
    changed = first_change(note["files"])
    if changed is None:
        return None
    parts = Path(changed).parts  # shown from its package on: engine/jobs/queue.py
    starts = [i for i, part in enumerate(parts) if part in OWN_PACKAGES]
    return str(Path(*parts[starts[-1]:])) if starts else changed


RESTART_HINT = "`copylora worker stop && copylora worker start` runs the new (running jobs checkpoint and continue)"


def parse_gpus(spec: str | None) -> list[str | None]:
    """``--gpus 0,1`` → ["0", "1"]; none given → all GPUs torch would see, else one CPU slot.

    Counted with NVML, not torch, so the daemon never imports torch itself."""
    if spec:
        return [g.strip() for g in spec.split(",") if g.strip()]
    from engine.jobs.gpu import sample_gpus

    gpus = sample_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()] or [None]
    return [str(g["index"]) for g in gpus] or [None]


def gpus_problem(spec: str | None) -> str | None:
    """Why ``--gpus`` names no GPU a job could run on, or None. Each entry becomes a job's
    CUDA_VISIBLE_DEVICES: an index NVML counts, or a GPU-/MIG- UUID. A GPU that is not there
    used to be accepted, and its jobs trained on the CPU without a word."""
    if spec is None:
        return None
    entries = [g.strip() for g in spec.split(",")]
    if not any(entries):
        return "give GPU indices such as 0 or 0,1 (or leave out --gpus to use every GPU)"
    from engine.jobs.gpu import sample_gpus

    count = len(sample_gpus())
    for entry in entries:
        if entry.startswith(("GPU-", "MIG-")):
            continue
        if not entry.isdigit():
            return f"{entry!r} is not a GPU index (0, 1, …) or a GPU-/MIG- UUID"
        if count == 0:
            return "no NVIDIA GPU is visible here (NVML found none): leave out --gpus, and jobs run on the CPU"
        if int(entry) >= count:
            return f"there is no GPU {entry}: NVML sees {count} (0–{count - 1})"
    if len(set(entries)) != len(entries):
        return f"a GPU is named twice in {spec!r}: use --per_gpu for several jobs on one GPU"
    return None


class Worker:
    def __init__(self, home: str | Path | None = None, gpus: str | None = None, per_gpu: int = 1, slurm=None) -> None:
        """``slurm``: engine.jobs.slurm.SlurmOptions to run every job as a Slurm job (else each in a
        child process here, one per GPU slot)."""
        self.home = state_home(home)
        self._beat_at = float("-inf")  # the last heartbeat written (time.monotonic)
        self.slurm = None
        if slurm is not None:
            from engine.jobs.slurm_jobs import SlurmJobs

            self.slurm = SlurmJobs(self.home, slurm, self.log)
        self.slots = ["slurm"] if slurm is not None else [gpu for gpu in parse_gpus(gpus) for _ in range(max(1, per_gpu))]
        self.running: dict[int, Running] = {}
        self.stopping = False
        self.warm: WarmStarter | None = None
        self._disk_said = -60.0  # when the last "queue disk full" line was logged (once a minute at most)

    def log(self, line: str) -> None:
        log_line(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}")  # a full disk costs the line, not the worker

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        lock = lock_worker(self.home)
        queue = Queue(self.home)
        queue.on_skipped_write = self.log
        signal.signal(signal.SIGTERM, self._ask_stop)
        signal.signal(signal.SIGINT, self._ask_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal must not take the daemon with it
        queue.worker_started(os.getpid(), [s or "cpu" for s in self.slots], len(self.slots))
        self.log(f"worker {os.getpid()} on {self.home}: slots {[s or 'cpu' for s in self.slots]}")
        note_worker_code(self.home)
        try:
            if self.slurm is not None:
                return self.run_slurm(queue, lock)
            self.recover(queue)
            self.warm = WarmStarter(self.log)
            last_sample = last_strays = last_home = 0.0
            while not self.stopping:
                if time.monotonic() - last_home >= HOME_CHECK_S:
                    self.check_home(lock)
                    last_home = time.monotonic()
                try:
                    self.reap(queue)
                    self.pass_orders(queue)
                    self.fill_slots(queue)
                except QueueWriteError as exc:  # a full disk under the queue: running jobs go on; wait for space
                    self.wait_for_disk(exc)
                    continue
                if time.monotonic() - last_sample >= (GPU_SAMPLE_S if self.running else GPU_IDLE_SAMPLE_S):
                    self.sample(queue)
                    last_sample = time.monotonic()
                if self.warm.subreaper and time.monotonic() - last_strays >= STRAYS_S:
                    self.reap_strays()
                    last_strays = time.monotonic()
                time.sleep(POLL_S)
            self.shutdown(queue)
        finally:
            if self.warm is not None:
                self.warm.close()
            try:
                queue.worker_stopped(os.getpid())
            except QueueWriteError as exc:  # the next `worker status` sees this pid gone all the same
                self.log(str(exc))
            lock.close()
        self.log("worker stopped")
        return 0

    def run_slurm(self, queue: Queue, lock) -> int:
        """The loop with the Slurm executor: its jobs live on the cluster, not here, so stopping
        the worker leaves them running; the next worker follows them again."""
        assert self.slurm is not None
        self.slurm.recover(queue)
        while not self.stopping:
            self.check_home(lock)
            try:
                self.slurm.step(queue)
            except QueueWriteError as exc:  # as in run(): the cluster's jobs go on; what they said is read again later
                self.wait_for_disk(exc)
                continue
            self.beat(queue)
            time.sleep(POLL_S)
        try:
            self.slurm.stop(queue)
        except QueueWriteError as exc:  # its Slurm id not recorded: the next worker looks the job up by its name
            self.log(f"stopping: {exc}")
        if self.slurm.tracked:
            self.log(f"{len(self.slurm.tracked)} Slurm job(s) keep running; the next worker follows them")
        return 0

    def check_home(self, lock) -> None:
        """Stop when the state folder is no longer this worker's: its lock file removed or
        replaced (`rm -rf ~/.local/state/copylora` to start afresh). Such a worker went on with
        the removed queue, unseen by `worker status`, holding its preloaded process, while
        `copylora run` started a second worker for the new one."""
        try:
            here = os.stat(worker_lock(self.home))
            held = os.fstat(lock.fileno())
            ours = (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)
        except OSError:
            ours = False
        if not ours:
            self.log(f"the state folder {self.home} was removed or replaced: this worker stops (its running jobs checkpoint); "
                     "`copylora worker start` starts one for the new folder")
            self.stopping = True

    def wait_for_disk(self, exc: QueueWriteError) -> None:
        """Said once a minute at most; nothing is lost meanwhile: a job that ended is recorded on
        a later pass (it stays held until then), a queued one starts once its claim can be written."""
        if time.monotonic() - self._disk_said >= 60.0:
            self._disk_said = time.monotonic()
            self.log(f"{exc}; waiting for space (running jobs go on)")
        deadline = time.monotonic() + DISK_WAIT_S
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(POLL_S)

    def _ask_stop(self, signum, _frame) -> None:
        self.log(f"{signal.Signals(signum).name}: stopping; running jobs checkpoint and go back to the queue")
        self.stopping = True

    def recover(self, queue: Queue) -> None:
        """Jobs left 'running' by a worker that died: stop any orphan still alive, then requeue."""
        for job in queue.jobs((JobStatus.RUNNING,)):
            if job.slurm and job.slurm.get("id") and job.slurm.get("state") != "ENDED":
                # On the cluster, whatever this worker is: requeued here it ran twice (here it
                # failed on the side's lock, and its dependants with it; on Slurm it trained on untracked).
                self.log(f"job #{job.id} ({job.label}) runs as Slurm job {job.slurm['id']}: left to it; a worker with "
                         "--executor slurm follows it")
                continue
            if job.pid is not None and alive(job.pid, job.pid_start):
                self.log(f"job #{job.id}: its process {job.pid} outlived the last worker; stopping it")
                os.kill(job.pid, signal.SIGTERM)
                deadline = time.monotonic() + STOP_GRACE_S
                while alive(job.pid, job.pid_start) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if alive(job.pid, job.pid_start):
                    os.kill(job.pid, signal.SIGKILL)
                job = queue.get(job.id)  # it may have recorded its own end meanwhile (done in its final save)
                if job.status is not JobStatus.RUNNING:
                    self.log(f"job #{job.id} ({job.label}) ended {job.status} as it stopped")
                    continue
            if job.control in ("cancel", "pause"):
                # ordered just before the last worker died (before it passed the order on, or
                # while the job wrote its stop checkpoint): the requeue wiped it, and the job trained to its end
                ended = queue.end_as_ordered(job.id, job.control)
                self.log(f"job #{job.id} ({job.label}) was running when the last worker ended, with a {job.control} order: {ended}")
                continue
            queue.requeue_at_head(job.id, None)
            self.log(f"job #{job.id} ({job.label}) was running when the last worker ended: queued first, it resumes from its checkpoint")

    def fill_slots(self, queue: Queue) -> None:
        if self.warm is not None and self.warm.waiting():  # its imports are the job's own: worth waiting for
            return
        busy = [r.slot for r in self.running.values()]
        for slot in self.slots:
            if slot in busy:
                busy.remove(slot)
                continue
            job = queue.claim(slot)
            if job is None:
                return
            self.start(queue, job, slot)

    def start(self, queue: Queue, job, slot: str | None) -> None:
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        # Every slot's job shares this machine's cores: each job sizes its torch threads to its
        # share (engine/threads.py), so two jobs never fight over the same cores.
        env[JOBS_VARIABLE] = str(len(self.slots))
        log_path = queue.log_path(job.id)
        argv = ["--home", str(self.home), "--job", str(job.id)]
        process: subprocess.Popen | ForkedJob | None = None
        cwd = working_folder(self.home, self.log)
        if self.warm is not None:
            process = self.warm.start(argv, env, log_path, cwd, known={run.process.pid for run in self.running.values()})
        how = "warm" if process is not None else "cold"
        if process is None:
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "engine.jobs.runner", *argv],
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                )
        self.running[job.id] = Running(job.id, slot, process)  # held before any write: a full disk must not lose it
        queue.set_pid(job.id, process.pid, process_start(process.pid))
        self.log(f"job #{job.id} ({job.label} of {job.project}) started: pid {process.pid}, slot {slot or 'cpu'}, {how}")

    def reap_strays(self) -> None:
        """Reap the zombies that reach the worker as subreaper: children of a job that ended
        before them (the jobs themselves and the preloaded process are reaped where they are held)."""
        known = {run.process.pid for run in self.running.values()}
        preloaded = self.warm.pid() if self.warm is not None else None
        if preloaded is not None:
            known.add(preloaded)
        for pid in stray_children(known):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def reap(self, queue: Queue) -> None:
        for job_id, run in list(self.running.items()):
            code = run.process.poll()
            if code is None:
                continue
            self.record_exit(queue, job_id, code)  # a QueueWriteError leaves the job held: recorded on a later pass
            del self.running[job_id]

    def record_exit(self, queue: Queue, job_id: int, code: int) -> None:
        """What a job that exited with ``code`` becomes, unless it recorded that itself."""
        job = queue.get(job_id)
        if job.status is not JobStatus.RUNNING:  # the child recorded done/failed itself
            self.log(f"job #{job_id} {job.status}")
            return
        if code == 3:  # stopped on request: the order decides where it goes
            order = job.control
            if order == "cancel":
                queue.finish(job_id, JobStatus.CANCELLED, error="cancelled by the user (checkpoint kept: `copylora retry` resumes it)")
            elif order == "pause":
                queue.finish(job_id, JobStatus.PAUSED)
            else:
                queue.requeue_at_head(job_id, None)
            self.log(f"job #{job_id} stopped ({order or 'worker shutdown'})")
            return
        reason = f"exit code {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        if code == -signal.SIGKILL:
            reason += " (out of memory? see the job log)"
        queue.finish(job_id, JobStatus.FAILED, error=f"the job process died ({reason}); last lines in {queue.log_path(job_id)}")
        self.log(f"job #{job_id} died: {reason}")

    def pass_orders(self, queue: Queue) -> None:
        for job_id, run in self.running.items():
            if run.signalled:
                continue
            job = queue.get(job_id)
            if job.control in ("cancel", "pause"):
                run.process.send_signal(signal.SIGTERM)
                run.signalled = True
                self.log(f"job #{job_id}: {job.control} → SIGTERM")

    def sample(self, queue: Queue) -> None:
        from engine.jobs.gpu import sample_gpus

        samples = sample_gpus()
        if samples:
            queue.record_gpus(samples)
        self.beat(queue)

    def beat(self, queue: Queue) -> None:
        """The heartbeat, at most every HEARTBEAT_S: each one is a write of the state folder."""
        if time.monotonic() - self._beat_at >= HEARTBEAT_S:
            queue.heartbeat()
            self._beat_at = time.monotonic()

    def shutdown(self, queue: Queue) -> None:
        for run in self.running.values():
            run.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.running and time.monotonic() < deadline:
            self._reap_if_possible(queue)
            time.sleep(POLL_S)
        for run in self.running.values():  # past the grace period
            run.process.kill()
        self._reap_if_possible(queue)

    def _reap_if_possible(self, queue: Queue) -> None:
        """At shutdown the disk may still be full: what is not recorded stays "running" in the
        queue, and the next worker puts it back at the head (recover())."""
        try:
            self.reap(queue)
        except QueueWriteError as exc:
            self.log(f"{exc}; unrecorded jobs go back to the queue when a worker starts again")
            self.running = {job_id: run for job_id, run in self.running.items() if run.process.poll() is None}  # the ended ones: let go


# ---------------------------------------------------------------------- daemon control


def start_detached(home: str | Path | None = None, gpus: str | None = None, per_gpu: int = 1, wait_s: float = 10.0,
                   executor: list[str] | None = None) -> int:
    """Start the worker in its own session (it survives this terminal and SSH), return its pid.
    ``executor``: the worker's executor arguments (``--executor slurm --partition gpu …``); none:
    the state folder's ``worker.toml``, else local."""
    home = state_home(home)
    existing = worker_pid(home)
    if existing:
        raise WorkerRunning(f"a worker is already running on {home} (pid {existing})")
    log_path = worker_log(home)
    if log_path.exists() and log_path.stat().st_size > 8 * 2**20:
        log_path.replace(log_path.with_suffix(".log.1"))
    command = [sys.executable, "-m", "engine.jobs.worker", "--home", str(home), "--per-gpu", str(per_gpu)]
    if gpus:
        command += ["--gpus", gpus]
    command += executor or []
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=working_folder(home, move=False),  # typed in a removed folder: the state folder
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if worker_pid(home) == process.pid:
            # Reaped when it ends: a long-lived starter (the app) kept every worker it started and
            # that stopped since as a zombie until it exited.
            threading.Thread(target=process.wait, name="worker-reaper", daemon=True).start()
            return process.pid
        if process.poll() is not None:
            other = worker_pid(home)
            if other:  # another client's worker took the lock first: one runs, as asked
                raise WorkerRunning(f"a worker is already running on {home} (pid {other})")
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise CopyloraError(f"the worker exited at start (code {process.returncode}): {' | '.join(tail)}")
        time.sleep(0.05)
    raise CopyloraError(f"the worker did not start within {wait_s:.0f} s; see {log_path}")


def ensure_running(home: str | Path | None = None) -> tuple[int, bool]:
    """(pid, started_now): start the worker if none runs on this state folder."""
    pid = worker_pid(state_home(home))
    if pid:
        return pid, False
    _check_slurm_settings(state_home(home))
    try:
        return start_detached(home), True
    except WorkerRunning:  # another client started it a moment ago
        return worker_pid(state_home(home)) or -1, False


def _check_slurm_settings(home: Path) -> None:
    """worker.toml's Slurm settings, asked of Slurm before a worker starts on them (sbatch
    --test-only): `copylora run` with a partition Slurm has not said "worker started", then
    every job failed, one by one. Where Slurm cannot answer now, the worker starts all the same."""
    parser = argparse.ArgumentParser()
    add_executor_arguments(parser)
    options = slurm_options(home, parser.parse_args([]))
    if options is None:
        return
    from engine.errors import InputError
    from engine.jobs.slurm import SlurmError, test_options

    try:
        test_options(options)
    except SlurmError as exc:
        if not exc.temporary:
            raise InputError(f"the worker was not started: Slurm refuses the settings of {home / 'worker.toml'}: {exc}") from None


def stop_worker(home: str | Path | None = None, wait_s: float = STOP_GRACE_S + 10) -> int | None:
    """SIGTERM the worker; it checkpoints running jobs, requeues them, and exits."""
    home = state_home(home)
    pid = worker_pid(home)
    if not pid or pid < 0:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        from engine.errors import InputError

        raise InputError(f"the worker on {home} (pid {pid}) is another user's ({_owner(pid)}): only they, or root, can stop it") from None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and worker_pid(home):
        time.sleep(0.1)
    return pid


def _owner(pid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
    except (OSError, KeyError, ImportError):
        return "another user"


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """The executor's options, the same for ``copylora worker start`` and ``python -m engine.jobs.worker``."""
    parser.add_argument("--executor", choices=("local", "slurm"),
                        help="local: jobs run here, one per GPU slot; slurm: each job is one Slurm job (sbatch). "
                             "Default: [worker] executor of $COPYLORA_HOME/worker.toml, else local")
    parser.add_argument("--partition", help="Slurm partition")
    parser.add_argument("--gres", help='Slurm generic resources per job (default "gpu:1"; "" for none)')
    parser.add_argument("--time", help="Slurm time limit per job (e.g. 04:00:00); the runner checkpoints 2 minutes before it")
    parser.add_argument("--account", help="Slurm account")
    parser.add_argument("--qos", help="Slurm quality of service")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG", dest="sbatch_arg",
                        help="one more sbatch argument, as sbatch takes it (repeatable): --sbatch-arg=--mem=32G")


def executor_argv(args: argparse.Namespace) -> list[str]:
    """Parsed executor options back into arguments, for the detached worker."""
    argv = [] if args.executor is None else ["--executor", args.executor]
    for name in ("partition", "gres", "time", "account", "qos"):
        if getattr(args, name) is not None:
            argv += [f"--{name}", getattr(args, name)]
    return argv + [f"--sbatch-arg={arg}" for arg in args.sbatch_arg]


def slurm_options(home: Path, args: argparse.Namespace):
    """The Slurm options these arguments and the state folder's ``worker.toml`` ([worker]) ask
    for, or None for the local executor. Arguments win over the file."""
    import tomllib

    from engine.jobs.slurm import SlurmOptions
    from engine.toml_text import decode_toml

    path = Path(home) / "worker.toml"
    config: dict = {}
    if path.is_file():
        try:
            config = tomllib.loads(decode_toml(path.read_bytes())).get("worker", {})  # a BOM is dropped; Shift-JIS is named
        except (OSError, tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:  # ValueError: a 5000-digit number
            raise InputError(f"{path}: {exc}") from None
        _check_worker_toml(path, config)
    executor = args.executor or config.get("executor", "local")
    if executor not in ("local", "slurm"):
        raise InputError(f"{path}: [worker] executor must be \"local\" or \"slurm\", got {executor!r}")
    if executor == "local":
        return None
    options = SlurmOptions()
    for name in ("partition", "gres", "time", "account", "qos"):
        value = getattr(args, name) if getattr(args, name) is not None else config.get(name)
        if value is not None:
            setattr(options, name, str(value))
    options.sbatch_args = list(config.get("sbatch_args", [])) + list(args.sbatch_arg)
    if "signal_lead_s" in config:  # the runner's warning before the time limit (default 120 s)
        options.signal_lead_s = int(config["signal_lead_s"])
    return options


_WORKER_KEYS = ("executor", "partition", "gres", "time", "account", "qos", "sbatch_args", "signal_lead_s")


def _check_worker_toml(path: Path, config) -> None:
    """``[worker]`` as the README documents it, or one error naming every key at fault (an
    InputError: a usage error, exit 2, as a wrong flag is). A typo
    (``partiton``) was ignored without a word, a string as ``sbatch_args`` became one argument per
    character, and a number where a name goes reached sbatch as ``--partition=['a']``; a table
    or a word where a number goes stopped the worker with a traceback in its log."""
    if not isinstance(config, dict):
        raise InputError(f"{path}: [worker] must be a table of settings, got {config!r}")
    problems = []
    if unknown := sorted(set(config) - set(_WORKER_KEYS)):
        problems.append(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(_WORKER_KEYS)})")
    for name in ("executor", "partition", "gres", "time", "account", "qos"):
        value = config.get(name)
        if value is not None and not isinstance(value, str) and not (name == "time" and _whole(value)):
            problems.append(f"{name} must be a string{' (or whole minutes)' if name == 'time' else ''}, got {value!r}")
    arguments = config.get("sbatch_args", [])
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        problems.append(f'sbatch_args must be a list of strings (e.g. ["--mem=32G"]), got {arguments!r}')
    lead = config.get("signal_lead_s", 0)
    if not _whole(lead) and lead != 0:
        problems.append(f"signal_lead_s must be whole seconds, 0 or more, got {lead!r}")
    if problems:
        raise InputError(f"{path}: [worker] " + "; ".join(problems))


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**7


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.worker", description="Run the copylora worker in the foreground.")
    parser.add_argument("--home")
    parser.add_argument("--gpus")
    parser.add_argument("--per-gpu", type=int, default=1)
    add_executor_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return Worker(args.home, args.gpus, args.per_gpu, slurm=slurm_options(state_home(args.home), args)).run()
    except WorkerRunning as exc:
        print(f"copylora worker: {exc}", file=sys.stderr)
        return 2
    except CopyloraError as exc:
        print(f"copylora worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
