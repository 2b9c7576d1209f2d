"""Widgets that leave the screen alone when told what they already show.

The screens redraw from the queue twice a second. Textual's ``Static.update`` lays out and
repaints on every call, the same text or not, and a layout repaints the whole screen: with a
job running, the app sent 40-48 KB/s to the terminal (150 MB an hour over SSH) and half its CPU
went to painting, mostly byte-identical rows. Updates that change nothing now cost nothing."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def _shown_as(content: object) -> object:
    """What decides how ``content`` looks. Rich's ``Text ==`` compares the words and their spans
    only: a line turning from dim to red would have compared equal."""
    if isinstance(content, Text):
        return ("text", content.plain, tuple(content.spans), str(content.style), content.justify, content.overflow,
                content.no_wrap, content.end)
    if isinstance(content, str):
        return ("str", content)
    return ("object", id(content))  # anything else: never taken as the same


class SteadyStatic(Static):
    """A Static whose ``update`` with the content it shows already does nothing, and whose new
    content is laid out again only where it needs another height (a layout repaints the whole
    screen; a status line whose step moved repaints its own line)."""

    def update(self, content="", *, layout: bool = True) -> None:
        if _shown_as(content) == _shown_as(self.content):
            return
        width = self.styles.width
        if not layout or not self.is_mounted or not self.size.width or (width is not None and width.is_auto):
            super().update(content, layout=layout)  # its width follows its content: the layout decides
            return
        height = self.size.height
        super().update(content, layout=False)
        if self.get_content_height(self.container_size, self.app.size, self.content_size.width) != self.content_size.height \
                or self.size.height != height:
            self.refresh(layout=True)  # more (or fewer) lines: the screen is laid out again


def set_border_titles(widget, title: str, subtitle: str) -> None:
    """A border's title and subtitle, set only when they change (each set repaints the widget)."""
    if widget.border_title != title:
        widget.border_title = title
    if widget.border_subtitle != subtitle:
        widget.border_subtitle = subtitle
