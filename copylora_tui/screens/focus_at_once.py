"""Tab (and a form's enter) moving the focus before the next key is handled.

Textual hands a key to the focused widget through that widget's own queue, and a plain tab
binding (or an Input's Submitted message) moves the focus only once the widget has handled it:
keys arriving together, as a lag spike over SSH or a paste delivers them, went to the field
being left ("abc⏎def" gave the name "abcdef"). A priority binding runs in the app's own turn,
before the next key is passed on, so the keys behind it go to the field they were typed for."""

from __future__ import annotations

from textual.binding import Binding

# In each form screen's BINDINGS (Textual merges bindings only from its own classes, not a mixin's)
FOCUS_AT_ONCE = [
    Binding("tab", "focus_next_now", "Next field", show=False, priority=True),
    Binding("shift+tab", "focus_previous_now", "Previous field", show=False, priority=True),
]


class MovesFocusAtOnce:
    """The actions of FOCUS_AT_ONCE, for a Screen."""

    def action_focus_next_now(self) -> None:
        self.focus_next()  # type: ignore[attr-defined]

    def action_focus_previous_now(self) -> None:
        self.focus_previous()  # type: ignore[attr-defined]
