"""ctrl+z as in any terminal program: the app stops, the shell's ``fg`` brings it back.

Only where a shell with job control started us: a stop signal to an orphaned process group
(the app as tmux's pane command, under ``ssh host copylora``, under ``setsid``) is discarded
by the kernel, and the app would have left the screen for a stop that never came."""

from __future__ import annotations

import os


def shell_can_resume() -> bool:
    """Whether a job-control shell runs us as one of its jobs: our parent is in the same
    session but in another process group (the shell's), and we own the terminal's foreground."""
    try:
        parent = os.getppid()
        ours = os.getpgrp()
        if os.getsid(parent) != os.getsid(0) or os.getpgid(parent) == ours:
            return False
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
        try:
            return os.tcgetpgrp(fd) == ours
        finally:
            os.close(fd)
    except OSError:  # no terminal, the parent gone (ppid 1's session is not ours): no shell to come back to
        return False


NO_SHELL = "ctrl+z: no shell to stop to here (the app is not a job of a shell); q quits, and jobs keep running"
