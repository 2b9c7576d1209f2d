"""An Input whose editing keys apply in the order they were typed.

Textual (8.2, its issue #6605) types a letter in the Input's own ``_on_key``, but runs an
editing key (backspace, delete, ctrl+u, ctrl+k, home, arrows: the Input's bindings) only once
the key has bubbled up to the app, by then behind the letters that followed it. Keys arriving
together, as a lagging SSH link or a paste delivers them, were applied out of order: "abx⌫c"
kept the x, and "ctrl+u" then a pasted path left the field empty. And where a tab behind them
had already moved the focus, the key ran in the next field. Here the Input's own (non-priority)
bindings run where the key arrives, as the app would run them: the focused widget is the
first place it looks, so what runs is the same, only not late. Priority bindings (the app's
and the forms' tab) are the app's, run before the key reaches the Input, as before."""

from __future__ import annotations

import unicodedata

from textual import events
from textual.widgets import Input


class OrderedInput(Input):
    async def _on_key(self, event: events.Key) -> None:
        # A letter: Input._on_key, next in Textual's walk of the classes, types it. Not called
        # from here (that walk would type it twice).
        if event.is_printable:
            return
        if event.character and unicodedata.category(event.character) == "Zs":
            # A space other than " ": Python's isprintable says no to U+3000, the full-width
            # space a Japanese IME types by default, so Input dropped it without a trace.
            self._type(event.character)
            event.stop()
            event.prevent_default()
            return
        for binding in self._bindings.key_to_bindings.get(event.key, ()):
            if not binding.priority and await self.app.run_action(binding.action, self):
                event.stop()  # handled: the app must not run it again
                event.prevent_default()
                self._restart_blink()
                return

    def _type(self, text: str) -> None:
        """As Input types a printable key: over the selection, or at the cursor."""
        selection = self.selection
        if selection.is_empty:
            self.insert_text_at_cursor(text)
        else:
            self.replace(text, *selection)
        self._restart_blink()
