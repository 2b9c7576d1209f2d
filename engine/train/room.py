"""Waiting for room on a full disk instead of losing what a training holds in memory.

A rented GPU box usually has one disk for the projects, the cache and the rescue folder: when
it fills at the end of a training, the LoRA, its checkpoint and the rescue copy all fail, and
the weights (hours of work) were gone with the process. A write that must not be lost — the
finished training's checkpoint and LoRA, the checkpoint a pause or a cancel stops on — waits
instead, trying again every :data:`RETRY_S`, with one log line saying which disk to free and
how much room there is. The waits of one process share :data:`WAIT_S` (a twin's four writes
waited two hours, the GPU held); a wait ends early when the job is asked to stop (a cancel, the
worker stopping: its kill comes STOP_GRACE_S later), and a stop's own checkpoint waits at most
:data:`STOP_WAIT_S`, inside that grace. Other failures, and a disk still full after the wait,
are raised as before (the caller rescues what it can).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, TypeVar

from engine.files import disk_full_error, free_text, nearest_folder

T = TypeVar("T")

RETRY_S = 10.0


def _wait_s(default: float = 30 * 60) -> float:
    try:  # a value that is no number of seconds is the default, not a job that fails to start
        value = float(os.environ.get("COPYLORA_ROOM_WAIT_S", default))
    except ValueError:
        return default
    return value if 0 <= value < float("inf") else default


# How long a training waits for room, all its writes together: long enough to notice (the log,
# the Monitor) and free some; bounded, so a job nobody watches still ends (rescuing what it
# can) and frees its GPU.
WAIT_S = _wait_s()
# A stop's checkpoint (pause, cancel, the worker stopping): within the worker's grace of 120 s
# (engine.jobs.worker.STOP_GRACE_S), after which it kills the job and nothing is rescued.
STOP_WAIT_S = 90.0
_waited = [0.0]  # this process's waits so far


def write_with_room(write: Callable[[], T], what: str, folder: Path, log: Callable[[str], None], *,
                    size_hint: int | None = None, give_up: Callable[[], bool] | None = None, limit_s: float | None = None) -> T:
    """``write()``; while it fails for a full disk, try again every RETRY_S, for what is left of
    WAIT_S (at most ``limit_s``), until ``give_up()`` says the job is asked to stop.
    ``size_hint``: the bytes a write of this kind took before (the last checkpoint), said."""
    waited = 0.0
    while True:
        try:
            result = write()
        except OSError as exc:
            left = min(WAIT_S - _waited[0], limit_s - waited if limit_s is not None else float("inf"))  # (_waited holds this wait's too)
            if not disk_full_error(exc) or left <= 0:
                raise
            if give_up is not None and give_up():
                log(f"stopped waiting for room for {what}: the job was asked to stop")
                raise
            if waited == 0.0:
                folder = nearest_folder(folder)  # df -h of a folder not made yet fails
                need = f", about {size_hint / 1e6:.0f} MB needed" if size_hint else ""
                stop = " (a cancel stops waiting)" if give_up is not None else ""
                log(f"warning: no space left on the disk of {folder} for {what} ({free_text(folder) or 'full'}{need}; df -h {folder}): "
                    f"free some space there — copylora tries again every {RETRY_S:g} s for {_duration(left)}, the weights wait "
                    f"in memory{stop}")
            pause = min(RETRY_S, left)
            time.sleep(pause)
            waited += pause
            _waited[0] += pause
            continue
        if waited:
            log(f"{what} written after waiting {waited:.0f} s for room on the disk")
        return result


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.0f} s"
