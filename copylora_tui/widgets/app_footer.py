"""The key line at the bottom of every screen, made to fit narrow terminals.

Textual's footer pads each key on both sides and keeps 12 columns for "^p palette"; at 80
columns a screen's keys then ran into that hint and were cut mid-word ("1 Projec▏"). Below
100 columns this footer uses Textual's compact style (one space between a key and its word,
one between keys) and leaves the palette hint out (ctrl+p still opens it), which fits every
screen's keys in 80 columns.
"""

from __future__ import annotations

from textual.widgets import Footer

COMPACT_BELOW = 100  # columns


class AppFooter(Footer):
    def on_mount(self) -> None:
        self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        narrow = self.app.size.width < COMPACT_BELOW
        if (self.compact, self.show_command_palette) == (narrow, not narrow):
            return
        self.compact = narrow
        self.show_command_palette = not narrow
        self.refresh(recompose=True)  # the palette hint is composed, not styled: the terminal was resized
