"""The Rich console every command prints through.

On a terminal Rich fits the output to its width. Written to a pipe or a file there is no
width to fit, and Rich then assumes 80 columns: `copylora queue > jobs.txt` or `| grep`
used to get `example-monochr…  runni…`. There the lines are as long as their content
instead (``$COLUMNS``, when set, still wins, as Rich reads it).
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

# No real line is this long; tables are not expanded, so nothing is padded to it.
UNBOUNDED = 10_000


def output_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        terminal = False
    if terminal or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNBOUNDED)
