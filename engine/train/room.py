"""Waiting for room on a full disk instead of losing what a training holds in memory.

A rented GPU box usually has one disk for the projects, the cache and the rescue folder: when
it fills at the end of a training, the LoRA, its checkpoint and the rescue copy all fail, and
the weights (hours of work) were gone with the process. A write that must not be lost — the
finished training's checkpoint and LoRA, the checkpoint a pause or a cancel stops on — waits
instead, trying again every :data:`RETRY_S` for up to :data:`WAIT_S`, with one log line saying
which disk to free and how much room there is. Other failures, and a disk still full after the
wait, are raised as before (the caller rescues what it can).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, TypeVar

from engine.files import disk_full_error, free_text, nearest_folder

T = TypeVar("T")

RETRY_S = 10.0
# How long a training waits for room: long enough to notice (the log, the Monitor) and free
# some; bounded, so a job nobody watches still ends (rescuing what it can) and frees its GPU.
def _wait_s(default: float = 30 * 60) -> float:
    try:  # a value that is no number of seconds is the default, not a job that fails to start
        value = float(os.environ.get("COPYLORA_ROOM_WAIT_S", default))
    except ValueError:
        return default
    return value if 0 <= value < float("inf") else default


WAIT_S = _wait_s()


def write_with_room(write: Callable[[], T], what: str, folder: Path, log: Callable[[str], None], *,
                    size_hint: int | None = None) -> T:
    """``write()``; while it fails for a full disk, try again every RETRY_S up to WAIT_S.
    ``size_hint``: the bytes a write of this kind took before (the last checkpoint), said."""
    waited = 0.0
    while True:
        try:
            result = write()
        except OSError as exc:
            if not disk_full_error(exc) or waited >= WAIT_S:
                raise
            if waited == 0.0:
                folder = nearest_folder(folder)  # df -h of a folder not made yet fails
                need = f", about {size_hint / 1e6:.0f} MB needed" if size_hint else ""
                log(f"warning: no space left on the disk of {folder} for {what} ({free_text(folder) or 'full'}{need}; df -h {folder}): "
                    f"free some space there — copylora tries again every {RETRY_S:g} s for {WAIT_S / 60:g} minutes, the weights wait "
                    "in memory")
            time.sleep(RETRY_S)
            waited += RETRY_S
            continue
        if waited:
            log(f"{what} written after waiting {waited:.0f} s for room on the disk")
        return result
