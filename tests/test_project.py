"""The concept-project format: round trip, every error class, kohya folder names, the plan."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.errors import ValidationError
from engine.project.folder import load_project, save_project
from engine.project.params import RegParams
from engine.project.plan import bucket_size, make_plan, steps_for
from engine.project.scaffold import create_project
from engine.project.toml_writer import render_project
from tests.helpers import copy_example, snapshot, write_png


def problems_of(excinfo) -> dict[str, str]:
    return {p.where: p.message for p in excinfo.value.problems}


def test_example_project_loads_and_plans():
    from tests.helpers import EXAMPLE

    project = load_project(EXAMPLE)
    plan = make_plan(project)
    assert project.name == "example-monochrome"
    assert plan.side("a").total_steps == 1 * 5 * 40
    assert plan.side("a").buckets == ((128, 192),)
    assert plan.merged_path.name == "example-monochrome.safetensors"


def test_round_trip_load_save_load(tmp_path):
    root = copy_example(tmp_path)
    project = load_project(root)
    # Exercise every kind of value: overrides, None, dicts, reg, non-default lists.
    project.train = replace(project.train, unet_lr=2e-4, min_snr_gamma=5.0, optimizer_args={"weight_decay": 0.01, "betas": [0.9, 0.99]})
    project.b.overrides = {"learning_rate": 5e-4, "num_repeats": 3}
    project.merge = replace(project.merge, ratios=[0.5, -0.5], new_conv_rank=4)
    project.sample = replace(project.sample, prompts=["", 'a "quoted" prompt'], strengths=[0.0, 0.5, 1.0])
    (root / "reg").mkdir()
    write_png(root / "reg" / "girl.png")
    project.reg = RegParams(folder="reg", class_prompt="girl", instance_prompt="sks girl")
    save_project(project)
    again = load_project(root)
    assert again == project
    # Saving the re-loaded project gives byte-identical text: the format is canonical.
    assert render_project(again) == (root / "copylora.toml").read_text()


def test_every_problem_reported_at_once_and_nothing_written(tmp_path):
    root = copy_example(tmp_path)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "copylora.toml").write_text(
        """
