"""Grid labels fit their cells: wrapped, never cut, never over a picture or another label."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

CHECK_COLUMNS = ["A at 1", "A at 1 + result at 1", "picture B"]



LONG_TITLE = "check: A + the result should draw picture B"



LONG_PROMPTS = ["a red triangle on a blue background", "a very-long-unbreakable-word-that-cannot-fit-in-one-cell and more"]



@pytest.mark.parametrize("text", [*CHECK_COLUMNS, "strength 0.5", LONG_TITLE, *LONG_PROMPTS])
@pytest.mark.parametrize("width", [56, 120])
def test_a_label_fits_its_width_and_stays_whole(text, width):
    from engine.train.grid_labels import fit_label, text_width

    label = fit_label(text, width)
    assert all(text_width(line, label.face) <= width for line in label.lines)
    assert "".join(label.lines).replace(" ", "") == text.replace(" ", "")  # nothing cut



def _rect_overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]



@pytest.mark.parametrize("title, columns, prompts", [
    (LONG_TITLE, CHECK_COLUMNS, [""]),  # the check picture
    ("example-toy.safetensors", ["strength 0", "strength 0.5", "strength 1"], LONG_PROMPTS),  # the toy grid
    ("x", ["strength 1"], ["a red triangle on a blue background"]),  # one column: the narrowest row label
])
def test_grid_labels_stay_in_their_cells_at_64_pixels(tmp_path, title, columns, prompts):
    from engine.train.grid_labels import grid_layout
    from engine.train.sample import SampleSettings, grid

    cell = (64, 64)
    images = [[Image.new("RGB", cell, (40, 200, 40)) for _ in columns] for _ in prompts]
    settings = SampleSettings(prompts=prompts, strengths=[float(i) for i in range(len(columns))])
    canvas = grid(images, settings, title, columns)
    layout = grid_layout(cell, title, columns, [f"prompt: {p!r}" for p in prompts])
    assert canvas.size == layout.size
    boxes = [(b.x, b.y, b.x + b.width, b.y + b.label.height) for b in layout.labels]
    for box, placed in zip(boxes, layout.labels):
        assert 0 <= box[0] and box[2] <= canvas.width and box[3] <= canvas.height  # the title is not cut at the edge
        assert placed.label.width <= placed.width
    cells = [(x, y, x + cell[0], y + cell[1]) for row in layout.cells for x, y in row]
    for i, a in enumerate(boxes + cells):
        assert not any(_rect_overlap(a, b) for b in (boxes + cells)[i + 1:])  # no label runs into another, or a picture
    # every pixel of ink lies in its label's box (1 pixel of anti-aliasing aside) or in a picture
    ink = np.asarray(canvas).min(axis=2) < 250
    allowed = np.zeros_like(ink)
    for x0, y0, x1, y1 in boxes:
        allowed[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = True
    for x0, y0, x1, y1 in cells:
        allowed[y0:y1, x0:x1] = True
    assert not (ink & ~allowed).any()
    canvas.save(tmp_path / "grid.png")


def test_words_are_drawn_apart_in_the_built_in_font():
    """The built-in font's space is 2 pixels at every size: at 10 "A at 0.5 + result at 1" read
    "Aat0.5 + resultat 1". Its spaces are drawn doubled; the drawn gap between words is at
    least a third of the height of a letter."""
    from PIL import ImageDraw

    from engine.train.grid_labels import LabelBox, draw_labels, fit_label
    from engine.train.label_fonts import default_face

    label = fit_label("A at", 200)
    assert label.face is default_face(10)
    image = Image.new("L", (60, 20), 255)
    draw_labels(ImageDraw.Draw(image), type("Layout", (), {"labels": [LabelBox(0, 0, 60, label)]})())
    inked = np.flatnonzero((np.asarray(image) < 128).any(axis=0))
    gaps = np.diff(inked) - 1
    assert gaps.max() >= 3, inked  # the space between "A" and "at": 2 pixels drew as 1
