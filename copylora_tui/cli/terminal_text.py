"""Text from outside (logs, file and folder names, error messages) written to the user's
terminal without the control sequences that would drive that terminal.

A project someone shared can name a folder or a picture with an escape sequence: one that sets
the window title, writes the clipboard (OSC 52), asks the terminal to answer into the shell's
input, or clears the screen. Every command printed such names as they were (`copylora check`,
`queue`, the errors). On a terminal, :func:`guarded_output` passes each command's output through
:func:`terminal_control_safe`: colours and the cursor moves Rich's progress bars use are kept,
the rest dropped, and other control characters shown as ``�``. A job's log (`copylora logs`)
keeps colours only (:func:`terminal_safe`); it is also read from its end without reading it
whole, in UTF-8 that a chunk boundary cannot break. Into a pipe or a file everything goes as it
is, for scripts.
"""

from __future__ import annotations

import codecs
import re
import sys
from contextlib import contextmanager
from typing import IO, Iterator

CHUNK = 1 << 16

# One escape sequence, whole: CSI (ESC [ … final byte), OSC / DCS / APC / PM / SOS strings up to BEL or
# ST, a two-character escape; or a lone control character (C0 but \t \n \r, DEL, C1).
_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\|$)|\x1b[ -~]?|\x9b[0-?]*[ -/]*[@-~]"
                       r"|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f]")
_COLOUR = re.compile(r"\x1b\[[0-9;:]*m")
# An escape sequence that has ended (the last one of a read: one that has not waits for the next read).
_WHOLE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[^\[\]PX^_]")
# What Rich itself writes on a terminal: colours, cursor moves within the output, erasing a line,
# hiding and showing the cursor (its progress bars and live tables). Nothing here reports back
# or changes a mode that outlives the command (mouse reporting, bracketed paste, the alternate screen).
_DRAWING = re.compile(r"\x1b\[[0-9;:]*[ABCDGKm]|\x1b\[\?25[hl]")


def terminal_control_safe(text: str) -> str:
    """``text`` with the sequences Rich draws with kept, and every other control sequence or
    character made harmless."""
    return _SEQUENCE.sub(lambda m: m.group(0) if _DRAWING.fullmatch(m.group(0)) else _dropped(m.group(0)), text)


def _dropped(found: str) -> str:
    return "" if found[0] in "\x1b\x9b" else "\ufffd"


def terminal_safe(text: str) -> str:
    """``text`` with its colours kept and every other control sequence or character made harmless."""
    return _SEQUENCE.sub(lambda m: m.group(0) if _COLOUR.fullmatch(m.group(0)) else _dropped(m.group(0)), text)


class LogWriter:
    """Bytes of a log in, text out to ``stream``. A multi-byte character split between two
    reads (``logs -f`` reads whatever was appended) waits for its other half instead of becoming
    two ``�``; an escape sequence split between reads waits too, on a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.terminal = is_terminal(stream)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # the start of an escape sequence whose end has not been read yet

    def write(self, data: bytes, final: bool = False) -> None:
        text = self._decoder.decode(data, final)
        if self.terminal:
            text = self._held + text
            cut = text.rfind("\x1b")
            whole = cut < 0 or len(text) - cut > 256 or _WHOLE.match(text, cut) is not None
            self._held, text = ("", text) if final or whole else (text[cut:], text[:cut])
            text = terminal_safe(text)
        self.stream.write(text)
        self.stream.flush()


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is a terminal; a missing, closed or replaced stream is not."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def last_lines_start(handle: IO[bytes], size: int, lines: int) -> int:
    """Where the last ``lines`` lines of a file of ``size`` bytes start, read back from its end
    a chunk at a time (`logs -n 50` of a day-long run's log read it whole before)."""
    if lines <= 0:
        return size
    end = size
    handle.seek(max(0, end - 1))
    if end and handle.read(1) == b"\n":
        end -= 1  # the newline that ends the last line does not start another
    found, position = 0, end
    while position > 0:
        start = max(0, position - CHUNK)
        handle.seek(start)
        block = handle.read(position - start)
        at = len(block)
        while (at := block.rfind(b"\n", 0, at)) >= 0:
            found += 1
            if found == lines:
                return start + at + 1
        position = start
    return 0


def copy_range(handle: IO[bytes], start: int, end: int, out: LogWriter) -> None:
    """Bytes ``start``..``end`` of ``handle`` to ``out``, a chunk at a time."""
    handle.seek(start)
    while start < end:
        block = handle.read(min(CHUNK, end - start))
        if not block:
            break
        out.write(block)
        start += len(block)



class _GuardedStream:
    """A text stream whose writes pass :func:`terminal_control_safe`; all else is the stream's."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(terminal_control_safe(text))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextmanager
def guarded_output() -> Iterator[None]:
    """sys.stdout and sys.stderr guarded while a command runs, each where it is a terminal."""
    saved = sys.stdout, sys.stderr
    if is_terminal(sys.stdout):
        sys.stdout = _GuardedStream(sys.stdout)  # type: ignore[assignment]
    if is_terminal(sys.stderr):
        sys.stderr = _GuardedStream(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
