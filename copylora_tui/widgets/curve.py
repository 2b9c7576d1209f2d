"""A small multi-row chart of a series (the loss curve, VRAM over time).

Each column is the mean of its share of the points, drawn as a bar with eighth-block steps,
with the top and bottom values written on the left. Bars and plain characters only: it reads
the same on a 256-colour terminal, over SSH, and in a snapshot.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

EIGHTHS = " ▁▂▃▄▅▆▇█"


def columns_of(values: list[float], width: int) -> list[float]:
    """Squeeze (mean of each share) or keep ``values`` so there is at most one per column."""
    if len(values) <= width:
        return list(values)
    out = []
    for col in range(width):
        start = col * len(values) // width
        end = max(start + 1, (col + 1) * len(values) // width)
        share = values[start:end]
        out.append(sum(share) / len(share))
    return out


def render_curve(values: list[float], width: int, height: int, *, label=lambda v: f"{v:.3g}", low: float | None = None, high: float | None = None) -> list[str]:
    """Rows of text, top row first; the y labels take the left edge."""
    values = [v for v in values if v is not None and v == v]
    if not values:
        return [""] * height
    top = high if high is not None else max(values)
    bottom = low if low is not None else min(values)
    labels = [label(top), label(bottom)]
    margin = max(len(t) for t in labels) + 1
    plot_w = max(1, width - margin)
    cols = columns_of(values, plot_w)
    span = top - bottom
    levels = [max(1, int(round((v - bottom) / span * height * 8))) if span > 0 else height * 4 for v in cols]  # min: a visible ▁
    rows = []
    for row in range(height):
        base = (height - 1 - row) * 8  # eighths below this row
        chars = "".join(EIGHTHS[max(0, min(8, level - base))] for level in levels)
        edge = labels[0] if row == 0 else (labels[1] if row == height - 1 else "")
        rows.append(f"{edge:>{margin - 1}}│{chars}")
    return rows


class Curve(Widget):
    """A chart widget; set ``values`` to redraw."""

    DEFAULT_CSS = """
    Curve { height: 5; }
    """

    # Redrawn when the values change, not on every read of the same ones: the monitor reads its
    # curve twice a second, and a redraw of the same picture still went to the terminal.
    values: reactive[list[float]] = reactive(list)
    high: reactive[float | None] = reactive(None)  # the top of the scale (the VRAM curve: the GPU's memory)

    def __init__(self, *, low: float | None = None, high: float | None = None, label=None, empty: str = "no data yet", **kwargs) -> None:
        super().__init__(**kwargs)
        self.low = low
        self.set_reactive(Curve.high, high)
        self.label = label or (lambda v: f"{v:.3g}")
        self.empty = empty

    def render(self) -> Text:
        if not self.values:
            return Text(self.empty, style="dim")
        rows = render_curve(self.values, self.size.width, max(1, self.size.height), label=self.label, low=self.low, high=self.high)
        return Text("\n".join(rows), style="cyan")
