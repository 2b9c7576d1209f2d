"""A pane showing the newest preview grid of a project or a job, with its one-line caption.

It polls on the screen's cadence: a thread lists the samples folder and compares the newest
file's name, time and size with the shown one; only a new file is opened (caption from its
PNG text, then the pixels, shrunk once). The picture is drawn by textual-image where the
terminal draws pictures (see :mod:`copylora_tui.teacher_images`), else with coloured half
blocks that any colour terminal shows, SSH included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rich.text import Text
from textual import work
from textual.containers import Vertical
from textual.geometry import Size
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from copylora_tui import teacher_images
from copylora_tui.core.halfblock import HalfBlock, fit_cells, load_thumbnail
from copylora_tui.core.previews import Found, PreviewTarget, caption, newest, read_record
from copylora_tui.widgets.guard import while_open

# What a screen gives the pane: the target once it is known (None: not yet, ask again at the
# next poll; a string: why there are no previews). Called in the pane's thread.
Resolve = Callable[[], "PreviewTarget | str | None"]
_UNSEEN = object()  # before the first listing: even "no file" is news then


class HalfBlockPicture(Widget):
    """A Pillow picture drawn with half blocks, fitted into the widget's size."""

    def __init__(self, picture, **kwargs) -> None:
        super().__init__(**kwargs)
        self._picture = picture

    @property
    def picture(self):
        return self._picture

    @picture.setter
    def picture(self, picture) -> None:
        self._picture = picture
        self.refresh(layout=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        # With height: auto, as many rows as the picture needs at this width (max-height caps it).
        return fit_cells(self._picture.width, self._picture.height, width, 10_000)[1]

    def render(self) -> HalfBlock:
        return HalfBlock(self._picture, self.content_size.width, self.content_size.height)


class PreviewPane(Vertical):
    class Loaded(Message):
        """Posted by the polling thread: a new newest file (with its caption and picture), or
        a message to show instead (``found`` None)."""

        def __init__(self, found: Found | None, text: str, picture=None) -> None:
            super().__init__()
            self.found, self.text, self.picture = found, text, picture

    def __init__(self, resolve: Resolve, *, interval: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._resolve = resolve
        self._interval = interval
        self._target: PreviewTarget | str | None = None
        self._found: Found | None | object = _UNSEEN  # the newest file seen by the thread
        self._said: str | None = None  # the last message posted (not repeated every poll)
        self._scanning = False
        self.shown: Path | None = None  # the PNG on screen (what the open key reports)
        self.unreadable: Path | None = None  # a preview found but not readable: the open key says its path
        self._name = ""  # its file name, in the bottom border

    def compose(self):
        yield Static("", id="preview-caption")
        yield Vertical(id="preview-slot")

    def on_mount(self) -> None:
        self.border_title = "preview"
        self.set_interval(self._interval or self.app.poll_s, self.check)
        self.check()

    def retarget(self) -> None:
        """Ask the screen for the target again at the next poll (e.g. output_dir changed)."""
        self._target = None
        self._found = _UNSEEN
        self._said = None

    def check(self) -> None:
        if self._scanning:
            return  # a slow disk must not pile up listings
        self._scanning = True
        self._scan()

    @work(thread=True, group="preview", exit_on_error=False)
    def _scan(self) -> None:
        try:
            if self._target is None:
                self._target = self._resolve()
            target = self._target
            if target is None:
                return
            if isinstance(target, str):
                self._say(target)
                return
            found = newest(target)
            if found == self._found:
                return
            self._found = found
            if found is None:
                self._say(target.empty)
                return
            text = caption(read_record(found.path))
            try:
                picture = load_thumbnail(found.path)
            except (OSError, ValueError) as exc:
                self._said = None
                self.post_message(self.Loaded(found, f"{found.path.name} cannot be read: {exc}"))
                return
            self._said = None
            self.post_message(self.Loaded(found, text, picture))
        except Exception as exc:  # the project does not load, the folder vanished: say so,
            # and ask again at the next poll (kept, the message stayed after the cause was gone)
            self._target, self._found = None, _UNSEEN
            self._say(f"no preview: {exc}")
        finally:
            self._scanning = False

    def _say(self, text: str) -> None:
        if text != self._said:
            self._said = text
            self.post_message(self.Loaded(None, text))

    @while_open
    def on_preview_pane_loaded(self, message: Loaded) -> None:
        message.stop()
        self.shown = message.found.path if message.found and message.picture is not None else None
        self.unreadable = message.found.path if message.found and message.picture is None else None
        self._name = message.found.path.name if message.found else ""
        self._show_name()
        style = "" if message.picture is not None else "dim"
        self.query_one("#preview-caption", Static).update(Text(message.text, style=style))
        self._show_picture(message.picture)

    def on_resize(self) -> None:
        self._show_name()

    def _show_name(self) -> None:
        # Cut on the left: the end of a name (step000200, -grid) is what tells previews apart.
        room = max(0, self.size.width - 6)
        name = self._name if len(self._name) <= room else "…" + self._name[len(self._name) - room + 1:] if room > 1 else ""
        self.border_subtitle = Text(name)  # Text: a file name is not markup

    def _show_picture(self, picture) -> None:
        slot = self.query_one("#preview-slot", Vertical)
        current = slot.children[0] if slot.children else None
        if picture is None:
            slot.remove_children()
        elif isinstance(current, HalfBlockPicture):
            current.picture = picture
        elif current is not None:
            current.image = picture  # textual-image's widget redraws itself
        else:
            widget = teacher_images.image_widget(picture, classes="preview-image")
            slot.mount(widget if widget is not None else HalfBlockPicture(picture, classes="preview-picture"))


def show_preview_path(pane: PreviewPane) -> None:
    """The open-preview key: the shown PNG's full path in a notification and on the clipboard
    (OSC 52, which many terminals honour over SSH), to scp it or open it locally."""
    if pane.shown is None:
        # a preview that cannot be read (cut short, damaged) still has a path to look at or remove
        bad = pane.unreadable
        pane.notify(f"{bad.resolve()} cannot be read (see the pane)" if bad is not None else "no preview shown yet", severity="warning")
        return
    path = str(pane.shown.resolve())
    pane.app.copy_to_clipboard(path)
    # "sent", not "copied": whether it arrives is the terminal's (and tmux's set-clipboard) choice, unseen here
    pane.notify(f"{path}\n(path sent to the clipboard, where the terminal takes OSC 52)", title="preview")
