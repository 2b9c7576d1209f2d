"""Leave cleanly when the terminal goes away, instead of spinning.

When an SSH connection drops, the kernel hangs up the terminal: the app gets SIGHUP, and
reads from the terminal return end-of-file at once, forever. Textual's input thread would then
loop on those empty reads. So: SIGHUP asks the app to exit, and because SIGHUP can be ignored
(``nohup``) or missed, a once-a-second check that the terminal still answers does the same.
Jobs are unaffected: they run in the worker daemon, which ignores SIGHUP.

Two things kept the app alive on a dead terminal (seen in the tmux test under load, and
reproduced by hand: the process stayed for minutes, its main thread waiting on a full queue):

- The kernel sends a session leader SIGCONT right after SIGHUP on a hangup, and Textual's
  SIGCONT handler (there for ``fg`` after Ctrl-Z) starts application mode again: a second
  output thread, whose first write to the dead terminal fails and ends it. The app's later
  writes then fill that thread's bounded queue (30) and block the exit for good. So SIGCONT
  resumes only onto a terminal that still answers; on a dead one it asks the app to leave.
- Any other write or wait that blocks on a terminal that is gone would do the same, so once the
  app has been asked to leave for a hangup it gets ``EXIT_GRACE_S`` to do it cleanly, then the
  process ends with the same exit code. Nothing is lost by that: jobs live in the worker, and a
  form's unsaved edits, which a terminal that is gone cannot be asked about, are written to a
  draft first (core/drafts.py), taken back when the project is opened next.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Callable

from textual.app import App

CHECK_S = 1.0
HANGUP_EXIT = 129  # 128 + SIGHUP, as a shell reports a process ended by it
EXIT_GRACE_S = 10.0  # a clean exit takes ~2 s on a loaded 2-core machine


def watch_for_hangup(app: App) -> None:
    deadline = ExitDeadline(EXIT_GRACE_S)

    def leave() -> None:
        if deadline.started:
            return  # SIGHUP, SIGCONT and the check may all ask
        deadline.start()
        keep = getattr(app, "keep_unsaved_edits", None)
        if keep is not None:
            keep()  # unsaved form edits to a draft: nobody is there to be asked (core/drafts.py)
        app.exit(return_code=HANGUP_EXIT)

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, leave)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP
        pass
    stdin = sys.__stdin__
    if stdin is None or not stdin.isatty():
        return
    fd = stdin.fileno()
    guard_resume(fd, lambda: loop.call_soon_threadsafe(leave))

    def check() -> None:
        if not terminal_alive(fd):
            leave()

    app.set_interval(CHECK_S, check)


def terminal_alive(fd: int) -> bool:
    """False once the terminal is hung up (its ioctls fail with EIO) or closed."""
    import termios

    try:
        termios.tcgetattr(fd)
        os.ttyname(fd)
    except (OSError, termios.error):
        return False
    return True


class ExitDeadline:
    """Ends the process ``grace_s`` after :meth:`start` unless it has ended by then: the last
    resort for an exit that blocks on a terminal that is gone. ``end`` is for the tests."""

    def __init__(self, grace_s: float, end: Callable[[int], object] = os._exit) -> None:
        self.grace_s, self.end = grace_s, end
        self._timer: threading.Timer | None = None

    @property
    def started(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        if self._timer is None:  # SIGHUP, SIGCONT and the check may all ask; one deadline
            self._timer = threading.Timer(self.grace_s, self.end, args=(HANGUP_EXIT,))
            self._timer.daemon = True  # a clean exit does not wait for it
            self._timer.start()


def guard_resume(fd: int, on_dead_terminal: Callable[[], object]) -> None:
    """Let the driver's SIGCONT handler resume application mode only onto a live terminal."""
    try:
        resume = signal.getsignal(signal.SIGCONT)
    except (AttributeError, ValueError):  # no SIGCONT here
        return
    if not callable(resume):
        return

    def on_cont(signum, frame) -> None:
        if terminal_alive(fd):
            resume(signum, frame)  # `fg` after Ctrl-Z
        else:
            on_dead_terminal()

    try:
        signal.signal(signal.SIGCONT, on_cont)
    except ValueError:  # not the main thread
        pass
