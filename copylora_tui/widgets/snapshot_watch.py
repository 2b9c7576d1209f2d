"""A screen follows the queue's snapshot while it is the one on top.

Screens stay on the app's stack under the one shown (Projects under Queue under a Monitor).
Textual passes a change on a covered screen on as a repaint of the screen on top, so the
Projects screen's worker line and table, updated twice a second under a Monitor, repainted the
Monitor in full each time. A covered screen now skips the snapshots, and reads the latest one
when it is shown again (``catch_up`` in its ``on_screen_resume``). On top means Textual's
``is_active``: its ``is_current`` counts the screen just under the top one as shown too
(Textual 8.2 takes any screen under another for seen through it), which is the one that
repainted the Monitor."""

from __future__ import annotations

from typing import Callable


def shown_now(screen) -> bool:
    """On top, or just under a dialog (a ModalScreen: the New or Delete dialog, the command
    palette), which leaves it in sight: a job's progress behind a dialog stood still."""
    from textual.screen import ModalScreen

    if screen.is_active:
        return True
    stack = screen.app.screen_stack
    return len(stack) >= 2 and stack[-2] is screen and isinstance(stack[-1], ModalScreen)


def watch_snapshot(screen, show: Callable) -> None:
    """Call ``show(snapshot)`` for each new snapshot while ``screen`` is on top."""

    def shown(snapshot) -> None:
        if shown_now(screen):
            screen._snapshot_missed = False
            show(snapshot)
        else:
            screen._snapshot_missed = True

    screen._snapshot_missed = True  # until the first one is shown: a screen mounted under another
    screen.watch(screen.app, "snapshot", shown)


def catch_up(screen, show: Callable) -> None:
    """Show the latest snapshot if one came while ``screen`` was covered."""
    if getattr(screen, "_snapshot_missed", False) and shown_now(screen):
        screen._snapshot_missed = False
        show(screen.app.snapshot)
