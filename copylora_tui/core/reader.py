"""A queue connection for reads in worker threads, closed safely when its screen goes away.

The app and the monitor read the queue in threads, one read at a time. Closing an sqlite
connection while a query runs on it in another thread crashes the interpreter, and a screen
unmounts whenever it likes; so :meth:`close` during a read leaves the closing to that read's
:meth:`end` instead of waiting for it (a busy database can hold a read for seconds).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from engine.jobs.job_cache import JobCache

READ_ONLY_RETRY_S = 5.0


class QueueReader:
    def __init__(self, home: str | Path | None) -> None:
        self.home = home
        self._queue = None
        self._opened: int | None = None  # the queue file's inode when opened
        self._opened_at = 0.0  # when (time.monotonic)
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self.jobs = JobCache()  # this connection's jobs, made again only where they changed

    def begin(self) -> bool:
        """True when a read may start now (none running, not closed); then call :meth:`end`."""
        with self._lock:
            if self._busy or self._closed:
                return False
            self._busy = True
            return True

    def queue(self):
        """The connection, opened on first use (in the reading thread, between begin and end),
        and opened again when the queue file is no longer the one it reads: the state folder
        removed to start afresh (`rm -rf ~/.local/state/copylora`) left the app showing the old
        queue for good, while its own commands (a fresh connection each) went to the new one."""
        stale = self._queue is not None and self._queue.read_only and time.monotonic() - self._opened_at >= READ_ONLY_RETRY_S
        if self._queue is not None and (_inode(self._queue.path) != self._opened or stale):
            self._close_now()
        if self._queue is None:
            from engine.jobs.queue import Queue

            # reading: on a full disk, the queue as last written (its read_only says why), opened
            # again every READ_ONLY_RETRY_S until the disk has room (a read-only view sees no change)
            self._queue = Queue(self.home, reading=True)
            self._opened, self._opened_at = _inode(self._queue.path), time.monotonic()
        return self._queue

    def end(self) -> None:
        with self._lock:
            self._busy = False
            closed = self._closed
        if closed:
            self._close_now()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            busy = self._busy
        if not busy:
            self._close_now()

    def _close_now(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.close()


def _inode(path) -> int | None:
    """The file itself, not its contents' version (SQLite's writes change mtime and size)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