[project]
name = "x"
base_model = "missing.safetensors"
[train]
network_dim = 0
network_alph = 1
learning_rate = "fast"
optimizer_type = "adamw9bit"
resolution = [600]
gradient_checkpointing = 1
[a]
folder = "nowhere"
nettwork_dim = 4
[b]
[merge]
ratios = [1, -1, 0.5]
[samples]
seed = 1
"""
    )
    before = snapshot(root)
    with pytest.raises(ValidationError) as excinfo:
        load_project(root)
    found = problems_of(excinfo)
    assert "must be greater than 0" in found["train.network_dim"]
    assert "did you mean 'network_alpha'" in found["train.network_alph"]
    assert "must be a number" in found["train.learning_rate"] and "'fast'" in found["train.learning_rate"]
    assert "unknown value" in found["train.optimizer_type"]
    assert "[width, height]" in found["train.resolution"]
    assert "true or false" in found["train.gradient_checkpointing"]
    assert "did you mean 'network_dim'" in found["a.nettwork_dim"]
    assert "list of 2 items" in found["merge.ratios"]
    assert "did you mean 'sample'" in found["samples"]
    assert len(found) == 9
    assert snapshot(root) == before
    # One message line per problem, each with its key path.
    text = str(excinfo.value)
    assert text.count("\n") == len(excinfo.value.problems)


def test_file_system_problems(tmp_path):
    root = copy_example(tmp_path)
    (root / "b" / "monochrome.png").unlink()
    (root / "b" / "notes.txt").write_text("captions are ignored")
    (root / "a" / "half.png").write_bytes((root / "a" / "colour.png").read_bytes()[:200])
    text = (root / "copylora.toml").read_text().replace('base_model = "tiny"', 'base_model = "nope.safetensors"')
    (root / "copylora.toml").write_text(text)
    with pytest.raises(ValidationError) as excinfo:
        load_project(root)
    found = problems_of(excinfo)
    assert "no images" in found["b.folder"]
    assert "corrupt image" in found["a.folder half.png"]
    assert "no such file" in found["project.base_model"]


@pytest.mark.parametrize("name, says", [("samples", "previews"), ("runs", "checkpoints")])
def test_a_file_where_the_output_keeps_a_folder_is_said_at_check(tmp_path, name, says):
    """output/samples a file: check said valid, A and B trained and merged, and the preview job
    failed with "FileExistsError: [Errno 17] File exists"."""
    root = copy_example(tmp_path)
    (root / "output").mkdir()
    (root / "output" / name).write_text("not a folder")
    with pytest.raises(ValidationError) as excinfo:
        load_project(root)
    assert problems_of(excinfo)["project.output_dir"] == (f"{root / 'output' / name} is a file: {says} go into a folder of that name; "
                                                          "move it away")


def test_epochs_and_steps_both_or_neither(tmp_path):
    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("# max_train_steps =", "max_train_steps = 100"))
    with pytest.raises(ValidationError, match="not both"):
        load_project(root)
    # Only steps written: the epochs default does not linger and cause a conflict.
    toml.write_text(toml.read_text().replace("max_train_epochs = 40", ""))
    project = load_project(root)
    assert project.train.max_train_epochs is None
    assert make_plan(project).side("a").total_steps == 100
    # A side override of epochs replaces the inherited steps for that side only.
    project.a.overrides = {"max_train_epochs": 2}
    assert make_plan(project).side("a").total_steps == 10
    assert make_plan(project).side("b").total_steps == 100
    save_project(project)
    assert load_project(root) == project


def test_warmup_steps_with_the_constant_schedule_are_said(tmp_path):
    """diffusers' constant schedule drops the warm-up without a word (the rate is full from step
    0); sd-scripts refuses the pair. Said at check, naming the tables of both keys (a [b]
    schedule of "constant" under [train]'s warm-up is [b]'s to change); not refused: a project
    saved so has trained so, and its LoRAs stay its own."""
    from engine.project.plan import plan_warnings

    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    text = toml.read_text()
    assert 'lr_scheduler = "constant"\n' in text and "lr_warmup_steps = 0\n" in text

    def said(new_text: str) -> list[str]:
        toml.write_text(new_text)
        return [w for w in plan_warnings(make_plan(load_project(root))) if "warm-up steps do nothing" in w]

    assert said(text.replace("lr_warmup_steps = 0\n", "lr_warmup_steps = 50\n")) == [
        'train.lr_warmup_steps: 50 warm-up steps do nothing with train.lr_scheduler "constant" (A and B train at the full rate '
        'from the first step; sd-scripts refuses the pair): "constant_with_warmup" warms up']
    cosine = text.replace('lr_scheduler = "constant"\n', 'lr_scheduler = "cosine"\n').replace("lr_warmup_steps = 0\n", "lr_warmup_steps = 50\n")
    assert said(cosine) == []
    assert said(cosine.replace("[b]\n", '[b]\nlr_scheduler = "constant"\n', 1)) == [
        'train.lr_warmup_steps: 50 warm-up steps do nothing with b.lr_scheduler "constant" (B trains at the full rate from the '
        'first step; sd-scripts refuses the pair): "constant_with_warmup" warms up']
    assert said(text.replace("[b]\n", "[b]\nlr_warmup_steps = 20\n", 1))[0].startswith("b.lr_warmup_steps: 20 warm-up steps")


def test_invalid_toml_syntax(tmp_path):
    root = copy_example(tmp_path)
    (root / "copylora.toml").write_text("[train\nnetwork_dim = 8")
    with pytest.raises(ValidationError, match="not valid TOML"):
        load_project(root)


@pytest.mark.parametrize("shift_jis", [True, False])
def test_a_project_file_not_in_utf8_names_its_line_and_the_fix(tmp_path, shift_jis):
    """A copylora.toml saved by a Japanese Windows editor (Shift-JIS): the line, the byte, what it
    reads as, and what to do; it was Python's 'utf-8 codec can't decode byte 0x94 in position 268'."""
    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    lines = toml.read_text(encoding="utf-8").splitlines(keepends=True)
    line = next(i for i, one in enumerate(lines, 1) if one.startswith("name = "))
    if shift_jis:
        lines[line - 1] = 'name = "白黒"\n'
        raw = "".join(lines).encode("cp932", errors="replace")
    else:  # 0x81 then a space: neither UTF-8 nor Shift-JIS
        raw = "".join(lines[:line]).encode() + b"# \x81 \n" + "".join(lines[line:]).encode()
        line += 1
    toml.write_bytes(raw)
    with pytest.raises(ValidationError) as info:
        load_project(root)
    message = str(info.value)
    assert f"not UTF-8 at line {line} (byte 0x" in message and "save it as UTF-8" in message
    assert ("reads as Shift-JIS/cp932" in message) == shift_jis, message


def test_a_project_file_saved_with_a_bom_loads_and_the_app_sees_no_change(tmp_path):
    """Notepad's "UTF-8 with BOM": tomllib refused the mark as "not valid TOML: Invalid statement
    (at line 1, column 1)", naming neither the mark nor a fix; the caption files' BOM was
    already dropped. The app's on-disk comparison and the namesake scan read it alike."""
    from copylora_tui.core.form import changed_on_disk
    from engine.project.names import namesakes

    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    text = toml.read_text(encoding="utf-8").replace('name = "example-monochrome"', 'name = "白黒"')
    toml.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    project = load_project(root)
    assert project.name == "白黒"
    assert changed_on_disk(project, toml) == []
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "copylora.toml").write_bytes(toml.read_bytes())
    assert namesakes(root, "白黒") == [twin]


