"""The Rich console every command prints through.

On a terminal Rich fits the output to its width. Written to a pipe or a file there is no
width to fit, and Rich then assumes 80 columns: `copylora queue > jobs.txt` or `| grep`
used to get `example-monochr…  runni…`. There the lines are as long as their content
instead (``$COLUMNS``, when set, still wins, as Rich reads it). A ``$COLUMNS`` that is no width
(0, negative, not a number) is ignored: Rich took ``COLUMNS=0`` as a width of nothing and every
command printed nothing at all, with exit 0.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

# No real line is this long; tables are not expanded, so nothing is padded to it.
UNBOUNDED = 10_000


def columns() -> int | None:
    """``$COLUMNS`` when it is a width (a whole number above 0), else None."""
    value = os.environ.get("COLUMNS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def output_console(stderr: bool = False) -> Console:
    from copylora_tui.cli.terminal_text import is_terminal

    stream = sys.stderr if stderr else sys.stdout
    terminal = is_terminal(stream)
    width = columns()
    if width is None and terminal and "COLUMNS" in os.environ:  # a $COLUMNS that is no width: the terminal's own
        try:
            width = os.get_terminal_size(stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            width = 80
    if width is not None:
        return Console(stderr=stderr, width=width)
    return Console(stderr=stderr) if terminal else Console(stderr=stderr, width=UNBOUNDED)  # on a terminal Rich asks it
