"""One name, two spellings: Unicode's composed (NFC) and decomposed (NFD) forms of a file name.

A Japanese name with a voiced kana (が is か + ゛) is one code point a kana as typed on Linux
and Windows (NFC), and two in a folder copied from a Mac (macOS's file systems stored names
decomposed, NFD, and zip, rsync and Finder copies keep that). The two look alike in ``ls`` and
in the app, but Linux's file systems tell them apart: ``copylora check projects/がぎぐ``, typed,
said "no such project folder" for the folder ``ls`` showed, and ``copylora new がぎぐ`` made a
second folder beside it that looks the same.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path


def spelled_as_on_disk(path: Path | str) -> Path | None:
    """``path`` with each missing part replaced by the one entry of its folder whose name is
    that part in another normalisation form, or None when a part has no such entry (or
    several). A path that exists is itself."""
    path = Path(path)
    if os.path.lexists(path):
        return path
    parent, name = path.parent, path.name
    if not name or parent == path:
        return None
    if not os.path.lexists(parent):
        found = spelled_as_on_disk(parent)
        if found is None:
            return None
        if os.path.lexists(found / name):
            return found / name
        parent = found
    return same_name_entry(parent / name)


def same_name_entry(path: Path | str) -> Path | None:
    """The one other entry beside ``path`` whose name is ``path``'s in another Unicode
    normalisation form, or None (none, or more than one: which one would be a guess)."""
    path = Path(path)
    if path.name.isascii():  # ASCII has one form: no folder to read
        return None
    key = unicodedata.normalize("NFC", path.name)
    try:
        names = os.listdir(path.parent)
    except (OSError, ValueError):
        return None
    found = [name for name in names if name != path.name and unicodedata.normalize("NFC", name) == key]
    return path.parent / found[0] if len(found) == 1 else None


def unicode_form(name: str) -> str:
    """"NFC", "NFD" or "mixed": how ``name`` is spelled, for a message."""
    return next((form for form in ("NFC", "NFD") if unicodedata.is_normalized(form, name)), "mixed")