def test_kohya_folder_name_sets_repeats(tmp_path):
    root = copy_example(tmp_path)
    (root / "a").rename(root / "5_")
    (root / "b").rename(root / "12_sks girl")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('folder = "a"', 'folder = "5_"').replace('folder = "b"', 'folder = "12_sks girl"'))
    project = load_project(root)
    assert project.side_params("a").num_repeats == 5
    assert project.side_params("b").num_repeats == 12
    assert "folder name" in project.repeats_source("b")
    plan = make_plan(project)
    assert plan.side("b").total_steps == 12 * 40
    # An explicit per-side value wins over the folder name.
    project.b.overrides = {"num_repeats": 2}
    assert project.side_params("b").num_repeats == 2
    assert project.repeats_source("b") == "[b].num_repeats"
    # sd-scripts trains "12_sks girl"'s pictures on the caption "sks girl"; copylora on [train]
    # caption: said (once, for B: "5_" has no words), and quiet once the caption matches
    from engine.project.plan import plan_warnings

    def said() -> list[str]:
        return [w for w in plan_warnings(make_plan(project)) if "kohya trains" in w]

    assert said() == ["b.folder: kohya trains the pictures of '12_sks girl' on the caption 'sks girl' (the words of its folder name); "
                      "copylora trains them on b.caption (''): set [b] caption = 'sks girl' to train as kohya did, or rename the "
                      "folder 12_ (the same repeats, no words)"]
    (root / "12_sks girl" / "monochrome.txt").write_text("a photo")  # kohya reads that caption, not the folder's words
    assert said() == []
    (root / "12_sks girl" / "monochrome.txt").unlink()
    project.b.overrides = {"caption": "sks girl"}
    assert said() == []


