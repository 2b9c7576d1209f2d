"""Warm job starts: a process that has already imported what jobs import, and forks each job
from itself.

Why: every job process used to pay its imports before doing anything: torch, diffusers'
U-Net/VAE and transformers' CLIP took 6 s of CPU on a 2-core box, against 0.2 s for a merge and
~1 s for a preview grid (docs/BENCHMARKS.md, "Warm job starts"). The worker starts this process
once (``python -m engine.jobs.warm_start``), it imports the libraries, and each job is then a
``fork()`` of it: the job starts with its libraries loaded, in milliseconds.

How the job stays the worker's own child: the worker marks itself a *child subreaper*
(``PR_SET_CHILD_SUBREAPER``) and this process forks twice; the middle process exits at once, so
the job is re-parented to the worker, which waits for it, signals it and reads its exit code
exactly as it does a job it started itself. The job's ``PR_SET_PDEATHSIG`` (the runner sets it)
is set only once the worker is its parent, so a worker killed with -9 still stops its jobs.

What must not happen before the fork, and how it is checked:
- CUDA: a process that has touched CUDA cannot hand a working CUDA to a forked child. torch
  marks a child forked after that (``torch.cuda._is_in_bad_fork``). After importing, a probe
  child is forked: if it is in a bad fork (bitsandbytes queries the GPU when it loads, and
  diffusers imports it unless told not to: engine.lean_imports tells it), this process starts
  again with the ``base`` tier (torch and transformers, no diffusers). Each job checks it too
  and, if so, replaces itself with a cold start (``exec``: same pid, the worker sees nothing).
  Nothing here touches CUDA itself.
- Threads: fork copies only the calling thread. OpenMP's pool, or any library's thread, would
  be lost mid-work (and a lock it held, held forever). After importing, the process must have one
  thread; otherwise warm starts are off and the worker says why, naming the threads. (CUDA is
  judged first: the driver starts threads of its own, and its answer is the next tier.)

The protocol is JSON lines on the process's stdin/stdout: first ``{"ready": true, ...}`` or
``{"ready": false, "why": ...}``, then one ``{"pid": N}`` or ``{"error": ...}`` per request.
Anything the libraries print goes to stderr (the worker's log), never into the protocol.

Code updated under a running worker (``git pull``, ``pip install -U``) would not reach a forked job,
which runs what was loaded: before each fork every loaded module's file is compared with its
modification time at loading (~4 000 files, ~13 ms); if one changed, the worker starts that job
cold and this process again.

A job runs only if it takes its *ticket*, a file the worker made for it (renamed away: only one
taker). When a reply is late the worker cancels the ticket and starts the job cold, so a fork that
comes after that exits without running it; if the job took its ticket first, the worker reads
the job's pid from it (the middle process writes it there before the job can take it) and holds
the forked job instead. A job never runs twice.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import signal
import sys
import time
import traceback

# What a job imports, heaviest first. "module:name" also reads the name (diffusers and
# transformers load their classes lazily, on first access).
TIERS: dict[str, tuple[str, ...]] = {
    "full": (
        "torch", "torch._dynamo", "transformers:CLIPTextModel", "transformers:CLIPTokenizer",
        "diffusers:UNet2DConditionModel", "diffusers:AutoencoderKL", "diffusers:EulerAncestralDiscreteScheduler",
        "diffusers:DDPMScheduler", "safetensors.torch", "PIL.Image",
    ),
    # Without diffusers: for a diffusers that imports a CUDA-touching library all the same.
    "base": ("torch", "torch._dynamo", "transformers:CLIPTextModel", "transformers:CLIPTokenizer", "safetensors.torch", "PIL.Image"),
}
# Our own modules: cheap, but each job would import them too.
OWN = ("engine.jobs.runner", "engine.train.trainer", "engine.train.sample", "engine.models.loading", "engine.merge.project_result")
NEXT_TIER = {"full": "base"}
REPARENT_WAIT_S = 2.0
EXIT_ORPHANED = 70  # the worker died between the fork and the job's start: nobody to report to


def cuda_poisoned() -> bool:
    """Whether this process is a child forked after its parent touched CUDA (torch's own flag;
    always False on a build without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    check = getattr(torch.cuda, "_is_in_bad_fork", None)
    return bool(check()) if check is not None else False


def thread_count() -> int:
    """Native threads of this process (Linux), or 1 where that cannot be read."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def thread_names() -> str:
    """The other native threads' names (Linux), for the line that says warm starts are off: which
    library started them is the first thing anyone asks."""
    names = []
    try:
        for task in sorted(os.listdir("/proc/self/task")):
            if int(task) != os.getpid():
                with open(f"/proc/self/task/{task}/comm", encoding="utf-8", errors="replace") as handle:
                    names.append(handle.read().strip())
    except (OSError, ValueError):
        pass
    return ", ".join(names) or "unnamed"


def preload(names: tuple[str, ...], say) -> list[str]:
    """Import ``names``; the ones that could not be imported are said and passed over (the job
    imports them itself, and meets the same error there, in its own log)."""
    loaded = []
    for spec in names:
        module, _, attribute = spec.partition(":")
        try:
            imported = importlib.import_module(module)
            if attribute:
                getattr(imported, attribute)
            loaded.append(spec)
        except Exception as exc:  # noqa: BLE001 - a broken optional library must not stop the worker
            say(f"warm start: could not preload {spec} ({type(exc).__name__}: {str(exc)[:200]})")
    return loaded


def module_files() -> dict[str, int]:
    """Every loaded module's file and its modification time (ns): ~4 000 files after the full tier,
    read in ~13 ms."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.isabs(path):
            try:
                files[path] = os.stat(path).st_mtime_ns
            except OSError:
                pass
    return files


def first_change(files: dict[str, int]) -> str | None:
    """The first of ``files`` changed or gone since it was loaded (``git pull``, ``pip install -U``):
    a forked job would run the old code, where a cold one runs the new."""
    for path, mtime in files.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return path
        except OSError:
            return path
    return None


def probe_poisoned() -> bool:
    """Fork a child that reports whether it may use CUDA."""
    pid = os.fork()
    if pid == 0:  # the probe: nothing but the flag, then gone without running any exit code
        os._exit(1 if cuda_poisoned() else 0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 1


class Server:
    """The preloaded process: reads requests, forks a job for each."""

    def __init__(self, proto_in: int, proto_out: int) -> None:
        self.reader = os.fdopen(proto_in, "r", encoding="utf-8")
        self.proto_out = proto_out
        self.files: dict[str, int] = {}  # what was loaded, as it was on disk (module_files)

    def send(self, message: dict) -> None:
        os.write(self.proto_out, (json.dumps(message) + "\n").encode())

    def serve(self) -> int:
        for line in self.reader:  # ends when the worker closes the pipe (it stopped or died)
            try:
                request = json.loads(line)
                changed = first_change(self.files)
                if changed is not None:  # a job must run the code on disk, as a cold start would
                    self.send({"stale": changed})
                    continue
                self.send({"pid": self.fork_job(request)})
            except Exception as exc:  # noqa: BLE001 - say it; the worker starts this job cold
                self.send({"error": f"{type(exc).__name__}: {exc}"})
        return 0

    def fork_job(self, request: dict) -> int:
        for stream in (sys.stdout, sys.stderr):  # nothing of ours may be written twice
            stream.flush()
        read_end, write_end = os.pipe()
        middle = os.fork()
        if middle == 0:
            try:
                os.close(read_end)
                job = os.fork()
                if job == 0:
                    os.close(write_end)
                    become_job(request, self, os.getppid())  # never returns
                _mark(request["ticket"], job)
                os.write(write_end, str(job).encode())
            finally:
                os._exit(0)  # the job is now an orphan: the kernel hands it to the worker
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reply:
            text = reply.read().decode()
        os.waitpid(middle, 0)
        if not text.strip().isdigit():
            raise OSError("the job process could not be forked")
        return int(text)


def become_job(request: dict, server: Server, middle: int) -> None:
    """In the forked job: wait to be the worker's child, take the job's stdio, environment and
    folder, then run the runner as ``python -m engine.jobs.runner`` would; exit with its code."""
    deadline = time.monotonic() + REPARENT_WAIT_S
    while os.getppid() == middle and time.monotonic() < deadline:
        time.sleep(0.001)
    code = 1
    try:
        if os.getppid() != request["reaper"] or not _take(request["ticket"]):
            os._exit(EXIT_ORPHANED)  # the worker is gone, or gave up on this fork and started the job cold
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any fresh Python process
        os.close(server.proto_out)
        server.reader.close()
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = list(request["argv"])
        if cuda_poisoned():  # a library touched CUDA after the probe: start this job cold
            from engine.jobs.log_line import log_line

            log_line("warm start: CUDA was touched in the preloaded process; this job starts cold")
            os.execv(sys.executable, [sys.executable, "-m", "engine.jobs.runner", *argv])
        _fresh_randomness()
        sys.argv = ["engine.jobs.runner", *argv]
        from engine.jobs.runner import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - as Python would: the traceback in the log, exit 1
        traceback.print_exc()
        code = 1
    finally:
        try:  # what a normal interpreter exit runs (the libraries' and the job's own handlers)
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _mark(ticket: str, pid: int) -> None:
    """Write the job's pid into its ticket, before the job can take it (it waits for this process
    to end): if the reply comes too late, the worker reads the pid there. A ticket the worker has
    cancelled is not made again."""
    try:
        fd = os.open(ticket, os.O_WRONLY)
    except OSError:  # cancelled (or unwritable: then the worker looks for the job among its children)
        return
    try:
        os.write(fd, str(pid).encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def _take(ticket: str) -> bool:
    """Take this job's ticket (engine.jobs.warm_client: the worker cancels it when a fork comes too
    late to be waited for): False if it is gone."""
    try:
        os.rename(ticket, f"{ticket}.taken")
    except FileNotFoundError:
        return False
    os.unlink(f"{ticket}.taken")
    return True


def _fresh_randomness() -> None:
    """A fresh process seeds Python's and numpy's global generators from the OS: so do we, or every
    job would repeat the preloaded process' sequence. (torch's default generator starts from a
    fixed seed in every process, forked or not.)"""
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.warm_start")
    parser.add_argument("--tier", choices=sorted(TIERS), default="full")
    parser.add_argument("--also", action="append", default=[], help="one more module to preload (the tests use it)")
    args = parser.parse_args(argv)

    # Ctrl-C in the terminal of `worker start --foreground` reaches this whole process group: the
    # worker ends this process itself (and a job restores Python's handler, below).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol keeps its own descriptors; fd 1 becomes stderr, so whatever a library prints
    # lands in the worker's log and never in a reply.
    proto_in, proto_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    def say(line: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=sys.stderr, flush=True)

    from engine.quiet import quiet_libraries

    quiet_libraries()
    # torch.cuda.is_available(), which libraries call when they load, then asks NVML instead of
    # the CUDA driver, and so leaves CUDA untouched (the jobs get their own environment).
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    started = time.monotonic()
    from engine.lean_imports import skip_unused_diffusers_integrations

    # diffusers without bitsandbytes: its import touches CUDA on a GPU box, which kept diffusers
    # out of the preloaded libraries there (the base tier); the jobs import it when they need it.
    skip_unused_diffusers_integrations()
    loaded = preload(TIERS[args.tier] + tuple(args.also), say)
    loaded += preload(OWN, say)
    seconds = time.monotonic() - started
    server = Server(proto_in, proto_out)
    why = ""
    # CUDA before threads: the driver starts threads of its own when a library touches it, and
    # the answer to that is the next tier (an H100 said "3 threads were running" and warm starts
    # went off, where the base tier would have run).
    if "torch" not in loaded:
        why = "torch could not be imported"
    elif probe_poisoned():
        following = NEXT_TIER.get(args.tier)
        if following is not None:
            say(f"warm start: importing the {args.tier} tier touched CUDA; starting again with the {following} tier")
            sys.stdout.flush()
            os.dup2(proto_in, 0)  # the new process reads and writes the protocol as this one did
            os.dup2(proto_out, 1)
            os.execv(sys.executable, [sys.executable, "-m", "engine.jobs.warm_start", "--tier", following,
                                      *[f"--also={name}" for name in args.also]])
        why = f"importing the {args.tier} tier touched CUDA"
    elif thread_count() > 1:
        why = f"{thread_count()} threads were running after the imports ({thread_names()}; a fork keeps only one)"
    if why:
        server.send({"ready": False, "why": why})
        return 0
    server.files = module_files()
    modules = list(dict.fromkeys(spec.split(":")[0].split(".")[0] for spec in loaded))
    server.send({"ready": True, "tier": args.tier, "seconds": round(seconds, 2), "modules": modules})
    return server.serve()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the worker went (killed while this imported): nobody to serve, nothing to say
        sys.exit(0)
