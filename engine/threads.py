"""How many CPU threads torch may use in this process, and keeping to it while other work comes and goes.

Why this exists: torch's CPU kernels run on an OpenMP pool as wide as the machine. When any
other process wants a core (a second job, a foreground ``copylora sample``, a compiler), one of
the pool's threads is descheduled and every parallel region waits at its barrier for it: on a
2-core box a tiny-model step went from 0.17 s to 4–7 s (issue 29; docs/BENCHMARKS.md, "Threads").
One thread fewer than the cores that are really free costs little; one thread more costs 10–50×.

So each process that does torch work chooses its width itself, before torch loads:
``cores available to it ÷ jobs the worker runs at once``, less the cores that other work keeps
busy right now (sampled from ``/proc/stat``), at least 1. ``COPYLORA_THREADS`` or
``OMP_NUM_THREADS`` set by the user wins and is never changed. While a job runs, ``ThreadGovernor``
re-reads the load every few seconds from the training loop's own thread (OpenMP's thread count is
per calling thread) and narrows or widens the pool as other work starts and stops.

Torch-free: the worker, the CLI and the runner call this before anything imports torch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping, MutableMapping

# The variables the OpenMP/MKL/BLAS runtimes read when they load. We set them all to the choice.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Set beside OMP_NUM_THREADS when *we* chose the value, so that a child process (the worker a CLI
# command starts, the job a worker starts) can tell our choice from the user's and choose again.
AUTO_MARK = "COPYLORA_THREADS_AUTO"
# The worker tells each job how many jobs it may run at once (they share the CPU's cores).
JOBS_VARIABLE = "COPYLORA_JOBS_AT_ONCE"
GOVERN_EVERY_S = 5.0
# A core counts as free for a new thread only if at least this much of it is idle: a half-busy
# core is not worth a thread that would make every barrier wait for it.
FREE_MARGIN = 0.3


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    explicit: bool  # the user's value: never changed while the process runs
    cores: int
    jobs: int
    busy: float | None  # cores kept busy by other work when chosen (None: not measured)

    def describe(self) -> str:
        if self.explicit:
            return f"threads: {self.threads} (set by the environment: {explicit_source()})"
        parts = [f"{self.cores} core{'s' if self.cores != 1 else ''} available"]
        if self.jobs > 1:
            parts.append(f"÷ {self.jobs} jobs at once")
        if self.busy is not None:
            parts.append(f"{self.busy:.1f} busy with other work")
        return f"threads: {self.threads} ({', '.join(parts)}; COPYLORA_THREADS=N sets it)"


def explicit_source(environ: Mapping[str, str] | None = None) -> str | None:
    """Which variable holds the user's own thread count, or None when the choice is ours."""
    environ = os.environ if environ is None else environ
    if environ.get("COPYLORA_THREADS", "").strip():
        return "COPYLORA_THREADS"
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp and environ.get(AUTO_MARK) != omp:
        return "OMP_NUM_THREADS"
    return None


def _explicit_count(environ: Mapping[str, str]) -> int | None:
    source = explicit_source(environ)
    if source is None:
        return None
    text = environ[source].strip()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        # Not worth failing a training over: say it once and choose as if it were unset.
        print(f"copylora: ignoring {source}={text!r} (not a whole number ≥ 1)", file=sys.stderr)
        return None
    return value


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """A container's CPU quota in cores (docker --cpus, Kubernetes limits, Slurm's cgroups), or None."""
    try:  # cgroup v2: "max 100000" or "150000 100000"
        limit, interval = open(os.path.join(root, "cpu.max")).read().split()[:2]
        return None if limit == "max" else int(limit) / int(interval)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(open(os.path.join(root, "cpu", "cpu.cfs_quota_us")).read())
        period = int(open(os.path.join(root, "cpu", "cpu.cfs_period_us")).read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cores_available() -> int:
    """Cores this process may run on: its affinity mask (taskset, Slurm's cpusets), capped by a
    cgroup quota. Not os.cpu_count(), which counts the whole machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


class CpuUse:
    """Cores busy with *other* work since the last reading: the machine's busy time (/proc/stat)
    less this process's own CPU time. Linux only; elsewhere ``busy()`` answers None."""

    def __init__(self) -> None:
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as handle:
                fields = [int(x) for x in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
        own = os.times()
        return time.monotonic(), busy / self._ticks, own.user + own.system

    def busy(self) -> float | None:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] < 0.05:
            return None
        wall = now[0] - last[0]
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / wall)


