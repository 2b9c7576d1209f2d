"""Error types shared by the engine and its front ends.

The CLI maps them to exit codes: an :class:`InputError` (an input the user can fix: a value, a
picture, a LoRA file, a base model) is exit 2, any other :class:`CopyloraError` (the work itself
failed, or the machine said no) is exit 1. Each carries a
message meant to be shown as-is, one line per problem, with no traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")


def plain_text(text: str) -> str:
    """Text from a library's exception, fit for one of our one-line messages: terminal
    escape codes removed (torch colours parts of its pickle errors) and other control
    characters shown as spaces."""
    text = _ANSI.sub("", str(text))
    return "".join(c if c.isprintable() or c == "\n" else " " for c in text)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, as plain text (else its type)."""
    for line in plain_text(str(exc)).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class CopyloraError(Exception):
    """A failure the user should see as a clear message, not a traceback."""


class InputError(CopyloraError):
    """Something the user gave that cannot be used as it is (a value, a picture, a LoRA file, a
    base model, a merge's inputs): fixing the input, not retrying, is what helps. The CLI's exit 2,
    as a script reads it; a failure of the work itself (exit 1) may go away when run again."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (a TOML key path or file) and what."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ValidationError(InputError):
    """Input that fails validation. Holds *every* problem found, not just the first."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        count = len(self.problems)
        lines = [f"{head}{count} problem{'s' if count != 1 else ''}:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ModelError(InputError):
    """A base model that cannot be found, read or recognised."""


class LoRAFileError(InputError):
    """A LoRA file that cannot be read (missing, truncated, not safetensors, bad keys)."""


def os_error_text(exc: OSError) -> str:
    """``/x/y: Permission denied`` rather than ``[Errno 13] Permission denied: '/x/y'``; a
    hidden staging file or folder (``.name.abc123.tmp``, made to be renamed into place) is
    said as the folder it was to be written in, the one the user can do something about."""
    if not exc.filename:
        return str(exc)
    where = Path(str(exc.filename))
    if where.name.startswith("."):
        return f"cannot write in {where.parent}: {exc.strerror or exc}"
    return f"{where}: {exc.strerror or exc}"
