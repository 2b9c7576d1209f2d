"""Fonts for the labels of preview grids, chosen by what a label has to say.

Pillow's built-in font draws ASCII only: a Japanese project name in a grid's title (this tool's
users name projects コピー機 and the like), "café" in a prompt or "→" came out as boxes. A label
whose characters the built-in font draws keeps it (ASCII grids are unchanged); any other label is
drawn in the first font found here that draws all of its characters:

1. the file ``COPYLORA_FONT`` names (.ttf, .otf or .ttc), where the user chose one;
2. the file fontconfig's ``fc-match`` gives for those characters (Linux, and macOS with it);
3. the usual places of fonts with wide coverage (Noto Sans CJK, IPA, Droid Sans Fallback,
   DejaVu Sans; Hiragino and Arial Unicode on macOS; Yu Gothic, Meiryo, MS Gothic, Arial on
   Windows).

Where none draws them all, the one that draws the most is used and :func:`undrawable` names the
characters left, so the job's log can say what to install instead of leaving boxes unexplained.

Pillow has no "does this font have a glyph" call: a character counts as drawn when its bitmap
differs from the font's own missing-glyph box (the bitmap of a private-use code point).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

FONT_ENV = "COPYLORA_FONT"
MISSING = "\U0010fffd"  # a private-use code point: no font maps it, so it draws the missing-glyph box

_LINUX = [
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",  # Debian/Ubuntu fonts-noto-cjk
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",  # Arch
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",  # Fedora
    "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
]
_MACOS = [
    "/System/Library/Fonts/ヒラギノ角ゴシック W3.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
]
_WINDOWS = ["YuGothM.ttc", "meiryo.ttc", "msgothic.ttc", "arial.ttf", "segoeui.ttf"]  # in %WINDIR%\Fonts


def known_font_files() -> list[str]:
    """The usual places of wide-coverage fonts on this system, those that exist."""
    if sys.platform == "win32":
        folder = Path(os.environ.get("WINDIR", r"C:\Windows")) / "Fonts"
        places = [str(folder / name) for name in _WINDOWS]
    elif sys.platform == "darwin":
        places = _MACOS
    else:
        places = _LINUX
    return [place for place in places if os.path.isfile(place)]


@lru_cache(maxsize=64)
def _fc_match(chars: str) -> str | None:
    """fontconfig's choice for ``chars`` (its best match: it may not have them all)."""
    fc_match = shutil.which("fc-match")
    if fc_match is None:
        return None
    charset = " ".join(f"{ord(char):x}" for char in chars[:32])
    try:
        done = subprocess.run([fc_match, "-f", "%{file}", f":charset={charset}"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    path = done.stdout.strip()
    return path if done.returncode == 0 and os.path.isfile(path) else None


def candidate_files(chars: str) -> list[str]:
    """Font files to try for ``chars``, in order (see the module's docstring), each once."""
    found = []
    chosen = os.environ.get(FONT_ENV, "").strip()
    if chosen:
        found.append(os.path.expanduser(chosen))
    matched = _fc_match(chars)
    if matched:
        found.append(matched)
    found.extend(known_font_files())
    return list(dict.fromkeys(found))


@lru_cache(maxsize=None)
def default_face(size: int):
    """Pillow's built-in font at ``size`` (its bitmap font, one size, where FreeType is missing)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


@lru_cache(maxsize=None)
def file_face(path: str, size: int):
    """The font in ``path`` at ``size``; None when Pillow cannot read it (not a font, no FreeType)
    or it is not a regular file (a folder; a FIFO would block the job for good)."""
    from PIL import ImageFont

    if not os.path.isfile(path):
        return None
    try:
        return ImageFont.truetype(path, size)
    except (OSError, ValueError, ImportError):
        return None


def _bitmap(face, char: str) -> tuple:
    mask = face.getmask(char)
    return mask.size, bytes(mask)


@lru_cache(maxsize=None)
def _missing_box(face) -> tuple:
    return _bitmap(face, MISSING)


@lru_cache(maxsize=65536)
def draws(face, char: str) -> bool:
    """Whether ``face`` has a glyph for ``char`` (white space: always)."""
    if char.isspace():
        return True
    return _bitmap(face, char) != _missing_box(face)


def _lacking(face, text: str) -> str:
    return "".join(dict.fromkeys(char for char in text if not draws(face, char)))


def face_for(text: str, size: int):
    """The font to draw ``text`` in at ``size``: the built-in one when it draws every character,
    else the first candidate that does, else the one that draws the most."""
    face = default_face(size)
    lacking = _lacking(face, text)
    if not lacking:
        return face
    best, best_lacking = face, lacking
    for path in candidate_files(lacking):
        candidate = file_face(path, size)
        if candidate is None:
            continue
        left = _lacking(candidate, text)
        if not left:
            return candidate
        if len(left) < len(best_lacking):
            best, best_lacking = candidate, left
    return best


def undrawable(texts: list[str], size: int) -> str:
    """The characters of ``texts`` that no font here draws (each once, in order): what shows as
    boxes in the grid."""
    left = []
    for text in texts:
        left.append(_lacking(face_for(text, size), text))
    return "".join(dict.fromkeys("".join(left)))


def undrawable_note(texts: list[str], size: int) -> str | None:
    """A line for the log when some label characters can only be drawn as boxes; None when all draw."""
    left = undrawable(texts, size)
    if not left:
        return None
    shown = ", ".join(left[:12]) + (", …" if len(left) > 12 else "")
    chosen = os.environ.get(FONT_ENV, "").strip()
    where = f" ({FONT_ENV}={chosen} does not have them either)" if chosen else ""
    return (f"grid labels: no font here draws {shown}{where}: they show as boxes; set {FONT_ENV} to a .ttf/.otf/.ttc "
            "font file that has them (for Japanese: Noto Sans CJK, `apt install fonts-noto-cjk`)")
