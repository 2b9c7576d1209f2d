"""Teacher pictures read alike everywhere (16-bit, transparency, EXIF orientation), A/B pair
warnings, and pictures too small or too large to train from said at check, in the form and in the log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from copylora_tui.cli.main import EXIT_USAGE, main
from engine.project.folder import load_project
from engine.project.images import load_picture, pair_warnings, picture_warnings, read_image_info
from engine.project.plan import make_plan, plan_warnings
from tests.helpers import check, copy_example, needs_torch, set_keys, write_png

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


def test_many_pairs_are_compared_without_keeping_every_picture(tmp_path):
    """A and B compared by each picture's digest: the pairwise comparison kept every decoded
    picture (2.2 GB for 30 pairs of 12 Mpx photos, in check, the form and the job) and took
    16 s for 300 pairs."""
    import tracemalloc

    def side(name: str, count: int) -> list:
        (tmp_path / name).mkdir()
        infos = []
        for i in range(count):
            path = tmp_path / name / f"{i:03d}.png"
            Image.new("RGB", (256, 256), (i, 40 if name == "a" else 80, 7)).save(path, compress_level=1)
            infos.append(read_image_info(path))
        return infos

    a, b = side("a", 24), side("b", 24)
    Image.open(a[5].path).save(b[17].path, compress_level=0)  # the same pixels, other bytes
    tracemalloc.start()
    warnings = pair_warnings(a, b)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert warnings == ["a.folder 005.png and b.folder 017.png are pixel-identical: B − A is zero there, "
                        "so the LoRA learns no change from them (B should be A changed in the wanted way)"]
    assert peak < 10 * 256 * 256 * 3, f"{peak / 1e6:.1f} MB held to compare 48 pictures of 0.2 MB"


def test_hidden_files_in_a_teacher_folder_are_not_pictures(tmp_path, capsys):
    """A folder copied from a Mac to a USB or network disk has ``._NAME.png`` beside each
    picture (AppleDouble: Finder data, not an image), and .DS_Store; check refused the project."""
    root = copy_example(tmp_path)
    (root / "a" / "._colour.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (root / "b" / ".DS_Store").write_bytes(bytes(64))
    assert main(["check", str(root)]) == 0
    assert "._colour.png" not in capsys.readouterr().err
    assert [i.path.name for i in make_plan(load_project(root)).side("a").images] == ["colour.png"]
    # a hidden picture given to `new` is copied under a visible name, so it is the project's picture
    (tmp_path / ".hidden.png").write_bytes((root / "a" / "colour.png").read_bytes())
    assert main(["new", str(tmp_path / "from-hidden"), "--a", str(tmp_path / ".hidden.png"), "--b", str(root / "b" / "monochrome.png")]) == 0
    assert [p.name for p in (tmp_path / "from-hidden" / "a").iterdir()] == ["hidden.png"]


def test_an_animated_picture_is_said_to_train_its_first_frame(tmp_path, capsys):
    """An animated WebP (a phone's 'live' sticker, a GIF converted) trained its first frame
    without a word."""
    root = copy_example(tmp_path)
    a = root / "a" / "colour.png"
    with Image.open(a) as still:
        frames = [still.convert("RGB"), Image.new("RGB", still.size, BLUE)]
    a.unlink()
    frames[0].save(root / "a" / "colour.webp", save_all=True, append_images=frames[1:], lossless=True)
    assert main(["check", str(root)]) == 0
    assert "a.folder colour.webp: is animated (2 frames): only its first frame trains" in capsys.readouterr().err
    assert np.array_equal(np.asarray(load_picture(root / "a" / "colour.webp")), np.asarray(frames[0]))


def test_a_link_to_a_picture_that_is_not_there_is_refused(tmp_path, capsys):
    """A teacher picture linked from a disk that is not mounted: the side trained without it,
    and check said valid."""
    root = copy_example(tmp_path)
    (root / "a" / "second.png").symlink_to(tmp_path / "usb" / "second.png")
    assert main(["check", str(root)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"a.folder second.png: {root / 'a' / 'second.png'} is a link to {tmp_path / 'usb' / 'second.png'}, which does not exist: " \
           "mount what holds it, or remove the link" in err
    # the only picture a dead link: said beside 'no images'
    (root / "a" / "colour.png").unlink()
    assert main(["check", str(root)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no images in" in err and "a.folder second.png:" in err


def test_an_empty_picture_file_is_said_to_be_empty(tmp_path, capsys):
    """A zero-byte picture (a copy or cloud sync that did not finish) was 'not an image Pillow
    can read', which sent users looking for a format problem."""
    root = copy_example(tmp_path)
    (root / "b" / "second.png").write_bytes(b"")
    assert main(["check", str(root)]) == EXIT_USAGE
    assert "b.folder second.png: an empty file (0 bytes): copy the picture again" in capsys.readouterr().err
    assert main(["new", str(tmp_path / "new"), "--a", str(root / "b" / "second.png"), "--b", str(root / "b" / "monochrome.png")]) == EXIT_USAGE
    assert "second.png: an empty file (0 bytes)" in capsys.readouterr().err


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


# ---------------------------------------------------------------- 3. small and huge pictures


@needs_torch
def test_small_pictures_warn_in_check_and_json(tmp_path, capsys):
    root = copy_example(tmp_path)
    for old in (root / "a").iterdir():
        old.unlink()
    write_png(root / "a" / "tiny.png", size=(1, 1))
    set_keys(root, "train", resolution="[576, 896]")
    code, out = check(root, capsys)
    assert code == 0
    assert "warning: a.folder tiny.png: 1×1 is enlarged 704.0× to its 704×704 training bucket" in out
    assert main(["check", str(root), "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert len(warnings) == 3 and "b.folder monochrome.png: 128×192 is enlarged" in warnings[1]
    assert "a.folder tiny.png is 1×1 but b.folder monochrome.png is 128×192" in warnings[2]  # A and B apart (issue 29)



@needs_torch
def test_decompression_bomb_limits_are_our_words(tmp_path, capsys, monkeypatch):
    import warnings as pywarnings

    from PIL import Image

    root = copy_example(tmp_path)
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that. The example's 128×192
    # pictures (24576 px) are made "huge" by lowering the limit instead of writing 200 Mpx.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("error")  # any Python warning text would fail the test
        code, out = check(root, capsys)
    assert code == 0 and "128×192 (0 Mpx) is very large" in out
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    code, out = check(root, capsys)
    assert code == EXIT_USAGE and "a.folder colour.png: too large to decode safely" in out and "downscale it first" in out



@needs_torch
def test_small_picture_warning_reaches_the_form_and_the_training_log(tmp_path):
    from copylora_tui.screens.project import plan_summary
    from engine.project.plan import make_plan
    from engine.train.trainer import train
    from tests.helpers import rendered

    root = copy_example(tmp_path)
    for old in (root / "a").iterdir():
        old.unlink()
    write_png(root / "a" / "small.png", size=(32, 48))
    project = load_project(root)
    assert "⚠ a.folder small.png: 32×48 is enlarged 4.0× to its 128×192 training bucket" in rendered(plan_summary(project))
    lines: list[str] = []
    train(make_plan(project, max_steps=1), "a", log=lines.append)
    assert any(line.startswith("warning: a.folder small.png: 32×48 is enlarged") for line in lines)



@needs_torch
def test_project_list_reads_picture_headers_only(tmp_path):
    """The app's project list must come quickly: sizes from headers (check decodes fully)."""
    from engine.errors import ValidationError

    root = copy_example(tmp_path)
    picture = root / "a" / "colour.png"
    picture.write_bytes(picture.read_bytes()[:-40])  # pixel data cut short, header intact
    assert load_project(root, decode_images=False).name == "example-monochrome"
    with pytest.raises(ValidationError, match="corrupt image"):
        load_project(root)
