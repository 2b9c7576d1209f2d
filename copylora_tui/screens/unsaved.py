"""Leaving a form with unsaved edits asks first, whichever key leaves: escape or ctrl+q.

The question is a warning, not a dialog: the same key pressed again leaves (a dialog would be
one more thing to answer over a slow SSH link, and the form stays as it was). Any edit after
the warning makes the next leave ask again. The app's quit asks every screen on its stack
(:meth:`CopyloraApp.action_quit`), so ctrl+q cannot lose what escape would have protected.
"""

from __future__ import annotations


class AsksBeforeLosingEdits:
    """Mixed into a screen with a form. It says whether there are edits to lose
    (:meth:`has_unsaved_edits`) and calls :meth:`edits_changed` on each edit."""

    SAVE_HINT = "ctrl+s saves them"  # how to keep the edits, said in the warning
    _warned_for: frozenset[str] = frozenset()  # the keys that leave after the last warning (none since the last edit)

    def has_unsaved_edits(self) -> bool:
        raise NotImplementedError

    def edits_changed(self) -> None:
        self._warned_for = frozenset()

    def may_discard_edits(self, key: str, leaves: str) -> bool:
        """True when the screen may go (no edits, or ``key`` was pressed again after its
        warning); else warn once: "unsaved changes: ctrl+s saves them, ``key`` again
        ``leaves`` without saving". A key that a focused text field would take (``2``, reached
        from the palette) cannot be pressed again: the warning names escape instead."""
        if not self.has_unsaved_edits() or key in self._warned_for:
            return True
        if len(key) == 1 and _takes_text(self.focused):  # type: ignore[attr-defined]
            self._warned_for = frozenset({key, "esc"})
            said = f"esc {leaves} without saving ({key} would type into the field)"
        else:
            self._warned_for = frozenset({key})
            said = f"{key} again {leaves} without saving"
        self.notify(f"unsaved changes: {self.SAVE_HINT}, {said}", severity="warning")  # type: ignore[attr-defined]
        return False


def _takes_text(widget) -> bool:
    from textual.widgets import Input, TextArea

    return isinstance(widget, (Input, TextArea))


def may_quit(screens) -> bool:
    """Whether the app may quit now: asks each screen with edits (the top one first) and
    stops at the first that warns."""
    for screen in reversed(list(screens)):
        if isinstance(screen, AsksBeforeLosingEdits) and not screen.may_discard_edits("ctrl+q", "quits"):
            return False
    return True
