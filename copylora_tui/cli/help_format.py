"""--help text that fits the terminal: prose rewrapped to its width, examples and tables kept.

argparse's RawDescriptionHelpFormatter keeps a description as written, so its lines were as
wide as the source (bake's 117 columns, extract's 174); its plain formatter rewraps everything,
examples and the environment table included. Here a paragraph whose lines start at the margin
is prose and is filled to the width; an indented line is kept as it is.
"""

from __future__ import annotations

import argparse
import textwrap

from rich.cells import cell_len


class ParagraphHelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks, block = [], []
        for line in text.splitlines():
            if not line.strip() or line.startswith(" "):
                if block:
                    blocks.append(_fill(" ".join(block), width, indent))
                    block = []
                blocks.append(indent + line if line.strip() else "")
            else:
                block.append(line.strip())
        if block:
            blocks.append(_fill(" ".join(block), width, indent))
        return "\n".join(blocks)


def _fill(text: str, width: int, indent: str) -> str:
    """``text`` filled to ``width`` terminal cells (コピー機 takes two a character)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and cell_len(lines[-1]) + 1 + cell_len(word) <= width - len(indent):
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(indent + line for line in lines) if lines else textwrap.indent(text, indent)
