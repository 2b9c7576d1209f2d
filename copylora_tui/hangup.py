"""Leave cleanly when the terminal goes away, instead of spinning.

When an SSH connection drops, the kernel hangs up the terminal: the app gets SIGHUP, and
reads from the terminal return end-of-file at once, forever. Textual's input thread would then
loop on those empty reads. So: SIGHUP asks the app to exit, and because SIGHUP can be ignored
(``nohup``) or missed, a once-a-second check that the terminal still answers does the same.
Jobs are unaffected: they run in the worker daemon, which ignores SIGHUP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from textual.app import App

CHECK_S = 1.0
HANGUP_EXIT = 129  # 128 + SIGHUP, as a shell reports a process ended by it


def watch_for_hangup(app: App) -> None:
    def leave() -> None:
        app.exit(return_code=HANGUP_EXIT)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, leave)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP
        pass
    stdin = sys.__stdin__
    if stdin is None or not stdin.isatty():
        return
    fd = stdin.fileno()

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
