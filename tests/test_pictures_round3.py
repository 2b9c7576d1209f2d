"""Teacher pictures read alike everywhere (16-bit, transparency, EXIF orientation), A/B pair
warnings, and grid labels that fit their cells (issue 29)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from copylora_tui.cli.main import main
from engine.project.folder import load_project
from engine.project.images import load_picture, pair_warnings, picture_warnings, read_image_info
from engine.project.plan import make_plan, plan_warnings
from tests.helpers import copy_example

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def sixteen_bit_gray(path: Path, value: int = 32768, size=(128, 192)) -> Path:
    """A 16-bit grayscale PNG at ``value`` of 65535 (Pillow writes mode I;16 as 16-bit gray)."""
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint16)).save(path)
    return path


def half_transparent(path: Path, mode: str = "RGBA", size=(128, 192)) -> Path:
    """Left half opaque red (or dark in LA), right half fully transparent black."""
    image = Image.new("RGBA", size, (*RED, 255))
    image.paste((0, 0, 0, 0), (size[0] // 2, 0, size[0], size[1]))
    image.convert(mode).save(path)
    return path


def rotated_jpeg(path: Path, stored=(192, 128)) -> Path:
    """Stored landscape: left half red, right half blue, with EXIF orientation 6 (turn 90°
    clockwise to show): shown portrait, red on top."""
    image = Image.new("RGB", stored, RED)
    image.paste(BLUE, (stored[0] // 2, 0, stored[0], stored[1]))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, quality=95, exif=exif)
    return path


def replace_picture(root: Path, side: str, make) -> Path:
    folder = root / side
    for old in folder.iterdir():
        old.unlink()
    return make(folder)


# ---------------------------------------------------------------- 1. every picture read alike


def test_a_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    path = sixteen_bit_gray(tmp_path / "g16.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # what the bug clipped: convert("RGB") makes it 255
    picture = load_picture(path)
    assert picture.mode == "RGB" and picture.getpixel((5, 5)) == (128, 128, 128)


def test_16_bit_teacher_passes_check_and_trains_as_its_gray(tmp_path, capsys):
    pytest.importorskip("torch")
    from engine.train.teacher import load_bucketed

    root = copy_example(tmp_path)
    replace_picture(root, "a", lambda folder: sixteen_bit_gray(folder / "gray16.png"))
    assert main(["check", str(root)]) == 0
    plan = make_plan(load_project(root))
    pixels = load_bucketed(plan.side("a").images[0].path, plan.side("a").buckets[0])
    assert abs(float(pixels.mean())) < 0.02  # mid-gray is ~0 in [-1, 1]; the bug gave 1.0 (white)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_areas_are_put_on_white(tmp_path, mode):
    path = half_transparent(tmp_path / f"t-{mode}.png", "RGBA" if mode == "P" else mode)
    if mode == "P":  # a palette picture whose transparency is a tRNS entry
        rgba = Image.open(path).convert("RGBA")
        palette = rgba.convert("RGB").quantize(colors=4)
        transparent = palette.getpixel((rgba.width - 1, 0))
        palette.info["transparency"] = transparent
        palette.save(path, transparency=transparent)
        with Image.open(path) as reread:
            assert reread.mode == "P" and "transparency" in reread.info
    picture = load_picture(path)
    assert picture.getpixel((picture.width - 1, 0)) == WHITE  # was black
    assert picture.getpixel((0, 0)) != WHITE


def test_transparency_is_a_warning_at_check_and_in_the_log(tmp_path, capsys):
    root = copy_example(tmp_path)
    replace_picture(root, "b", lambda folder: half_transparent(folder / "cutout.png"))
    assert main(["check", str(root)]) == 0
    err = capsys.readouterr().err
    assert "warning: b.folder cutout.png: has transparent areas: they train as white" in err
    info = read_image_info(root / "b" / "cutout.png")
    # the trainer logs picture_warnings per side (engine.train.training_data.training_data)
    assert any("transparent" in w for w in picture_warnings(info, (128, 192), "b.folder"))
    opaque = read_image_info(root / "a" / "colour.png")
    assert not any("transparent" in w for w in picture_warnings(opaque, (128, 192), "a.folder"))


def test_exif_orientation_is_applied_to_sizes_buckets_and_pixels(tmp_path):
    pytest.importorskip("torch")
    from engine.train.teacher import load_bucketed

    path = rotated_jpeg(tmp_path / "phone.jpg")
    assert (read_image_info(path).width, read_image_info(path).height) == (128, 192)
    header_only = read_image_info(path, decode=False)
    assert (header_only.width, header_only.height) == (128, 192)
    picture = load_picture(path)
    assert picture.size == (128, 192)
    top, bottom = picture.getpixel((64, 20)), picture.getpixel((64, 170))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60

    root = copy_example(tmp_path / "p")
    replace_picture(root, "a", lambda folder: shutil.copy(path, folder / "phone.jpg"))
    plan = make_plan(load_project(root))
    bucket = plan.side("a").buckets[0]
    assert bucket == (128, 192)  # the rotated photo's bucket (the bug: 192×128)
    pixels = load_bucketed(plan.side("a").images[0].path, bucket)
    assert tuple(pixels.shape) == (3, 192, 128)
    assert float(pixels[0, :40].mean()) > 0.6 and float(pixels[2, -40:].mean()) > 0.6  # red on top, blue below


def test_the_app_shows_teacher_pictures_as_training_reads_them(tmp_path, monkeypatch):
    from copylora_tui import teacher_images

    monkeypatch.setattr(teacher_images, "_image_class", lambda picture, **kwargs: picture)  # the widget gets what we decoded
    shown = teacher_images.image_widget(rotated_jpeg(tmp_path / "phone.jpg"))
    assert shown.size == (128, 192)
    gray = teacher_images.image_widget(sixteen_bit_gray(tmp_path / "g16.png"))
    assert gray.getpixel((3, 3)) == (128, 128, 128)


# ---------------------------------------------------------------- 2. A and B compared


def test_a_and_b_the_same_file_or_pixels_are_warned_at_check(tmp_path, capsys):
    root = copy_example(tmp_path)
    a_picture = root / "a" / "colour.png"
    replace_picture(root, "b", lambda folder: shutil.copy(a_picture, folder / "copy.png"))
    assert main(["check", str(root), "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert any("a.folder colour.png and b.folder copy.png are identical files" in w for w in warnings)

    # the same pixels in another file (re-encoded, other compression): still no change to learn
    Image.open(a_picture).convert("RGB").save(root / "b" / "copy.png", compress_level=0)
    assert (root / "b" / "copy.png").read_bytes() != a_picture.read_bytes()
    assert main(["check", str(root)]) == 0
    assert "are pixel-identical: B − A is zero there" in capsys.readouterr().err

    # B's picture a link to A's (one folder for both is an error already)
    (root / "b" / "copy.png").unlink()
    (root / "b" / "link.png").symlink_to(a_picture)
    warnings = plan_warnings(make_plan(load_project(root)))
    assert any("are the same file" in w for w in warnings)


def test_a_and_b_of_different_sizes_are_warned(tmp_path, capsys):
    root = copy_example(tmp_path)
    with Image.open(root / "a" / "colour.png") as a:
        size = a.size
    b = next((root / "b").iterdir())
    with Image.open(b) as picture:
        picture.resize((size[0] * 2, size[1] * 2)).save(b)
    assert main(["check", str(root)]) == 0
    err = capsys.readouterr().err
    assert f"a.folder colour.png is {size[0]}×{size[1]} but b.folder {b.name} is {size[0] * 2}×{size[1] * 2}" in err
    # a proper pair says nothing
    assert pair_warnings(make_plan(load_project(copy_example(tmp_path / "ok"))).side("a").images,
                         make_plan(load_project(copy_example(tmp_path / "ok2"))).side("b").images) == []


def test_the_form_shows_the_pair_warning(tmp_path):
    from copylora_tui.screens.project import plan_summary
    from tests.helpers import rendered

    root = copy_example(tmp_path)
    replace_picture(root, "b", lambda folder: shutil.copy(root / "a" / "colour.png", folder / "same.png"))
    text = rendered(plan_summary(load_project(root)))
    assert "⚠ a.folder colour.png and b.folder same.png are identical files" in text


def test_the_training_log_says_a_equals_b_at_start(tmp_path, tiny):
    from engine.train.trainer import train

    root = copy_example(tmp_path)
    replace_picture(root, "b", lambda folder: shutil.copy(root / "a" / "colour.png", folder / "same.png"))
    lines: list[str] = []
    train(make_plan(load_project(root), max_steps=1), "a", model=tiny, log=lines.append)
    said = [line for line in lines if "identical files" in line]
    assert len(said) == 1 and said[0].startswith("warning: a.folder colour.png and b.folder same.png")
    assert lines.index(said[0]) < next(i for i, line in enumerate(lines) if line.startswith("training "))


# ---------------------------------------------------------------- 3. labels that fit


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
