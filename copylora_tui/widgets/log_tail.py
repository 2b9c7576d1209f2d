"""A job's log, followed live.

A thread reads what the job appended (:class:`LogFollower`) ten times a second and posts the
new lines as one batch, which the ``Log`` writes with one ``write_lines`` call: a chatty job
costs one repaint per tenth of a second, not one per line. ``max_lines`` bounds memory.

Lines are wrapped to the panel's width (a log line is often a path or an error, and the end is
the part worth reading); the raw lines are kept, so a resize wraps them again.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from textual import work
from textual.message import Message
from textual.widgets import Log
from textual.worker import get_current_worker

from copylora_tui.core.log_follow import LogFollower, wrap_line
from copylora_tui.widgets.guard import while_open

FLUSH_S = 0.1


class LogTail(Log):
    class Lines(Message):
        """New complete lines read from the file (posted from the reading thread)."""

        def __init__(self, lines: list[str]) -> None:
            super().__init__()
            self.lines = lines

    DEFAULT_CSS = """
    LogTail { overflow-x: hidden; }
    """

    def __init__(self, path: Path, *, max_lines: int = 2000, **kwargs) -> None:
        super().__init__(max_lines=max_lines, highlight=False, **kwargs)
        self.path = Path(path)
        self.raw_lines: deque[str] = deque(maxlen=max_lines)
        self._wrapped_at = 0  # the width the shown rows were wrapped to
        # Whether the view follows the end: true until the user scrolls up, true again when they
        # scroll back down. Log alone follows only while the view is at the end *now*: a pane made
        # shorter (the Monitor's layout after a cancel) moved the end below the view, and the
        # retried job's lines arrived out of sight.
        self.following = True

    def on_mount(self) -> None:
        self._follow()

    @work(thread=True, group="log-tail", exit_on_error=False)
    def _follow(self) -> None:
        worker = get_current_worker()
        follower = LogFollower(self.path)
        while not worker.is_cancelled:
            lines = follower.read_new()
            if lines:
                self.post_message(self.Lines(lines))
            time.sleep(FLUSH_S)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # Up from the end (the user): stay there; back at the end: follow. A pane made taller
        # pulls the view up to its new end, which keeps it following.
        self.following = new_value >= self.max_scroll_y

    def _to_end(self) -> None:
        if self.following and not self.is_vertical_scrollbar_grabbed:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    @while_open
    def on_log_tail_lines(self, message: Lines) -> None:
        message.stop()
        self.raw_lines.extend(message.lines)
        self.write_lines(self._wrap(message.lines), scroll_end=False)
        self._to_end()

    @while_open
    def on_resize(self) -> None:
        following = self.following
        if self._wrap_width() != self._wrapped_at:
            self.clear()
            self.write_lines(self._wrap(self.raw_lines), scroll_end=False)
        self.following = following  # a clear moves the view, not the user
        self._to_end()  # a shorter pane put the end below the view

    def _wrap_width(self) -> int:
        return max(20, self.scrollable_content_region.width - 1)  # 1: the vertical scrollbar

    def _wrap(self, lines) -> list[str]:
        self._wrapped_at = width = self._wrap_width()
        return [row for line in lines for row in wrap_line(line, width)]
