"""Names and messages the app shows cannot drive the terminal it draws on.

Rich's Text and Textual's Content drop a few control characters (bell, backspace, vertical tab,
form feed, carriage return) from what they display, but not ESC: a project folder named with an
escape sequence, as a project someone shared may be, went to the terminal as it was in every
cell and line that showed it (measured: the Queue screen sent ``ESC ] 0 ; … `` and ``ESC [ 2 J``
from a folder's name: a window title set, the screen cleared under the app; ``ESC ] 52`` would
write the clipboard). Both libraries strip through one translation table each; here those
tables also turn every other C0 control (but tab and newline), DEL and the C1 controls into
``�``, so the name shows, harmless. The app's own drawing never goes through them (Textual
writes its sequences itself; textual-image sends pictures as control segments).
"""

from __future__ import annotations

SHOWN_AS = "\ufffd"
CONTROLS = [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]  # all but \t and \n


def guard_displayed_text() -> None:
    """Extend Rich's and Textual's control-code tables (idempotent). A version without one (the
    pyproject allows Textual 1.x, which draws through Rich's Text) is passed over: the app must
    start; tests/test_app_queue.py checks the effect on the versions installed."""
    import importlib

    for module in ("rich.control", "textual.content"):
        try:
            table = getattr(importlib.import_module(module), "_CONTROL_STRIP_TRANSLATE", None)
        except ImportError:
            table = None
        if isinstance(table, dict):
            for code in CONTROLS:
                table.setdefault(code, SHOWN_AS)  # the ones they already drop stay dropped