def test_a_bucket_far_below_resolutions_area_is_said_with_the_resolution_of_its_shape(tmp_path):
    """kohya's `resolution = 512,512` lets a 2:3 picture's long side reach max_bucket_reso at
    that area (384×640 there); copylora's caps it at 512 (320×512, 62 % of the pixels): said,
    with the resolution that keeps the area at the picture's own shape."""
    from engine.project.plan import plan_warnings

    root = copy_example(tmp_path)
    write_png(root / "a" / "colour.png", size=(600, 900))
    write_png(root / "b" / "monochrome.png", size=(600, 900), colour=(90, 90, 90))
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("resolution = [128, 192]", "resolution = [512, 512]"))
    plan = make_plan(load_project(root))
    assert plan.side("a").buckets == ((320, 512),)
    said = [w for w in plan_warnings(plan) if "of resolution's" in w]
    assert said == ["a.folder colour.png, b.folder monochrome.png: their 600×900 trains at 320×512, 62% of resolution's 512×512 "
                    "area (the longest side is capped at 512); resolution = [418, 627] (the picture's own shape at that area) "
                    "trains it at 384×576"]  # A and B of one size: once
    toml.write_text(toml.read_text().replace("resolution = [512, 512]", "resolution = [418, 627]"))
    plan = make_plan(load_project(root))
    assert plan.side("a").buckets == ((384, 576),) and not [w for w in plan_warnings(plan) if "of resolution's" in w]
    # a picture smaller than the area: its bucket is small by its size, and a larger resolution would only enlarge it
    for picture in (root / "a" / "colour.png", root / "b" / "monochrome.png"):
        write_png(picture, size=(240, 160))
    toml.write_text(toml.read_text().replace("resolution = [418, 627]", "resolution = [1024, 1024]"))
    plan = make_plan(load_project(root))
    assert plan.side("a").buckets == ((1024, 640),) and not [w for w in plan_warnings(plan) if "of resolution's" in w]


def test_the_resolution_said_for_a_very_wide_picture_is_one_check_takes(tmp_path):
    """A 20:1 panorama at [128, 192]: its own shape at that area is [701, 35], which check
    refuses (each side at least 64): the said resolution keeps within the sides check takes."""
    from engine.project.plan import plan_warnings

    root = copy_example(tmp_path)
    for picture in (root / "a" / "colour.png", root / "b" / "monochrome.png"):
        write_png(picture, size=(4000, 200))
    said = [w for w in plan_warnings(make_plan(load_project(root))) if "of resolution's" in w]
    assert said == ["a.folder colour.png, b.folder monochrome.png: their 4000×200 trains at 192×64, 50% of resolution's 128×192 "
                    "area (the longest side is capped at 192); resolution = [701, 64] (the picture's shape at that area, "
                    "within 64..4096 pixels a side) trains it at 640×64"]
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("resolution = [128, 192]", "resolution = [701, 64]"))
    plan = make_plan(load_project(root))
    assert plan.side("a").buckets == ((640, 64),) and not [w for w in plan_warnings(plan) if "of resolution's" in w]


