"""The title line at the top of every screen: "Screen — subtitle".

Textual's ``Header`` updates its title from an asynchronous callback that looks up its own
child widget; when a screen is opened and closed again within a few milliseconds (a fast
typist, a pasted string, the monkey test) the child is gone by then and the app ends with
``NoMatches``. This line is one widget that renders its own text, so there is nothing to look
up. (It drops Header's icon and clock: the command palette is ctrl+p, and the footer says so.)
"""

from __future__ import annotations

from rich.text import Text
from textual.app import NoScreen
from textual.widgets import Static


class AppHeader(Static):
    DEFAULT_CSS = """
    AppHeader {
        dock: top;
        width: 100%;
        height: 1;
        background: $panel;
        color: $foreground;
        content-align: center middle;
        text-align: center;
    }
    """

    def on_mount(self) -> None:
        for owner in (self.app, self.screen):
            self.watch(owner, "title", self.show_title)
            self.watch(owner, "sub_title", self.show_title)

    def show_title(self, _value: object = None) -> None:
        try:
            screen = self.screen
        except NoScreen:  # already taken off the screen
            return
        title = screen.title if screen.title is not None else self.app.title
        sub_title = screen.sub_title if screen.sub_title is not None else self.app.sub_title
        text = Text(title or "")
        if sub_title:
            text.append(f" — {sub_title}", style="dim")
        self.update(text)
