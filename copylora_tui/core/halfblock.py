"""Pictures drawn with coloured half blocks, for terminals without a graphics protocol.

Each cell shows two pixels stacked: "▀" in the upper pixel's colour on the lower pixel's
colour. A terminal cell is about twice as tall as it is wide, so each half is about square
and a picture keeps its aspect when w×h pixels become w columns × h/2 rows. This needs only
Rich and Pillow (no terminal query, unlike textual-image), so it works over any SSH
connection; on a terminal without truecolor Rich converts the colours to 256 or 16.
"""

from __future__ import annotations

from pathlib import Path

from rich.color import Color
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style

UPPER_HALF = "▀"
THUMB_PX = 512  # decoded once at most this size: more than any pane shows, cheap to resize per draw


def fit_cells(width_px: int, height_px: int, max_cols: int, max_rows: int) -> tuple[int, int]:
    """The (columns, rows) a width_px × height_px picture takes in a max_cols × max_rows box,
    aspect kept (one cell = one pixel wide, two pixels tall). (0, 0) when nothing fits."""
    if min(width_px, height_px, max_cols, max_rows) <= 0:
        return 0, 0
    scale = min(max_cols / width_px, 2 * max_rows / height_px)
    cols = max(1, min(max_cols, round(width_px * scale)))
    rows = max(1, min(max_rows, round(height_px * scale / 2)))
    return cols, rows


def load_thumbnail(path: Path):
    """The picture as RGB, shrunk to at most THUMB_PX (decoding is the slow part: do it once,
    in a thread)."""
    from PIL import Image

    from engine.project.images import quiet_pillow

    with quiet_pillow(), Image.open(path) as image:
        picture = image.convert("RGB")
    picture.thumbnail((THUMB_PX, THUMB_PX))
    return picture


def cell_rows(picture, cols: int, rows: int) -> list[list[tuple[tuple[int, int, int], tuple[int, int, int]]]]:
    """(upper, lower) colours per cell of ``picture`` resized to cols × 2·rows pixels; the box
    filter averages every source pixel, which keeps a downsized grid legible."""
    from PIL import Image

    small = picture.resize((cols, 2 * rows), Image.Resampling.BOX)
    pixels = small.load()
    return [[(pixels[c, 2 * r], pixels[c, 2 * r + 1]) for c in range(cols)] for r in range(rows)]


class HalfBlock:
    """A Rich renderable: ``picture`` (a Pillow RGB image) fitted into width × height cells,
    centred horizontally."""

    def __init__(self, picture, width: int, height: int) -> None:
        self.picture = picture
        self.width = width
        self.height = height

    def size(self) -> tuple[int, int]:
        return fit_cells(self.picture.width, self.picture.height, self.width, self.height)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        cols, rows = self.size()
        if not cols:
            return
        pad = Segment(" " * ((self.width - cols) // 2))
        # One Style per colour pair of this drawing. Not shared between drawings: a Rich Style
        # keeps the escape codes of the first console that rendered it (truecolor or 256).
        styles: dict[tuple, Style] = {}
        for row in cell_rows(self.picture, cols, rows):
            yield pad
            for pair in row:
                style = styles.get(pair)
                if style is None:
                    style = styles[pair] = Style(color=Color.from_rgb(*pair[0]), bgcolor=Color.from_rgb(*pair[1]))
                yield Segment(UPPER_HALF, style)
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(self.size()[0], self.width)