def test_a_batch_holds_one_bucket_and_the_epoch_counts_each_buckets_batches(tmp_path):
    """Over pictures of two shapes, batch 2: sd-scripts batches within a bucket, so an epoch of
    5 + 5 items is 3 + 3 batches (not ceil(10 / 2) = 5), and every item is in one of them (a
    batch that mixed buckets used to leave the second bucket's items out of that step)."""
    from collections import Counter

    from engine.project.plan import plan_warnings
    from engine.train.training_data import TrainingItem, batch_for_step, epoch_batches, epoch_order

    root = copy_example(tmp_path)
    write_png(root / "a" / "second.png", size=(192, 128))
    write_png(root / "b" / "second.png", size=(192, 128))
    toml = root / "copylora.toml"
    text = toml.read_text()
    assert "train_batch_size = 1\n" in text and "num_repeats = 5\n" in text

    def plan_of(batch: int):
        toml.write_text(text.replace("train_batch_size = 1\n", f"train_batch_size = {batch}\n"))
        return make_plan(load_project(root))

    a = plan_of(2).side("a")
    assert sorted(a.buckets) == [(128, 192), (192, 128)] and a.steps_per_epoch == 6
    assert plan_of(1).side("a").steps_per_epoch == 10 and plan_of(4).side("a").steps_per_epoch == 4
    assert not [w for w in plan_warnings(plan_of(2)) if "bucket" in w and "batch" in w]
    from rich.console import Console

    from copylora_tui.core.plan_view import plan_view

    console = Console(width=200, record=True)
    console.print(plan_view(plan_of(2)))
    assert "a batch holds one bucket: an epoch's 5 at 128x192, 5 at 192x128 make 6 batches" in console.export_text()
    items = [TrainingItem(i, 0, 1.0, bucket) for i, bucket in enumerate(a.buckets) for _ in range(a.repeats)]
    for epoch in range(3):
        batches = [batch_for_step(epoch * 6 + index, items, 2, 6, seed=7) for index in range(6)]
        assert batches == epoch_batches(items, 2, 7, epoch) and all(len({i.bucket for i in b}) == 1 for b in batches)
        assert Counter(i for b in batches for i in b) == Counter(items)  # every item, once
    assert [len(b) for b in batches] != [2] * 6 and sorted(len(b) for b in batches) == [1, 1, 2, 2, 2, 2]
    # one bucket, or a batch of one: the shuffled items in order, as every run before had them
    one = items[:5]
    assert [i for b in epoch_batches(one, 2, 7, 0) for i in b] == [one[i] for i in epoch_order(7, 0, 5)]
    assert epoch_batches(items, 1, 7, 0) == [[items[i]] for i in epoch_order(7, 0, 10)]


def test_save_refuses_invalid_and_keeps_file(tmp_path):
    root = copy_example(tmp_path)
    project = load_project(root)
    before = (root / "copylora.toml").read_bytes()
    project.merge = replace(project.merge, ratios=[1.0])
    with pytest.raises(ValidationError, match="merge.ratios"):
        save_project(project)
    assert (root / "copylora.toml").read_bytes() == before
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "image, resolution, expected",
    [
        ((600, 900), (600, 900), (576, 896)),
        ((1200, 1800), (600, 900), (576, 896)),
        ((1024, 1024), (600, 900), (704, 704)),  # area-bound: sqrt(600*900) = 734
        ((900, 600), (600, 900), (896, 576)),  # landscape image, same area budget
        ((128, 192), (512, 512), (320, 512)),  # upscaled until the longest side fits
        ((40, 30), (64, 64), (64, 64)),  # never below one step
    ],
)
def test_bucket_size(image, resolution, expected):
    w, h = bucket_size(*image, resolution)
    assert (w, h) == expected
    assert w % 64 == 0 and h % 64 == 0
    assert w * h <= max(resolution[0] * resolution[1], 64 * 64)


def test_steps_arithmetic_matches_sd_scripts():
    from engine.project.params import TrainParams

    recipe = TrainParams()  # 1 image x 5 repeats x 800 epochs, batch 1
    assert steps_for({(576, 896): 5}, recipe) == (5, 800, 4000)
    assert steps_for({(576, 896): 15}, replace(recipe, train_batch_size=2, max_train_epochs=10)) == (8, 10, 80)
    assert steps_for({(576, 896): 5}, replace(recipe, max_train_epochs=None, max_train_steps=12)) == (5, 3, 12)
    assert steps_for({(576, 896): 3, (640, 832): 4}, replace(recipe, train_batch_size=2, max_train_epochs=2)) == (4, 2, 8)


def test_create_project_bad_then_good(tmp_path):
    a = write_png(tmp_path / "in" / "a.png")
    b = write_png(tmp_path / "in" / "b.jpg", colour=(90, 90, 90))
    with pytest.raises(ValidationError) as excinfo:
        create_project(tmp_path / "p", tmp_path / "in" / "missing.png", b)
    assert "a_image" in problems_of(excinfo)  # the engine names its parameters; `copylora new` says --a
    assert not (tmp_path / "p").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in"]
    project = create_project(tmp_path / "p", a, b)
    assert project.name == "p"
    assert (tmp_path / "p" / "a" / "a.png").is_file() and (tmp_path / "p" / "b" / "b.jpg").is_file()
    text = (tmp_path / "p" / "copylora.toml").read_text()
    assert "# LoRA rank of linear/attention modules." in text
    with pytest.raises(ValidationError, match="already exists"):
        create_project(tmp_path / "p", a, b)


