"""Grid labels in any script: Pillow's built-in font draws ASCII only, so a Japanese project name
(白黒 コピー) or "café" in a prompt came out as boxes in every preview grid. A label the built-in
font cannot draw is drawn in a font that can (COPYLORA_FONT, fontconfig, the usual places), and
where no font here can, the log says which characters and what to install.

The fonts are built here with fontTools, so the tests do not depend on what a machine has
installed: the system's own candidates (fc-match, known paths) are switched off in each test."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers import copy_example, run_preview_job

ASCII = "".join(chr(code) for code in range(0x21, 0x7F))


def build_font(path: Path, chars: str) -> Path:
    """A TrueType font with a filled box for each of ``chars`` (and a space); its missing-glyph
    box is empty, so what it lacks draws nothing."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    def box():
        pen = TTGlyphPen(None)
        pen.moveTo((100, 0))
        pen.lineTo((100, 700))
        pen.lineTo((500, 700))
        pen.lineTo((500, 0))
        pen.closePath()
        return pen.glyph()

    names = {char: f"u{ord(char):04X}" for char in dict.fromkeys(chars)}
    order = [".notdef", "space", *names.values()]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(order)
    builder.setupCharacterMap({0x20: "space", **{ord(char): name for char, name in names.items()}})
    builder.setupGlyf({".notdef": TTGlyphPen(None).glyph(), "space": TTGlyphPen(None).glyph(), **{name: box() for name in names.values()}})
    builder.setupHorizontalMetrics({name: (600, 100) for name in order})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "CopyloraTest", "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=800, sTypoDescender=-200, usWinAscent=800, usWinDescent=200)
    builder.setupPost()
    builder.save(str(path))
    return path


@pytest.fixture
def fonts(monkeypatch, tmp_path):
    """Only COPYLORA_FONT is a candidate: fc-match and the system's font folders are switched off."""
    from engine.train import label_fonts

    monkeypatch.setattr(label_fonts, "_fc_match", lambda chars: None)
    monkeypatch.setattr(label_fonts, "known_font_files", lambda: [])
    monkeypatch.delenv(label_fonts.FONT_ENV, raising=False)
    return label_fonts


def test_ascii_labels_keep_the_built_in_font_and_look_nowhere_else(fonts, monkeypatch):
    def no_search(chars):
        raise AssertionError(f"searched fonts for {chars!r}")

    monkeypatch.setattr(fonts, "candidate_files", no_search)
    for text in ("strength 0.5", "prompt: 'a red triangle on a blue background'", "A at 1 + result at 1"):
        assert fonts.face_for(text, 10) is fonts.default_face(10)
    assert fonts.undrawable(["example-monochrome.safetensors"], 10) == ""


def test_the_built_in_font_lacks_what_users_write(fonts):
    """Why this exists: without a font file, Japanese, accents and arrows are boxes."""
    assert fonts.undrawable(["白黒 コピー.safetensors", "a café → here"], 10) == "白黒コピーé→"
    note = fonts.undrawable_note(["白黒 コピー.safetensors"], 10)
    assert note.startswith("grid labels: no font here draws 白, 黒, コ, ピ, ー: they show as boxes; set COPYLORA_FONT")


def test_a_japanese_title_is_drawn_in_a_font_that_has_it(fonts, monkeypatch, tmp_path):
    from PIL import Image

    from engine.train.grid_labels import grid_layout, text_width
    from engine.train.sample import SampleSettings, grid

    font = build_font(tmp_path / "cjk.ttf", ASCII + "白黒コピー")
    monkeypatch.setenv(fonts.FONT_ENV, str(font))
    title = "白黒 コピー.safetensors"
    face = fonts.face_for(title, 10)
    assert face.path == str(font) and all(fonts.draws(face, char) for char in title)
    layout = grid_layout((64, 64), title, ["strength 0", "strength 1"], ["prompt: ''"])
    label = layout.labels[0]
    assert label.label.face is face and "".join(label.label.lines).replace(" ", "") == title.replace(" ", "")
    assert all(text_width(line, face) <= label.width for line in label.label.lines)
    assert layout.labels[1].label.face is fonts.default_face(10)  # "strength 0" stays in the built-in font

    notes: list[str] = []
    images = [[Image.new("RGB", (64, 64), (40, 200, 40)) for _ in range(2)]]
    canvas = grid(images, SampleSettings(prompts=[""], strengths=[0.0, 1.0]), title, log=notes.append)
    assert notes == []
    # The title is ink: the font's filled boxes, one per character, where the built-in font drew
    # hollow missing-glyph boxes (thin outlines): far more dark pixels in the title band.
    monkeypatch.delenv(fonts.FONT_ENV)
    boxes = grid(images, SampleSettings(prompts=[""], strengths=[0.0, 1.0]), title, log=notes.append)
    band = label.label.height + 4

    def dark(image):
        return sum(1 for value in image.crop((0, 0, image.width, band)).convert("L").tobytes() if value < 128)

    assert dark(canvas) > 1.5 * dark(boxes) and notes and "白" in notes[0]


