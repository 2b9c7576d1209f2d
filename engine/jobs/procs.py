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
