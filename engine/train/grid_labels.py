"""The labels of preview grids and of the check picture, fitted to their cells.

Preview cells can be as small as the tiny and toy models draw (64×64 pixels): a label drawn
in one line at Pillow's default font ran into the next column ("result" into "picture B"),
off the picture (the title) or was cut ("backgrou"). Here each label is wrapped at word
boundaries within its cell, in a smaller font when a word or the number of lines does not fit
at the default size, and broken inside words only as a last resort; the bands that hold the
labels grow to their height, so every label is whole. Measured with the font itself
(``getbbox``), so the layout is what Pillow draws. Each label's font is the built-in one unless
its text has characters that font lacks (engine.train.label_fonts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from engine.train.label_fonts import draws, face_for

PAD = 4  # pixels between a label and its cell's edges, so neighbouring labels never touch
FONT_SIZES = (10, 8, 7)  # Pillow's default font at these sizes: the first that fits is used
MOST_LINES = 12  # beyond this (a very long prompt) the label ends in "…"; the PNG's text has it whole


def shown(text: str, face) -> str:
    """``text`` as drawn: the built-in font's space is 2 pixels at every size, so at 10 a label
    read "Aat0.5 + resultat 1"; its spaces are drawn doubled (a user's font keeps its own)."""
    from engine.train.label_fonts import default_face

    return text.replace(" ", "  ") if face is default_face(getattr(face, "size", 0)) else text


def text_width(text: str, face) -> int:
    """The right edge of ``text`` drawn at x = 0: what it covers."""
    return int(face.getbbox(shown(text, face))[2]) if text else 0


@lru_cache(maxsize=None)
def line_height(face) -> int:
    return int(face.getbbox("ÁAgjy|")[3]) + 1


@dataclass(frozen=True)
class Label:
    lines: tuple[str, ...]
    face: object
    line_height: int

    @property
    def height(self) -> int:
        return len(self.lines) * self.line_height

    @property
    def width(self) -> int:
        return max((text_width(line, self.face) for line in self.lines), default=0)


def _wrap_words(text: str, face, width: int) -> list[str] | None:
    """Lines of whole words within ``width``; None when a word alone is wider."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, face) <= width:
                line = candidate
            elif text_width(word, face) <= width:
                lines.append(line)
                line = word
            else:
                return None
        lines.append(line)
    return lines


def _wrap_chars(text: str, face, width: int) -> list[str]:
    """Lines broken anywhere (a word wider than the cell even in the smallest font)."""
    lines: list[str] = []
    line = ""
    for char in text:
        if char == "\n" or (line and text_width(line + char, face) > width):
            lines.append(line)
            line = "" if char in " \n" else char
        else:
            line += char
    return [*lines, line]


def fit_label(text: str, width: int, most_lines: int = 3) -> Label:
    """``text`` as lines that each fit ``width`` pixels: whole words at the largest of
    :data:`FONT_SIZES` that needs at most ``most_lines`` lines, else whole words at the smallest
    size (any number of lines), else broken inside words."""
    width = max(1, width)
    for size in FONT_SIZES:
        face = face_for(text, size)
        lines = _wrap_words(text, face, width)
        if lines is not None and len(lines) <= most_lines:
            return Label(tuple(lines), face, line_height(face))
    face = face_for(text, FONT_SIZES[-1])
    lines = _wrap_words(text, face, width) or _wrap_chars(text, face, width)
    if len(lines) > MOST_LINES:
        ellipsis = "…" if draws(face, "…") else "..."  # the built-in font has "…"; a user's font may not
        last = lines[MOST_LINES - 1]
        while last and text_width(last + ellipsis, face) > width:
            last = last[:-1]
        lines = [*lines[:MOST_LINES - 1], last + ellipsis]
    return Label(tuple(lines), face, line_height(face))


@dataclass(frozen=True)
class LabelBox:
    """A label and where it is drawn: (x, y) its top left; it stays within ``width``."""

    x: int
    y: int
    width: int
    label: Label


@dataclass(frozen=True)
class GridLayout:
    size: tuple[int, int]  # the canvas
    labels: list[LabelBox]
    cells: list[list[tuple[int, int]]]  # each picture's top left, [row][column]


def _band(label: Label) -> int:
    return label.height + PAD


def grid_layout(cell: tuple[int, int], title: str, columns: list[str], rows: list[str]) -> GridLayout:
    """Where a grid's title, column labels, row labels (one above each row) and pictures go."""
    cell_w, cell_h = cell
    canvas_w = len(columns) * cell_w
    boxes: list[LabelBox] = []
    top = 0
    if title:
        label = fit_label(title, canvas_w - 2 * PAD)
        boxes.append(LabelBox(PAD, top + PAD // 2, canvas_w - 2 * PAD, label))
        top += _band(label)
    column_labels = [fit_label(text, cell_w - 2 * PAD) for text in columns]
    for c, label in enumerate(column_labels):
        boxes.append(LabelBox(c * cell_w + PAD, top + PAD // 2, cell_w - 2 * PAD, label))
    top += max((_band(label) for label in column_labels), default=0)
    cells = []
    for text in rows:
        label = fit_label(text, canvas_w - 2 * PAD, most_lines=4)
        boxes.append(LabelBox(PAD, top + PAD // 2, canvas_w - 2 * PAD, label))
        top += _band(label)
        cells.append([(c * cell_w, top) for c in range(len(columns))])
        top += cell_h
    return GridLayout((canvas_w, top), boxes, cells)


def draw_labels(draw, layout: GridLayout, fill: str = "black") -> None:
    for box in layout.labels:
        for i, line in enumerate(box.label.lines):
            draw.text((box.x, box.y + i * box.label.line_height), shown(line, box.label.face), fill=fill, font=box.label.face)
