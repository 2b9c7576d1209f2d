"""Process identity and liveness, robust to pid reuse (a reboot can hand a dead job's pid to
another program: the start time read from /proc tells them apart)."""

from __future__ import annotations

import os
import sys


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot) on Linux, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()  # field 22 of stat; the command name (field 2) is cut off above
    except (OSError, IndexError):
        return None


def alive(pid: int | None, start: str | None = None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else: not ours
        return start is None
    if start is not None and sys.platform.startswith("linux"):
        now = process_start(pid)
        if now is None or now != start:
            return False
        try:  # a zombie (exited, not yet reaped) is not alive for our purposes
            with open(f"/proc/{pid}/stat", "rb") as handle:
                return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except OSError:
            return False
    return True


def die_with_parent() -> None:
    """Linux: get SIGTERM when the parent (the worker) dies, even by kill -9, so a training
    checkpoints and exits instead of running on unsupervised. Elsewhere: no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def name_process(name: str) -> None:
    """Linux: the name ``top``, ``ps -o comm`` and ``pgrep`` show for this process (15 bytes at
    most; no spaces: Slurm's proctrack/linuxproc reads /proc/PID/stat with scanf and lost a job named
    "copylora #12"), e.g. ``copylora-12`` for job 12, as its Slurm job is named: every job is a ``python`` process otherwise (and a
    warm-started one shows the preloaded process' command line). Elsewhere: no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_NAME = 15
        libc.prctl(PR_SET_NAME, "-".join(name.split()).encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def become_subreaper() -> bool:
    """Linux: make this process the *child subreaper* of its descendants, so that an orphan among
    them (a job forked by the warm-start process, whose middle process exits at once) becomes
    this process' child rather than init's: it can then wait for it and read its exit code.
    False where that is not possible (not Linux, a kernel before 3.4)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def stray_children(known: set[int]) -> list[int]:
    """Zombie children of this process that it did not start (a job's own child, orphaned when the
    job ended, reaches a subreaper): Linux only, else none."""
    strays = []
    for pid in children():
        if pid not in known and process_state(pid) == b"Z":
            strays.append(pid)
    return strays


def children() -> list[int]:
    """This process' children: the kernel's list of each of its threads' children where the kernel
    keeps one (CONFIG_PROC_CHILDREN), else every process whose parent it is."""
    try:
        found: list[int] = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children", "rb") as handle:
                found += [int(pid) for pid in handle.read().split()]
        return found
    except (OSError, ValueError):
        pass
    me, found = str(os.getpid()).encode(), []
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[1] == me:
                    found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


def process_state(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
