"""A TOML file a user wrote (``copylora.toml``, ``keymap.toml``, ``worker.toml``), as text.

TOML is UTF-8 by its specification, and ``tomllib`` refuses a leading byte-order mark with
"Invalid statement (at line 1, column 1)", which names neither the mark nor a fix; Notepad and
other Windows editors save "UTF-8 with BOM", so the mark is dropped here, as the caption files'
is (engine.project.concepts). A Shift-JIS file (a Japanese Windows editor's default) is named as
such instead of as a codec's byte offset.
"""

from __future__ import annotations

BOM = "\ufeff"


def decode_toml(raw: bytes) -> str:
    """``raw`` as text, without a leading BOM. ValueError with the line a user reads when it is
    not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(not_utf8(raw, exc)) from None
    return text.removeprefix(BOM)


def not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    """Why a TOML file that is not UTF-8 cannot be read, and how to fix it."""
    line = raw.count(b"\n", 0, exc.start) + 1
    hint = ""
    try:
        raw.decode("cp932")
        hint = " (it reads as Shift-JIS/cp932, as a Japanese Windows editor saves it)"
    except UnicodeDecodeError:
        pass
    return f"not UTF-8 at line {line} (byte 0x{raw[exc.start]:02x}){hint}: TOML files are UTF-8; save it as UTF-8 in your editor"
