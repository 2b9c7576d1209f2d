"""Process identity and liveness, robust to pid reuse (a reboot can hand a dead job's pid to
another program: the start time read from /proc tells them apart)."""

from __future__ import annotations

import os
import sys


def stat_fields(pid: int | str) -> list[bytes] | None:
    """``/proc/PID/stat`` from field 3 (the state) on, or None (no such process, not Linux). The
    command name (field 2) is cut off at its last ")": it may hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot) on Linux, else None."""
    fields = stat_fields(pid)
    return fields[19].decode() if fields is not None and len(fields) > 19 else None  # field 22 of stat


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
        state = process_state(pid)
        return state is not None and state != b"Z"  # a zombie (exited, not yet reaped) is not alive for our purposes
    return True


def _prctl(option: int, *args) -> bool:
    """Linux's prctl(2); False where it fails or there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, *args) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent() -> None:
    """Linux: get SIGTERM when the parent (the worker) dies, even by kill -9, so a training
    checkpoints and exits instead of running on unsupervised. Elsewhere: no-op."""
    import signal

    PR_SET_PDEATHSIG = 1
    _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def name_process(name: str) -> None:
    """Linux: the name ``top``, ``ps -o comm`` and ``pgrep`` show for this process (15 bytes at
    most; no spaces: Slurm's proctrack/linuxproc reads /proc/PID/stat with scanf and lost a job named
    "copylora #12"), e.g. ``copylora-12`` for job 12, as its Slurm job is named: every job is a ``python`` process otherwise (and a
    warm-started one shows the preloaded process' command line). Elsewhere: no-op."""
    PR_SET_NAME = 15
    _prctl(PR_SET_NAME, "-".join(name.split()).encode()[:15], 0, 0, 0)


def become_subreaper() -> bool:
    """Linux: make this process the *child subreaper* of its descendants, so that an orphan among
    them (a job forked by the warm-start process, whose middle process exits at once) becomes
    this process' child rather than init's: it can then wait for it and read its exit code.
    False where that is not possible (not Linux, a kernel before 3.4)."""
    PR_SET_CHILD_SUBREAPER = 36
    return _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


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
        fields = stat_fields(entry)
        if fields is not None and len(fields) > 1 and fields[1] == me:
            found.append(int(entry))
    return found


def process_state(pid: int) -> bytes | None:
    """The state letter of ``pid`` (b"R", b"S", b"Z" for a zombie …) on Linux, else None."""
    fields = stat_fields(pid)
    return fields[0] if fields else None
