"""Callbacks that may arrive after their screen has been closed.

A screen's watchers (the queue snapshot), timers and thread results can run after the next key
closed the screen, or while it is still being mounted and already being closed: its widgets
are then gone and a ``query_one`` raises ``NoMatches``, which would end the app. Such a
callback has nothing left to update; it returns. A missing widget on a screen that is open is
still a bug, and is raised as before.
"""

from __future__ import annotations

import functools

from textual.css.query import NoMatches
from textual.screen import Screen


def still_open(node) -> bool:
    """The screen of ``node`` (a screen or a widget) is on the app's stack and not closing."""
    try:
        screen = node if isinstance(node, Screen) else node.screen
        return screen in node.app.screen_stack and not (screen._closing or screen._closed or node._closing or node._closed)
    except Exception:  # no screen, no app: it has been taken down
        return False


def while_open(method):
    """Run ``method`` only while its screen is open; a closed screen's NoMatches is expected."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self.is_attached or not still_open(self):
            return None
        try:
            return method(self, *args, **kwargs)
        except NoMatches:
            if still_open(self) and self.is_mounted:
                raise
            return None

    return wrapper


class ActsWhileOpen:
    """Mixed into every screen of the app: a key that reaches a screen not built yet or already
    closing (it came in the same burst as the key that opened or closed it) runs no action
    there. Textual asks ``check_action`` before each binding's action."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.is_mounted and still_open(self)
