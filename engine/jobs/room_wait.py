"""Whether a running job waits for room on a full disk, read from the end of its log.

A training that finds its disk full keeps its weights in memory and waits
(engine.train.room): its log says so once, and the queue's progress stands still at the last
step ("running 100/100 ETA 00:00" for up to half an hour). `copylora queue` and the app read
the log's last lines for that warning, so the wait is said where users look, without a queue
column (which an older worker already running could not read).
"""

from __future__ import annotations

from pathlib import Path

WAITING = "warning: no space left on the disk of "  # engine.train.room.write_with_room's first line
DONE_WAITING = ("for room on the disk", "stopped waiting for room")  # its last: written, or given up
TAIL_BYTES = 16 << 10


def room_wait(log: Path) -> str | None:
    """The folder whose disk the job waits on (its log's newest such warning, not yet followed by
    the write or the give-up), or None."""
    try:
        with open(log, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        if any(done in line for done in DONE_WAITING):
            return None
        if WAITING in line:
            return line.split(WAITING, 1)[1].split(" for ", 1)[0]
    return None


def room_wait_text(folder: str) -> str:
    return f"waiting for room on the disk of {folder}: free some space there (df -h {folder}); its weights wait in memory"
