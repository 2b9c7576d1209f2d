"""Pictures (the teacher pictures A and B, preview grids) drawn with textual-image where the
terminal can show them.

textual-image asks the terminal what it supports (sixel, the kitty graphics protocol, or
coloured half cells) when it is imported, and that question only works before Textual starts
reading the keyboard, so it is loaded before the app starts. The question costs up to a few
tenths of a second on a terminal that never answers (tmux, most SSH clients), and importing
textual-image brings numpy; so by default it is loaded only on terminals that say they draw
pictures (kitty, WezTerm, iTerm2, Konsole, foot, …), and in a thread that overlaps the rest
of the start-up. ``COPYLORA_IMAGES=1`` loads it anyway (half-cell pictures on any colour
terminal), ``COPYLORA_IMAGES=0`` never. Without it, or if anything fails, the project screen
shows each teacher picture's size and path as text, and preview grids are drawn with coloured
half blocks by :mod:`copylora_tui.core.halfblock` (Rich and Pillow only).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_image_class = None  # the textual-image widget class, once loaded
_loader: threading.Thread | None = None

# Environment hints of terminals with a graphics protocol (sixel or kitty's).
_GRAPHICS_TERMS = ("xterm-kitty", "foot", "foot-extra", "mlterm", "contour", "wezterm", "xterm-ghostty")
_GRAPHICS_PROGRAMS = ("WezTerm", "iTerm.app", "ghostty", "mintty", "rio")
_GRAPHICS_VARIABLES = ("KITTY_WINDOW_ID", "KONSOLE_VERSION", "WEZTERM_EXECUTABLE")


def wanted(environ: dict | None = None) -> bool:
    env = os.environ if environ is None else environ
    setting = env.get("COPYLORA_IMAGES", "auto").lower()
    if setting in ("0", "no", "off", "false"):
        return False
    if setting in ("1", "yes", "on", "true"):
        return True
    if env.get("TMUX"):
        return False  # tmux does not pass pictures through unless configured to
    return (
        env.get("TERM", "") in _GRAPHICS_TERMS
        or env.get("TERM_PROGRAM", "") in _GRAPHICS_PROGRAMS
        or any(env.get(name) for name in _GRAPHICS_VARIABLES)
    )


def _load() -> None:
    global _image_class
    try:
        from textual_image.widget import Image

        _image_class = Image
    except Exception:  # missing, broken, or the terminal query failed: text it is
        _image_class = None


def start_preload() -> None:
    """Begin loading in a thread (its terminal queries mostly wait, so they overlap the
    import of Textual). :func:`preload` finishes it."""
    global _loader
    if _loader is None and wanted():
        _loader = threading.Thread(target=_load, name="textual-image-preload", daemon=True)
        _loader.start()


def preload() -> bool:
    """Finish (or do) the loading; call before the app starts. True when pictures can be drawn."""
    start_preload()
    if _loader is not None:
        _loader.join()
    return _image_class is not None


# A teacher picture is shown at most this many pixels a side (a terminal cell is ~10 pixels).
SHOWN_PX = 768


def image_widget(picture: Path | object, **kwargs):
    """A widget drawing ``picture`` (a teacher picture's path, or a Pillow image already
    decoded), or None (then the caller draws it another way). A path is read as training
    reads it (engine.project.images.load_picture: upright by its EXIF orientation, 16-bit
    scaled, transparency on white), not as textual-image would read the file."""
    if _image_class is None:
        return None
    try:
        if isinstance(picture, Path):
            from engine.project.images import load_picture

            picture = load_picture(picture)
            picture.thumbnail((SHOWN_PX, SHOWN_PX))
        return _image_class(picture, **kwargs)
    except Exception:
        return None