def sample_busy(seconds: float = 0.3) -> float | None:
    use = CpuUse()
    time.sleep(seconds)
    return use.busy()


def choose_threads(jobs: int = 1, environ: Mapping[str, str] | None = None, *, cores: int | None = None,
                   busy: float | None = None) -> ThreadChoice:
    """The width for one job: the user's value if set, else cores ÷ jobs, less the cores other work
    keeps busy, at least 1."""
    environ = os.environ if environ is None else environ
    cores = cores_available() if cores is None else cores
    jobs = max(1, jobs)
    explicit = _explicit_count(environ)
    if explicit is not None:
        return ThreadChoice(explicit, True, cores, jobs, None)
    threads = max(1, cores // jobs)
    if busy is not None:
        free = cores - busy
        threads = max(1, min(threads, math.floor(free + FREE_MARGIN)))
    return ThreadChoice(threads, False, cores, jobs, busy)


def jobs_at_once(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        return max(1, int(environ.get(JOBS_VARIABLE, "1")))
    except ValueError:
        return 1


def export(choice: ThreadChoice, environ: MutableMapping[str, str] | None = None) -> None:
    """Put the choice where OpenMP, MKL and BLAS read it when torch loads (and torch, if loaded)."""
    environ = os.environ if environ is None else environ
    # OMP_NUM_THREADS set by the user is already where the runtimes read it; COPYLORA_THREADS is
    # read by no runtime, so it is copied like our own choice (but not marked as ours).
    if explicit_source(environ) != "OMP_NUM_THREADS":
        for name in THREAD_VARIABLES:
            environ[name] = str(choice.threads)
        if not choice.explicit:
            environ[AUTO_MARK] = str(choice.threads)
    torch = sys.modules.get("torch")
    if torch is not None and environ is os.environ:
        torch.set_num_threads(choice.threads)


def configure_threads(jobs: int | None = None, *, sample_s: float = 0.3, log: Callable[[str], None] | None = None) -> ThreadChoice:
    """Choose this process's width (measuring the load for ``sample_s``), export it, and set up the
    process's governor (``govern()``), which says its changes through ``log``. Call it before torch
    is imported; the runner and the CLI's working commands do."""
    global _governor
    jobs = jobs_at_once() if jobs is None else jobs
    busy = None if explicit_source() else sample_busy(sample_s)
    choice = choose_threads(jobs, busy=busy)
    export(choice)
    _governor = ThreadGovernor(choice, log)
    return choice


def govern() -> None:
    """Called from the working thread's progress callbacks: see ``ThreadGovernor``."""
    if _governor is not None:
        _governor.tick()


class ThreadGovernor:
    """Keeps an automatic choice right while the process runs. ``tick()`` is cheap (a clock read)
    and is called from the working thread's progress callback; every ``every_s`` it re-reads the
    load and, if the right width changed, sets torch's and says so through ``log``."""

    def __init__(self, choice: ThreadChoice, log: Callable[[str], None] | None = None, *, every_s: float = GOVERN_EVERY_S,
                 use: CpuUse | None = None, set_threads: Callable[[int], None] | None = None) -> None:
        self.choice = choice
        self.threads = choice.threads
        self.log = log
        self.every_s = every_s
        self.use = use if use is not None else (None if choice.explicit else CpuUse())
        self._set = set_threads
        self._next = time.monotonic() + every_s
        self.changes = 0

    def tick(self) -> None:
        if self.choice.explicit or self.use is None or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        busy = self.use.busy()
        if busy is None:
            return
        wanted = choose_threads(self.choice.jobs, {}, cores=self.choice.cores, busy=busy).threads
        if wanted == self.threads:
            return
        (self._set or _set_torch_threads)(wanted)
        if self.log is not None:
            self.log(f"threads: {self.threads} → {wanted} ({busy:.1f} of {self.choice.cores} cores busy with other work)")
        self.threads = wanted
        self.changes += 1


_governor: ThreadGovernor | None = None


def _set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)