@pytest.mark.parametrize("name, says", [
    ("../../outside", "no '/'"),  # wrote output/../../outside_A.safetensors: outside the project
    ("sub/name", "no '/'"),  # a folder nobody made: found only when the first LoRA was saved
    ("back\\slash", "no '\\\\'"),
    ("two\nlines", "no '\\n'"),
    ("a:b", "no ':'"),  # Windows refuses it, and the LoRA is made to be copied to A1111/ComfyUI
    ("..", "must not start with '.'"),
    (".hidden", "must not start with '.'"),
    (" padded", "space"),
    ("x" * 181, "too long"),
    (42, "must be a string"),
    ("CON", "a name Windows keeps for a device (CON)"),  # CON.safetensors cannot exist there
    ("nul.v2", "a name Windows keeps for a device (nul)"),
    ("com1", "keeps for a device"),
    ("LPT9", "keeps for a device"),
    ("白黒\u200b", "contains an invisible character (U+200B"),  # looked like "白黒", another project, everywhere shown
    ("\ufeffmono", "contains an invisible character (U+FEFF"),
])
def test_a_project_name_that_cannot_name_files_is_refused(tmp_path, name, says):
    """[project] name is the stem of every output file: one that is no file name is a problem
    found when the project loads, not after the training, and nothing is written."""
    root = copy_example(tmp_path)
    text = (root / "copylora.toml").read_text()
    shown = f'"{name}"'.replace("\\", "\\\\").replace("\n", "\\n") if isinstance(name, str) else str(name)
    (root / "copylora.toml").write_text(text.replace('name = "example-monochrome"', f"name = {shown}"), encoding="utf-8")
    with pytest.raises(ValidationError) as excinfo:
        load_project(root)
    assert says in problems_of(excinfo)["project.name"]
    assert not (root / "output").exists() and not (tmp_path / "outside_A.safetensors").exists()


def test_a_good_project_name_and_the_folder_standing_in_for_none(tmp_path):
    root = copy_example(tmp_path)
    text = (root / "copylora.toml").read_text()
    (root / "copylora.toml").write_text(text.replace('name = "example-monochrome"', 'name = "mono é 2"'), encoding="utf-8")
    assert make_plan(load_project(root)).merged_path.name == "mono é 2.safetensors"
    # only the device names themselves are kept; U+200D joins two emoji into one
    for fine in ("CONSOLE", "console", "COM10", "nul-free", "白黒 コピー", "👩\u200d🎨"):
        (root / "copylora.toml").write_text(text.replace('name = "example-monochrome"', f'name = "{fine}"'), encoding="utf-8")
        assert make_plan(load_project(root)).merged_path.name == f"{fine}.safetensors"
    # Unset, the folder's name names the outputs, so it is judged as the name would be.
    (root / "copylora.toml").write_text(text.replace('name = "example-monochrome"', 'name = ""'), encoding="utf-8")
    bad = root.rename(tmp_path / "two\nlines")
    with pytest.raises(ValidationError) as excinfo:
        load_project(bad)
    assert "set [project] name or rename the folder" in problems_of(excinfo)["project.name"]


def test_new_refuses_a_name_that_cannot_name_files(tmp_path):
    a = write_png(tmp_path / "in" / "a.png")
    b = write_png(tmp_path / "in" / "b.png", colour=(90, 90, 90))
    with pytest.raises(ValidationError) as excinfo:
        create_project(tmp_path / "p" / "x:y", a, b)
    assert "no ':'" in problems_of(excinfo)["dest"]
    with pytest.raises(ValidationError):
        create_project(tmp_path / "p" / "ok", a, b, name="two\nlines")
    assert not (tmp_path / "p").exists()  # nothing made