def test_the_font_that_draws_most_is_used_and_the_rest_are_named(fonts, monkeypatch, tmp_path):
    font = build_font(tmp_path / "half.ttf", ASCII + "白")
    monkeypatch.setenv(fonts.FONT_ENV, str(font))
    assert fonts.face_for("白猫", 10).path == str(font)  # it draws 白; the built-in draws neither
    assert fonts.undrawable(["白猫"], 10) == "猫"
    note = fonts.undrawable_note(["白猫"], 10)
    assert "draws 猫 (COPYLORA_FONT=" in note and "does not have them either" in note


@pytest.mark.parametrize("content", [b"", b"not a font at all", b"\x00\x01\x00\x00" + b"\xff" * 64])
def test_a_copylora_font_that_is_no_font_is_passed_over(fonts, monkeypatch, tmp_path, content):
    bad = tmp_path / "bad.ttf"
    bad.write_bytes(content)
    monkeypatch.setenv(fonts.FONT_ENV, str(bad))
    assert fonts.face_for("白", 10) is fonts.default_face(10)
    monkeypatch.setenv(fonts.FONT_ENV, str(tmp_path / "missing.ttf"))
    assert fonts.face_for("白", 8) is fonts.default_face(8)
    monkeypatch.setenv(fonts.FONT_ENV, str(tmp_path))  # a folder
    assert fonts.undrawable(["白"], 7) == "白"
    fifo = tmp_path / "fifo.ttf"
    os.mkfifo(fifo)  # reading it would wait for a writer for ever
    monkeypatch.setenv(fonts.FONT_ENV, str(fifo))
    assert fonts.face_for("白", 9) is fonts.default_face(9)


def test_a_cut_label_ends_in_an_ellipsis_its_font_can_draw(fonts, monkeypatch, tmp_path):
    from engine.train.grid_labels import MOST_LINES, fit_label

    label = fit_label("word " * 400, 40)  # the built-in font has "…"
    assert len(label.lines) == MOST_LINES and label.lines[-1].endswith("…")
    monkeypatch.setenv(fonts.FONT_ENV, str(build_font(tmp_path / "no-ellipsis.ttf", ASCII + "白")))
    label = fit_label("白 " * 400, 40)
    assert label.face.path.endswith("no-ellipsis.ttf") and len(label.lines) == MOST_LINES and label.lines[-1].endswith("...")
    assert all(fonts.draws(label.face, char) for line in label.lines for char in line)


def test_the_preview_job_of_a_japanese_project_says_what_it_cannot_draw(lora_file, fonts, tmp_path, monkeypatch, capsys):
    """The queue's preview job (runner.run_sample) on a project named in Japanese, no font here
    that draws it: the grid (白黒-grid.png) is written, and the job's log says which characters and what to do."""
    artifacts = run_preview_job(tmp_path, monkeypatch, lora_file, info={"name": "白黒"}, sample={"size": [64, 64], "steps": 2})
    assert Path(artifacts["grid"]).name == "白黒-grid.png"
    out = capsys.readouterr().out
    assert "grid labels: no font here draws 白, 黒: they show as boxes; set COPYLORA_FONT" in out
    assert Path(artifacts["grid"]).stat().st_size > 0


@pytest.fixture(scope="module")
def lora_file(tiny, tmp_path_factory):
    from engine.lora.network import LoRANetwork

    network = LoRANetwork(tiny.unet, tiny.text_encoders, rank=4, alpha=4.0)
    return network.save(tmp_path_factory.mktemp("lora") / "L.safetensors", dtype="float")


def test_previews_during_training_say_it_once(fonts, tiny, tmp_path):
    """The trainer's previews (every sample_every_n_steps) of a project named in Japanese: the
    note is logged at the first preview, not at every one."""
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.train.trainer import train

    root = copy_example(tmp_path)
    project = load_project(root)
    project.info = replace(project.info, name="白黒")
    project.train = replace(project.train, sample_every_n_steps=1)
    project.sample = replace(project.sample, steps=1, size=[64, 64])
    plan = make_plan(project, max_steps=3)
    lines: list[str] = []
    train(plan, "a", model=tiny, log=lines.append)
    assert len(list(plan.samples_dir.glob("白黒_A-step*.png"))) == 3
    assert [line for line in lines if line.startswith("grid labels:")] == [
        "grid labels: no font here draws 白, 黒: they show as boxes; set COPYLORA_FONT to a .ttf/.otf/.ttc font file that has them "
        "(for Japanese: Noto Sans CJK, `apt install fonts-noto-cjk`)"]


def test_copylora_sample_says_it_after_its_progress_bar(fonts, lora_file, tmp_path, capsys):
    from copylora_tui.cli.main import main

    out = tmp_path / "grid.png"
    assert main(["sample", str(lora_file), "--base", "tiny", "--size", "64x64", "--steps", "1", "--strengths", "1",
                 "--prompt", "a café, 白い猫", "--save_to", str(out)]) == 0
    err = capsys.readouterr().err
    assert "copylora: grid labels: no font here draws é, 白, い, 猫: they show as boxes" in err and out.stat().st_size > 0
