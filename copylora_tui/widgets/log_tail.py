"""A job's log, followed live.

A thread reads what the job appended (:class:`LogFollower`) ten times a second and posts the
new lines as one batch, which the ``Log`` writes with one ``write_lines`` call: a chatty job
costs one repaint per tenth of a second, not one per line. ``max_lines`` bounds memory.
"""

from __future__ import annotations

import time
from pathlib import Path

from textual.message import Message
from textual.widgets import Log
from textual.worker import get_current_worker

from copylora_tui.core.log_follow import LogFollower

FLUSH_S = 0.1


class LogTail(Log):
    class Lines(Message):
        """New complete lines read from the file (posted from the reading thread)."""

        def __init__(self, lines: list[str]) -> None:
            super().__init__()
            self.lines = lines

    def __init__(self, path: Path, *, max_lines: int = 2000, **kwargs) -> None:
        super().__init__(max_lines=max_lines, highlight=False, **kwargs)
        self.path = Path(path)

    def on_mount(self) -> None:
        self.run_worker(self._follow, thread=True, group="log-tail", exit_on_error=False)

    def _follow(self) -> None:
        worker = get_current_worker()
        follower = LogFollower(self.path)
        while not worker.is_cancelled:
            lines = follower.read_new()
            if lines:
                self.post_message(self.Lines(lines))
            time.sleep(FLUSH_S)

    def on_log_tail_lines(self, message: Lines) -> None:
        message.stop()
        self.write_lines(message.lines)