def test_every_key_is_documented():
    from dataclasses import fields

    from engine.project.params import ConceptParams, MergeParams, ProjectInfo, RegParams, SampleParams, SideConfig, TrainParams
    from tests.helpers import REPO

    doc = (REPO / "docs" / "project-format.md").read_text()
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in (ProjectInfo, TrainParams, SideConfig, MergeParams, SampleParams, RegParams, ConceptParams)
        for f in fields(cls)
        if f.metadata and f"`{f.name}`" not in doc
    ]
    assert missing == []


def test_new_project_on_a_builtin_model_gets_cpu_sized_defaults(tmp_path, capsys):
    """`copylora new --base tiny` used to write the 4000-step 600×900 GPU recipe."""
    from copylora_tui.cli.main import main
    from engine.project.plan import make_plan
    from tests.helpers import write_png

    a, b = write_png(tmp_path / "a.png", size=(300, 450)), write_png(tmp_path / "b.png", size=(300, 450), colour=(90, 90, 90))
    for base, steps in (("tiny", 200), ("tiny-sdxl", 40)):
        assert main(["--projects", str(tmp_path / "p"), "new", f"on-{base}", "--a", str(a), "--b", str(b), "--base", base]) == 0
        plan = make_plan(load_project(tmp_path / "p" / f"on-{base}"))
        side = plan.side("a")
        assert side.total_steps == steps and side.buckets == ((128, 192),) and side.params.mixed_precision == "no"
        assert plan.project.sample.size == [128, 192] and plan.project.sample.steps == 8
    # a real checkpoint keeps the recipe
    from engine.project.folder import Project
    from engine.project.scaffold import apply_base_defaults

    recipe = apply_base_defaults(Project(root=tmp_path), "/models/sd15.safetensors")
    assert recipe.train.max_train_epochs == 800 and recipe.train.resolution == [600, 900]


def test_a_preview_of_trained_prompts_only_is_said_to_show_the_copy_not_the_change(tmp_path):
    """A project on a checkpoint, as `copylora new` wrote it, previewed the empty prompt alone:
    the prompt both sides train under caption-free. Its grid showed picture B at strength 1 (the
    copy), never a prompt the LoRAs had not seen, which is what the method claims; `check` said
    nothing. `new` now writes a held-out prompt beside it; with "" alone, check warns."""
    from safetensors.torch import save_file

    from copylora_tui.cli.main import main
    from engine.models import tiny as tiny_model
    from engine.models.ldm_keys import sd1_single_file_state_dict
    from engine.project.plan import plan_warnings

    checkpoint = tmp_path / "sd15.safetensors"
    save_file(sd1_single_file_state_dict(tiny_model.tiny_pipeline()), str(checkpoint))
    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(90, 90, 90))
    assert main(["--projects", str(tmp_path / "p"), "new", "mono", "--a", str(a), "--b", str(b), "--base", str(checkpoint)]) == 0
    root = tmp_path / "p" / "mono"
    project = load_project(root)
    assert project.sample.prompts == ["", "1girl, solo, upper body, outdoors, smile"]
    assert not [w for w in plan_warnings(make_plan(project)) if w.startswith("sample.prompts:")]
    project.sample = replace(project.sample, prompts=[""])  # a project of before, or the held-out prompt taken away
    save_project(project)
    said = [w for w in plan_warnings(make_plan(load_project(root))) if w.startswith("sample.prompts:")]
    assert said == ["sample.prompts: only '', which the LoRAs train under: the preview grid shows the copy, not the change on a "
                    'prompt never trained; add one, e.g. prompts = ["", "1girl, upper body, outdoors"]'], said
    project = load_project(root)
    project.sample = replace(project.sample, prompts=["", "1girl, upper body, outdoors"])
    save_project(project)
    assert not [w for w in plan_warnings(make_plan(load_project(root))) if w.startswith("sample.prompts:")]
