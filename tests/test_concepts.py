"""The DreamBooth flow complete: per-image captions ([filewords]) and several concepts
([[concept]]) in one LoRA — format, checks, plan arithmetic, what the trainer conditions on,
the metadata, class pictures per concept, the import of a several-subset dataset TOML."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.errors import ValidationError
from engine.project.folder import load_project, save_project
from engine.project.plan import concept_rows, make_plan, plan_warnings
from tests.helpers import copy_example, mount_tmpfs, quiet, remount_read_only, write_png

REG = '''
[reg]
instance_prompt = "sks house, [filewords]"
class_prompt = "a house"
num_class_images = 2

[[concept]]
folder = "3_zwx sun"
instance_prompt = "zwx sun, [filewords]"
class_folder = "suns"
class_prompt = "a sun"
num_class_images = 1
'''


def dreambooth_project(tmp_path: Path, extra: str = REG) -> Path:
    """The example pair with captions, [reg] and a second concept of two captioned pictures."""
    root = copy_example(tmp_path, "db")
    (root / "a" / "colour.txt").write_text("a house, sunny\n")
    (root / "b" / "monochrome.txt").write_text("\na house, gray\nsecond line is not read\n")
    sun = root / "3_zwx sun"
    write_png(sun / "one.png", (96, 144), (250, 220, 40))
    write_png(sun / "two.png", (96, 144), (240, 120, 30))
    (sun / "one.txt").write_text("yellow")
    (sun / "two.txt").write_text("orange, big")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text() + extra)
    return root


def problems_of(root: Path) -> list[str]:
    with pytest.raises(ValidationError) as info:
        load_project(root)
    return [str(p) for p in info.value.problems]


# --------------------------------------------------------------------------- format and checks


def test_concepts_load_save_round_trip_and_plan_counts_steps_as_sd_scripts(tmp_path):
    root = dreambooth_project(tmp_path)
    project = load_project(root)
    assert [c.folder for c in project.concepts] == ["3_zwx sun"] and project.reg.caption_extension == ".txt"
    save_project(project)  # canonical text, re-validated
    assert "[[concept]]" in (root / "copylora.toml").read_text() and load_project(root).concepts == project.concepts
    plan = make_plan(project)
    a = plan.side("a")
    # sd-scripts: subsets of one DreamBooth dataset: (1 × 5 repeats + 2 × 3 repeats) teacher pictures,
    # doubled by the class pictures paired with them, batch 1.
    assert a.concepts[0].repeats == 3 and a.concepts[0].repeats_source == "folder name '3_zwx sun'"
    assert a.teacher_samples == 11 and a.steps_per_epoch == 22 and a.reg_images == 3
    rows = {r["concept"]: r for r in concept_rows(plan)}
    assert rows["A's pictures"]["steps_per_epoch"] == 10 and rows["concept[1]"]["steps_per_epoch"] == 12
    assert rows["class (concept[1])"]["to_generate"] == 1 and rows["class (reg)"]["to_generate"] == 2


def test_concept_rules_are_checked_with_their_key(tmp_path):
    root = dreambooth_project(tmp_path, REG + '\n[[concept]]\nfolder = "a"\nclass_prompt = "x"\nnum_class_images = 2\n'
                              '\n[[concept]]\nfolder = "nowhere"\n\n[[concept]]\ninstance_prompt = "x"\n')
    found = problems_of(root)
    assert any(p.startswith("concept[2].folder: 'a' is already a.folder") for p in found), found
    assert any(p.startswith("concept[2].class_folder: needed for class pictures") for p in found), found
    assert any(p.startswith("concept[3].folder: folder not found") for p in found), found
    assert any(p.startswith("concept[4].folder: needed: the folder of this concept's teacher pictures") for p in found), found
    toml = root / "copylora.toml"
    text = toml.read_text()
    toml.write_text(text.replace('class_folder = "suns"', 'class_folder = "reg"').replace('num_class_images = 2\n', 'num_class_images = 2\nfolder = "b"\n', 1))
    found = problems_of(root)
    assert "reg.folder: 'b' is already b.folder: class pictures need a folder of their own" in found
    toml.write_text(text.replace('class_folder = "suns"', 'class_folder = "reg"'))
    assert "concept[1].class_folder: 'reg' is already reg.folder: class pictures need a folder of their own" in problems_of(root)
    toml.write_text(text + "num_repeats = 0\nfolderr = 1\n")
    found = problems_of(root)
    assert "concept[4].num_repeats: must be greater than 0, got 0" in found
    assert any(p.startswith("concept[4].folderr: unknown key (did you mean 'folder'?)") for p in found), found
    toml.write_text(toml.read_text().split("[reg]")[0] + '[[concept]]\nfolder = "3_zwx sun"\n')
    assert any(p.startswith("concept: [[concept]] needs a [reg] table") for p in problems_of(root))
    toml.write_text("concept = 3\n" + toml.read_text().replace('[[concept]]\nfolder = "3_zwx sun"\n', ""))
    assert any(p.startswith("concept: must be a list of tables [[concept]]") for p in problems_of(root))


def test_one_folder_spelled_two_ways_is_one_folder(tmp_path):
    """ "b", "./b/" and an absolute path name one folder: each rule about two keys on one folder
    holds however each key spells it (they were compared as strings: "./a/" as B trained B on A's
    pictures, class pictures were generated into "./b" among B's teacher pictures)."""
    root = dreambooth_project(tmp_path)
    toml = root / "copylora.toml"
    text = toml.read_text()
    toml.write_text(text.replace('folder = "b"', 'folder = "./a/"', 1))
    assert "b.folder: A and B use the same folder ('a' and './a/' are one folder): B must hold the changed picture" in problems_of(root)
    toml.write_text(text.replace('class_folder = "suns"', f'class_folder = "{root / "b"}/"'))
    assert f"concept[1].class_folder: '{root / 'b'}/' is already b.folder: class pictures need a folder of their own" in problems_of(root)
    (root / "link-to-sun").symlink_to(root / "3_zwx sun")
    toml.write_text(text + '\n[[concept]]\nfolder = "link-to-sun"\n')
    assert any(p.startswith("concept[2].folder: 'link-to-sun' is already concept[1].folder") for p in problems_of(root))
    # previews and grids go to OUTPUT/samples: a teacher folder there would take them in
    (root / "b").rename(root / "samples")
    toml.write_text(text.replace('folder = "b"', 'folder = "samples"', 1).replace('output_dir = "output"', 'output_dir = "."'))
    assert ("project.output_dir: previews go to 'samples', which is b.folder: they would train as teacher pictures; "
            "choose another output_dir") in problems_of(root)
    toml.write_text(text.replace('folder = "b"', 'folder = "samples"', 1).replace('output_dir = "output"', 'output_dir = "out"'))
    load_project(root)  # samples/ of another output folder is no teacher folder of this one


def test_a_missing_caption_file_names_the_picture(tmp_path):
    root = dreambooth_project(tmp_path)
    (root / "3_zwx sun" / "two.txt").unlink()
    (root / "a" / "colour.txt").write_text("  \n")
    found = problems_of(root)
    assert f"concept[1].instance_prompt: {root / '3_zwx sun' / 'two.png'}: no caption file two.txt beside it " \
           "(its prompt says [filewords])" in found
    assert any("colour.png: its caption file colour.txt is empty" in p for p in found), found


def test_caption_extension_and_filewords_in_a_class_prompt(tmp_path):
    root = dreambooth_project(tmp_path, REG.replace('class_prompt = "a house"', 'class_prompt = "a [filewords]"'))
    assert any(p.startswith("reg.class_prompt: [filewords] is read from the teacher pictures' captions only")
               for p in problems_of(root))
    root = dreambooth_project(tmp_path / "2", REG.replace("[reg]\n", '[reg]\ncaption_extension = ".caption"\n'))
    for txt in root.rglob("*.txt"):
        txt.rename(txt.with_suffix(".caption"))
    assert load_project(root).reg.caption_extension == ".caption"
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('caption_extension = ".caption"', 'caption_extension = "caption"'))
    assert any(p.startswith("reg.caption_extension: must be a file extension") for p in problems_of(root))


def test_caption_files_of_a_caption_free_project_are_said_unused(tmp_path):
    root = copy_example(tmp_path)
    (root / "a" / "colour.txt").write_text("a house")
    warnings = plan_warnings(make_plan(load_project(root)))
    assert warnings == ["a.folder: caption files are not used (colour.txt): this project trains caption-free "
                        "(the copy-machine route)"]
    root = dreambooth_project(tmp_path / "2", REG.replace("sks house, [filewords]", "sks house"))
    warnings = plan_warnings(make_plan(load_project(root)))
    assert any(w.startswith("b.folder: caption files are not used (monochrome.txt): [reg].instance_prompt has no [filewords]")
               for w in warnings), warnings
    assert not any(w.startswith("concept[1]") for w in warnings)  # its prompt reads them


# --------------------------------------------------------------------------- what training sees


def test_captions_reach_the_text_encoder_and_concepts_their_items(tmp_path, tiny):
    import torch

    from engine.train.class_images import generate_class_images, missing_class_images
    from engine.train.conditioning import encode_text
    from engine.train.training_data import training_data

    root = dreambooth_project(tmp_path)
    project = load_project(root)
    project.train.resolution = [64, 96]
    project.sample.steps = 1
    assert missing_class_images(project) == 3
    written = generate_class_images(project, model=tiny, log=quiet)
    assert sorted(p.relative_to(root).as_posix() for p in written) == [
        "reg/class-0000.png", "reg/class-0001.png", "suns/class-0000.png"]
    plan = make_plan(project)
    for side, caption in (("a", "sks house, a house, sunny"), ("b", "sks house, a house, gray")):
        data = training_data(tiny, plan, side, quiet)
        assert data.prompts == [caption, "zwx sun, yellow", "zwx sun, orange, big", "a house", "a sun"]
        teachers, classes = data.items[:11], data.items[11:]
        assert [i.cond_index for i in teachers] == [0] * 5 + [1] * 3 + [2] * 3
        # class items: one per teacher item, cycling the pooled class pictures (reg's two, then the sun's)
        assert len(classes) == 11 and [i.cond_index for i in classes[:4]] == [3, 3, 4, 3]
        assert len(data.latents) == 1 + 2 + 3
    hidden = [encode_text(tiny, prompt).hidden for prompt in data.prompts[:3]]
    assert not torch.equal(hidden[1], hidden[2])  # two pictures, two captions, two conditionings
    assert not torch.equal(hidden[0], encode_text(tiny, "sks house, [filewords]").hidden)


def test_class_pictures_join_their_buckets_batches_and_the_plan_counts_them_before_they_are_drawn(tmp_path, tiny):
    """Batch 3 over teacher pictures of two shapes and class pictures of both (one landscape
    picture the user put in reg/, the others still to generate at the portrait resolution): the
    plan counts each bucket's batches before the pictures are drawn, at the names and size
    generation gives them, and training's epoch is exactly those batches, every item once."""
    from collections import Counter

    from engine.train.class_images import generate_class_images
    from engine.train.training_data import epoch_batches, training_data

    root = dreambooth_project(tmp_path)
    for name in ("one", "two"):  # the concept's two pictures landscape: the teachers span two buckets
        write_png(root / "3_zwx sun" / f"{name}.png", (144, 96), (250, 220, 40))
    write_png(root / "reg" / "zz-own.png", (144, 96), (90, 90, 90))  # after class-0000 by name
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("train_batch_size = 1\n", "train_batch_size = 3\n").replace("steps = 8", "steps = 1"))
    project = load_project(root)
    before = make_plan(project).side("a")
    # teachers: A 5 × 128×192, suns 6 × 192×128; class pool: reg/class-0000 (drawn 128×192),
    # reg/zz-own (192×128), suns/class-0000 (128×192), cycled to 11: 7 + 4.
    assert before.epoch_buckets == (((128, 192), 12), ((192, 128), 10)) and before.reg_images == 3
    assert before.steps_per_epoch == 4 + 4
    assert [p.name for p in generate_class_images(project, model=tiny, log=quiet)] == ["class-0000.png", "class-0000.png"]
    plan = make_plan(load_project(root))
    assert plan.side("a").steps_per_epoch == before.steps_per_epoch
    data = training_data(tiny, plan, "a", quiet)
    assert Counter(i.bucket for i in data.items) == {(128, 192): 12, (192, 128): 10}
    batches = epoch_batches(data.items, 3, plan.side("a").params.seed, 0)
    assert len(batches) == plan.side("a").steps_per_epoch and all(len({i.bucket for i in b}) == 1 for b in batches)
    assert Counter(i for b in batches for i in b) == Counter(data.items)


def test_a_class_picture_rewritten_in_place_at_another_size_moves_to_its_bucket_in_the_plan(tmp_path):
    """The plan's class-picture buckets were cached by the folder's modification time: a picture
    overwritten in place (no rename) at another shape kept its old bucket in check's count while
    training saw the new one. Each picture counts by its own size and time now."""
    import os

    root = dreambooth_project(tmp_path, '\n[reg]\ninstance_prompt = "sks house"\nclass_prompt = "a house"\n')
    (root / "reg").mkdir()
    picture = root / "reg" / "own.png"
    write_png(picture, (128, 192), (90, 90, 90))
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("train_batch_size = 1\n", "train_batch_size = 2\n"))
    assert dict(make_plan(load_project(root)).side("a").epoch_buckets) == {(128, 192): 10}
    folder_time = (root / "reg").stat().st_mtime_ns
    write_png(picture, (192, 128), (90, 90, 90))  # in place, then the folder's time as it was
    os.utime(picture, ns=(folder_time + 10**9, folder_time + 10**9))
    os.utime(root / "reg", ns=(folder_time, folder_time))
    side = make_plan(load_project(root)).side("a")
    assert dict(side.epoch_buckets) == {(128, 192): 5, (192, 128): 5} and side.steps_per_epoch == 6


def test_a_class_folder_larger_than_the_bucket_cache_is_read_once(tmp_path, monkeypatch):
    """The cache was emptied before each folder it could not hold whole: a class folder of
    21 000 pictures read every header on every plan (the app plans often)."""
    from engine.project import epoch_buckets, images

    folder = tmp_path / "reg"
    for n in range(12):
        write_png(folder / f"{n:02d}.png", (128, 192), (90, 90, 90))
    monkeypatch.setattr(epoch_buckets, "PICTURE_CACHE_MAX", 10)
    monkeypatch.setattr(epoch_buckets, "_PICTURE_BUCKETS", {})
    reads: list[str] = []
    real = images.read_image_info
    monkeypatch.setattr(images, "read_image_info", lambda path, **kw: (reads.append(path.name), real(path, **kw))[1])
    first = epoch_buckets._folder_buckets(folder, (600, 900))
    assert len(reads) == 12
    assert epoch_buckets._folder_buckets(folder, (600, 900)) == first and len(reads) == 12  # no header read again


def test_check_shares_steps_by_bucket_as_batches_hold_one(tmp_path):
    """A concept of two shapes at batch 4 takes batches bucket by bucket, not one per four items
    of any shape: its share of the steps is counted so (check showed 3 for the suns' 12 items,
    where their two buckets of 6 make 2 batches each)."""
    root = dreambooth_project(tmp_path)
    write_png(root / "3_zwx sun" / "one.png", (144, 96), (250, 220, 40))  # one landscape, one portrait
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("train_batch_size = 1\n", "train_batch_size = 4\n"))
    rows = {r["concept"]: r for r in concept_rows(make_plan(load_project(root)))}
    # A: 5 items × 2 (class pictures) in one bucket: 3 batches; the suns: 3 + 3 items doubled, two buckets: 2 + 2.
    assert rows["A's pictures"]["steps_per_epoch"] == 3 and rows["concept[1]"]["steps_per_epoch"] == 4


def test_a_broken_class_picture_is_refused_where_more_are_to_be_generated(tmp_path, tiny):
    """reg/ with num_class_images = 2 and one file that is no picture: check said "valid" (a
    folder whose pictures are generated was not read), the broken file counted as a class picture,
    and training stopped on a bare "not an image Pillow can read". Check names it now; one put
    there after check stops training with its name."""
    from engine.train.results import TrainingError
    from engine.train.training_data import training_data

    root = dreambooth_project(tmp_path)
    (root / "reg").mkdir()
    (root / "reg" / "broken.png").write_bytes(b"not a picture at all")
    assert any(p.startswith("reg.folder broken.png:") for p in problems_of(root))
    (root / "reg" / "broken.png").unlink()
    project = load_project(root)
    for folder in ("reg", "suns"):
        (root / folder).mkdir(exist_ok=True)
        write_png(root / folder / "class-0000.png", (128, 192), (90, 90, 90))
    write_png(root / "reg" / "class-0001.png", (128, 192), (90, 90, 90))
    plan = make_plan(project)
    (root / "reg" / "class-0001.png").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match=r"class picture .*class-0001\.png: "):
        training_data(tiny, plan, "a", quiet)


def test_a_class_folder_that_cannot_take_the_pictures_to_generate_is_refused_at_check(tmp_path):
    """A project on a read-only mount whose class pictures are still to be drawn: check said
    valid, and the class-images job failed on "Read-only file system". A class folder that holds
    all its pictures is only read: valid there."""
    root = dreambooth_project(tmp_path, '\n[reg]\ninstance_prompt = "sks house"\nclass_prompt = "a house"\nnum_class_images = 2\n')
    reg = root / "reg"
    for _ in mount_tmpfs(reg, "2M"):
        write_png(reg / "own.png", (128, 192), (90, 90, 90))
        remount_read_only(reg)
        assert problems_of(root) == [f"reg.folder: 1 class picture(s) are to be generated into it, but {reg}: {reg} is on a "
                                     "read-only filesystem"]
        assert load_project(root, writing=False).reg.num_class_images == 2  # looked at, not trained: no problem
        toml = root / "copylora.toml"
        toml.write_text(toml.read_text().replace("num_class_images = 2", "num_class_images = 1"))
        assert load_project(root).reg.num_class_images == 1  # all there: nothing to write


def test_class_pictures_of_another_bucket_are_in_the_cuda_graphs_warning(tmp_path):
    """cuda_graphs over teachers of one shape and class pictures of another: the step's shapes
    change (the trainer runs those steps eagerly); check counted the teachers' buckets alone."""
    from engine.project.plan import plan_warnings

    root = dreambooth_project(tmp_path, '\n[reg]\ninstance_prompt = "sks house"\nclass_prompt = "a house"\n')
    (root / "reg").mkdir()
    write_png(root / "reg" / "wide.png", (192, 128), (90, 90, 90))
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("cuda_graphs = false\n", "cuda_graphs = true\n", 1))
    warned = [w for w in plan_warnings(make_plan(load_project(root))) if "cuda_graphs" in w]
    assert warned and "2 buckets" in warned[0]


def test_class_pictures_are_drawn_as_sd_scripts_registers_them():
    """Each class picture its [reg] num_repeats in a first pass (the last may pass the teacher
    count: 10 teachers, 4 pictures × 3 give 12), then one more per picture in turn (14 teachers,
    3 × 3: 5, 5, 4, where cycling the repeated pool gave 6, 5, 3); one repeat each: the pool
    cycled, the order runs had before."""
    from collections import Counter

    from engine.project.epoch_buckets import class_draws

    assert class_draws([3, 3, 3, 3], 10) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert sorted(Counter(class_draws([3, 3, 3], 14)).items()) == [(0, 5), (1, 5), (2, 4)]
    assert class_draws([1, 1, 1], 7) == [0, 1, 2, 0, 1, 2, 0]
    assert class_draws([], 5) == [] and class_draws([2], 0) == []


def test_class_repeats_count_in_the_plan_as_in_training(tmp_path, tiny):
    from collections import Counter

    from engine.train.class_images import generate_class_images
    from engine.train.training_data import training_data

    root = dreambooth_project(tmp_path)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("num_class_images = 2\n", "num_class_images = 2\nnum_repeats = 4\n", 1)
                    .replace("steps = 8", "steps = 1"))
    project = load_project(root)
    assert project.reg.num_repeats == 4
    before = make_plan(project).side("a")
    assert before.steps_per_epoch == 11 + 12  # 11 teacher items; 3 class pictures × 4 pass them in the first pass
    generate_class_images(project, model=tiny, log=quiet)
    plan = make_plan(load_project(root))
    data = training_data(tiny, plan, "a", quiet)
    assert len(data.items) == plan.side("a").steps_per_epoch == before.steps_per_epoch
    assert sorted(Counter(i.latent_index for i in data.items[11:]).values()) == [4, 4, 4]


def test_a_changed_caption_makes_the_checkpoint_stale(tmp_path):
    from engine.project.provenance import training_fingerprint

    root = dreambooth_project(tmp_path)
    before = training_fingerprint(make_plan(load_project(root)), "a")
    (root / "3_zwx sun" / "one.txt").write_text("lemon")
    assert training_fingerprint(make_plan(load_project(root)), "a") != before
    # a copy-machine project's fingerprint does not involve captions at all
    plain = copy_example(tmp_path / "plain")
    first = training_fingerprint(make_plan(load_project(plain)), "a")
    (plain / "a" / "colour.txt").write_text("anything")
    assert training_fingerprint(make_plan(load_project(plain)), "a") == first


@pytest.mark.slow
def test_two_concept_project_trains_through_the_queue_with_kohya_metadata(tmp_path, monkeypatch):
    from safetensors import safe_open

    from engine.jobs.enqueue import enqueue_project
    from engine.jobs.queue import Queue
    from engine.jobs.worker import start_detached, stop_worker
    from tests.helpers import wait_for

    home = tmp_path / "state"
    monkeypatch.setenv("COPYLORA_HOME", str(home))
    root = dreambooth_project(tmp_path)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("resolution = [128, 192]", "resolution = [64, 96]")
                    .replace("steps = 8", "steps = 1").replace("size = [128, 192]", "size = [64, 64]"))
    queue = Queue(home)
    steps = enqueue_project(queue, root, max_steps=3)
    assert [s.what for s in steps] == ["class images", "train A", "train B", "merge", "preview"]
    assert steps[0].job.total == 3
    try:
        start_detached(home, per_gpu=1)
        ids = [s.job.id for s in steps]
        wait_for(lambda: all(queue.get(i).status in ("done", "failed") for i in ids), timeout=400, what="the queue to drain")
    finally:
        stop_worker(home)
    assert [queue.get(i).status for i in ids] == ["done"] * 5, [queue.get(i).error for i in ids]
    plan = make_plan(load_project(root))
    with safe_open(str(plan.side("a").lora_path), framework="pt") as f:
        meta = f.metadata()
    dataset = json.loads(meta["ss_datasets"])[0]
    assert [(s["image_dir"], s["num_repeats"], s["img_count"], s["is_reg"]) for s in dataset["subsets"]] == [
        ("a", 5, 1, False), ("3_zwx sun", 3, 2, False), ("reg", 1, 2, True), ("suns", 1, 1, True)]
    assert dataset["num_train_images"] == 11 and dataset["num_reg_images"] == 3
    tags = json.loads(meta["ss_tag_frequency"])
    assert tags["a"] == {"sks house": 1, "a house": 1, "sunny": 1}
    assert tags["3_zwx sun"] == {"zwx sun": 2, "yellow": 1, "orange": 1, "big": 1} and tags["suns"] == {"a sun": 1}
    assert json.loads(meta["ss_dataset_dirs"]) == {"a": {"n_repeats": 5, "img_count": 1}, "3_zwx sun": {"n_repeats": 3, "img_count": 2}}


def test_check_prints_each_concept_and_json_lists_them(tmp_path, capsys, monkeypatch):
    from copylora_tui.cli.main import main

    monkeypatch.setenv("COLUMNS", "200")
    root = dreambooth_project(tmp_path)
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "captions from .txt files where a prompt says [filewords]" in out
    lines = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines() if line.startswith(("A's", "concept[1]", "class"))}
    assert "'sks house, [filewords]'" in lines["A's pictures"] and " 10 " in lines["A's pictures"]
    assert "3_zwx sun/" in lines["concept[1] 3_zwx"] and " 12 " in lines["concept[1] 3_zwx"]
    said = "training  A, then B: the project has [reg] class pictures or a [[concept]] (the DreamBooth flow trains each side apart)"
    assert said in out  # Rich markup no longer eats [reg]
    assert main(["check", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["concept"] for r in data["concepts"]] == ["A's pictures", "B's pictures", "concept[1]", "class (reg)", "class (concept[1])"]


def test_check_with_a_missing_caption_is_one_line_per_problem(tmp_path, capsys):
    from copylora_tui.cli.main import main

    root = dreambooth_project(tmp_path)
    (root / "a" / "colour.txt").unlink()
    assert main(["check", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"reg.instance_prompt: {root / 'a' / 'colour.png'}: no caption file colour.txt beside it" in err


# --------------------------------------------------------------------------- import-kohya


DATASET = """
[general]
resolution = [512, 768]
caption_extension = ".caption"

[[datasets]]
batch_size = 1
  [[datasets.subsets]]
  image_dir = '/data/10_sks girl'
  num_repeats = 10
  class_tokens = 'sks girl'
  [[datasets.subsets]]
  image_dir = '/data/dog'
  num_repeats = 3
  flip_aug = true
  [[datasets.subsets]]
  image_dir = '/data/reg_girl'
  is_reg = true
  class_tokens = 'girl'
  [[datasets.subsets]]
  image_dir = '/data/reg_dog'
  is_reg = true
  class_tokens = 'dog'
  [[datasets.subsets]]
  image_dir = '/data/reg_extra'
  is_reg = true
"""


def test_import_kohya_maps_several_subsets_onto_reg_and_concepts(tmp_path):
    from engine.project.kohya_import import apply_import, import_kohya
    from tests.test_kohya_import import _check_reports, _entry, _input_keys

    path = tmp_path / "dataset.toml"
    path.write_text(DATASET)
    result = import_kohya(path)
    assert result.train == {"resolution": [512, 768], "train_batch_size": 1, "num_repeats": 10}
    assert result.extra["reg"] == {"caption_extension": ".caption", "instance_prompt": "[filewords]", "folder": "/data/reg_girl",
                                   "class_prompt": "girl"}
    assert result.extra["concept[1]"] == {"instance_prompt": "[filewords]", "folder": "/data/dog", "num_repeats": 3,
                                          "class_folder": "/data/reg_dog", "class_prompt": "dog"}
    assert "caption file" in _entry(result.ignored, "datasets[0].subsets[0].class_tokens").note
    assert "one flip_aug" in _entry(result.ignored, "datasets[0].subsets[1].flip_aug").note
    assert "more class subsets than concepts" in _entry(result.ignored, "datasets[0].subsets[4].image_dir").note
    _check_reports(result, _input_keys(path))
    project = apply_import(load_project(copy_example(tmp_path)), result)
    assert project.reg.class_prompt == "girl" and [c.folder for c in project.concepts] == ["/data/dog"]
    # without captions, class_tokens are the instance prompts
    path.write_text(DATASET.replace('caption_extension = ".caption"\n', ""))
    result = import_kohya(path)
    assert result.extra["reg"]["instance_prompt"] == "sks girl" and "instance_prompt" not in result.extra["concept[1]"]


def test_import_kohya_into_a_project_then_check(tmp_path, capsys, monkeypatch):
    from copylora_tui.cli.main import main

    monkeypatch.setenv("COLUMNS", "400")
    root = dreambooth_project(tmp_path, "")
    data = tmp_path / "data"
    shutil.copytree(root / "3_zwx sun", data / "dog")
    (data / "reg_girl").mkdir()
    write_png(data / "reg_girl" / "g.png")
    (data / "reg_dog").mkdir()
    write_png(data / "reg_dog" / "d.png")
    for txt in [*root.glob("[ab]/*.txt"), *(data / "dog").glob("*.txt")]:
        txt.rename(txt.with_suffix(".caption"))
    path = tmp_path / "dataset.toml"
    path.write_text(DATASET.replace("/data", str(data)))
    assert main(["import-kohya", str(path), "--into", str(root), "--quiet"]) == 0
    project = load_project(root)
    assert project.concepts[0].folder == str(data / "dog") and project.concepts[0].num_repeats == 3
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{data / 'dog'}/" in out and f"{data / 'reg_dog'}/" in out and "'[filewords]'" in out


# --------------------------------------------------------------------------- the app's form


async def test_app_form_adds_edits_and_removes_concepts(tmp_path, monkeypatch):
    from textual.widgets import Button, Static

    from copylora_tui.app import CopyloraApp
    from tests.test_app_project import open_project
    from tests.test_app_support import screen_text, use_home, wait_until

    use_home(monkeypatch, tmp_path)
    root = dreambooth_project(tmp_path / "projects")
    toml = root / "copylora.toml"
    app = CopyloraApp(root.parent)

    def editor(section: str, key: str):
        return app.screen.query_one(f"#field-{section}-{key} #editor")

    def error(section: str, key: str) -> str:
        return str(app.screen.query_one(f"#field-{section}-{key} .param-error", Static).render())

    def status() -> str:
        return str(app.screen.query_one("#project-status", Static).render())

    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, root)
        await wait_until(pilot, lambda: app.screen.query("#add-concept") and app.screen.query("#field-concept-1-folder #editor"))
        assert app.screen.concept_count == 1 and editor("concept-1", "folder").value == "3_zwx sun"

        def title(number: int) -> str:
            return str(app.screen.query_one(f"#section-concept-{number}").title)

        assert title(1) == "[[concept]] 1: 3_zwx sun"  # as written (it showed "[\[concept]]": rich's escape, read as Textual's markup)
        # shown, not only there to Tab into: the list's box had no height inside the scrolling form
        app.screen.query_one("#add-concept", Button).scroll_visible(animate=False)
        await wait_until(pilot, lambda: "add concept" in screen_text(app) and "[[concept]] 1: 3_zwx sun" in screen_text(app))
        app.screen.query_one("#add-concept", Button).press()
        await wait_until(pilot, lambda: app.screen.query("#field-concept-2-folder #editor"))
        assert title(2) == "[[concept]] 2: no folder yet"
        # a new concept has no folder yet: the check says so under its field, and nothing is saved
        await wait_until(pilot, lambda: "needed: the folder" in error("concept-2", "folder"))
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert toml.read_text().count("[[concept]]") == 1
        write = root / "dogs"
        write.mkdir()
        (write / "x.png").write_bytes((root / "a" / "colour.png").read_bytes())
        editor("concept-2", "folder").value = "dogs"
        editor("concept-2", "instance_prompt").value = "zwx dog"
        await wait_until(pilot, lambda: error("concept-2", "folder") == "" and "unsaved" in status())
        assert title(2) == "[[concept]] 2: dogs"  # its title follows its folder
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: [c.folder for c in load_project(root).concepts] == ["3_zwx sun", "dogs"])
        assert load_project(root).concepts[1].instance_prompt == "zwx dog"
        # removing the first moves the second up, keeping what it holds
        app.screen.query_one("#remove-concept-1", Button).press()
        await wait_until(pilot, lambda: "unsaved" in status() and not app.screen.query("#remove-concept-2"))
        assert app.screen.concept_count == 1 and editor("concept-1", "folder").value == "dogs"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: [c.folder for c in load_project(root).concepts] == ["dogs"])
        app.screen.query_one("#remove-concept-1", Button).press()
        await wait_until(pilot, lambda: app.screen.concept_count == 0)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "[[concept]]" not in toml.read_text())
        assert load_project(root).reg is not None and not load_project(root).concepts


async def test_concepts_added_or_removed_before_a_hangup_are_taken_back(tmp_path, monkeypatch):
    """The draft (copylora_tui/core/drafts.py) keeps the concept count and what each concept holds."""
    from textual.widgets import Input

    from copylora_tui.app import CopyloraApp
    from tests.test_app_project import open_project
    from tests.test_app_support import use_home, wait_until

    use_home(monkeypatch, tmp_path)
    root = dreambooth_project(tmp_path / "projects")
    (root / "dogs").mkdir()
    (root / "dogs" / "x.png").write_bytes((root / "a" / "colour.png").read_bytes())

    def editor(app, number: int, key: str) -> Input:
        return app.screen.query_one(f"#field-concept-{number}-{key} #editor", Input)

    for added in (True, False):
        app = CopyloraApp(root.parent)
        async with app.run_test(size=(100, 30)) as pilot:
            await open_project(pilot, app, root)
            await wait_until(pilot, lambda: app.screen.query("#field-concept-1-folder #editor"))
            if added:
                await app.screen.edit_concepts(add=True)
                await wait_until(pilot, lambda: app.screen.query("#field-concept-2-folder #editor"))
                editor(app, 2, "folder").value = "dogs"
            else:
                await app.screen.edit_concepts(remove=1)
            await wait_until(pilot, lambda: app.screen.dirty)
            assert app.keep_unsaved_edits()
        app = CopyloraApp(root.parent)
        async with app.run_test(size=(100, 30)) as pilot:
            await open_project(pilot, app, root)
            await wait_until(pilot, lambda: app.screen.concept_count == (2 if added else 0))
            if added:
                await wait_until(pilot, lambda: app.screen.query("#field-concept-2-folder #editor")
                                 and editor(app, 2, "folder").value == "dogs")
                assert editor(app, 1, "folder").value == "3_zwx sun"
            assert app.screen.dirty


async def test_app_form_without_reg_has_no_concept_list(tmp_path, monkeypatch):
    from copylora_tui.app import CopyloraApp
    from tests.test_app_project import open_project
    from tests.test_app_support import make_projects, use_home

    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        await pilot.pause()
        assert not app.screen.query("#add-concept") and app.screen.concept_count == 0
        assert not app.screen.dirty


def test_removing_a_concept_renumbers_the_later_ones_only():
    from copylora_tui.core.form import without_concept

    values = {"train.seed": 1, "concept[1].folder": "x", "concept[2].folder": "y", "concept[3].folder": "z",
              "concept[3].num_repeats": 4}
    assert without_concept(values, 2) == {"train.seed": 1, "concept[1].folder": "x", "concept[2].folder": "z",
                                          "concept[2].num_repeats": 4}
    assert without_concept(values, None) == values and without_concept(values, 9) == values


def test_train_command_makes_missing_class_pictures_first(tmp_path, capsys):
    """`copylora train` on a [reg] project whose class folders are still empty used to end in
    "internal error: FileNotFoundError"; it now generates them, as the queue's job does."""
    from copylora_tui.cli.main import main

    root = dreambooth_project(tmp_path)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("resolution = [128, 192]", "resolution = [64, 96]").replace("steps = 8", "steps = 1"))
    assert main(["train", str(root), "--side", "a", "--max-steps", "2"]) == 0
    assert len(list((root / "reg").glob("class-*.png"))) == 2 and len(list((root / "suns").glob("class-*.png"))) == 1
    assert "generating 1 class image(s) of 'a sun'" in capsys.readouterr().err
    assert make_plan(load_project(root)).side("a").lora_path.is_file()


def test_reg_without_class_pictures_trains_each_picture_under_its_own_caption(tmp_path, tiny):
    """[reg] folder = "": captions per picture ([filewords]) with no class pictures — what several
    copy-machine pairs of different pictures need; the steps are not doubled and nothing is
    generated. Asking for class pictures without a folder is refused with its key."""
    from engine.train.class_images import missing_class_images
    from engine.train.training_data import training_data

    root = copy_example(tmp_path, "pairs")
    for side, name in (("a", "colour"), ("b", "monochrome")):
        write_png(root / side / "second.png", *((128, 192), (40, 170, 60)) if side == "a" else ((128, 192), (110, 110, 110)))
        (root / side / f"{name}.txt").write_text("a yellow circle on a blue background\n")
        (root / side / "second.txt").write_text("a green field\n")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text() + '\n[reg]\nfolder = ""\ninstance_prompt = "[filewords]"\n')
    project = load_project(root)
    assert missing_class_images(project) == 0
    plan = make_plan(project)
    side = plan.side("a")
    assert side.reg_images == 0 and side.steps_per_epoch == 2 * project.train.num_repeats
    project.train.resolution = [64, 96]
    data = training_data(tiny, make_plan(project), "b", quiet)
    assert sorted(data.prompts) == ["a green field", "a yellow circle on a blue background"]
    assert len(data.items) == 2 * project.train.num_repeats and {i.weight for i in data.items} == {1.0}

    for asks in ('class_prompt = "a shape"\n', "num_class_images = 2\n"):  # either one alone asks for class pictures
        (root / "copylora.toml").write_text(toml.read_text().replace('folder = ""\n', 'folder = ""\n' + asks))
        assert any(p.startswith("reg.folder") and "asks for some" in p for p in problems_of(root)), asks



def test_check_says_a_reg_without_class_pictures_has_none(tmp_path, capsys):
    from copylora_tui.cli.main import main

    root = copy_example(tmp_path, "pairs")
    (root / "a" / "colour.txt").write_text("a colourful picture\n")
    (root / "b" / "monochrome.txt").write_text("a colourful picture\n")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text() + '\n[reg]\nfolder = ""\ninstance_prompt = "[filewords]"\n')
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert 'dreambooth  no class pictures (reg.folder = ""); captions from .txt files' in out
    assert "prior preservation" not in out


def test_a_caption_with_a_bom_or_in_shift_jis_is_read_or_said(tmp_path):
    """Notepad's "UTF-8 with BOM" put U+FEFF at the head of the prompt (and into
    ss_tag_frequency); a Shift-JIS caption was Python's bare codec error."""
    from engine.project.concepts import CaptionError, read_caption

    picture = write_png(tmp_path / "girl.png")
    (tmp_path / "girl.txt").write_bytes("\ufeffsks girl, smile\n".encode("utf-8"))
    assert read_caption(picture, ".txt") == "sks girl, smile"
    (tmp_path / "girl.txt").write_bytes("笑顔の少女".encode("cp932"))
    with pytest.raises(CaptionError) as caught:
        read_caption(picture, ".txt")
    assert "girl.txt is not UTF-8 (it reads as Shift-JIS/cp932, as a Japanese Windows editor saves it): save it as UTF-8" in str(caught.value)


def test_folders_as_kohya_users_give_them_are_said_with_the_way_out(tmp_path):
    """A kohya config's Windows path named a folder of that literal name in the project (class
    pictures were generated into `C:\\kohya\\reg\\1_boy`); kohya's reg/ of subfolders was "no
    images", and an empty class folder said nothing of generating them."""
    root = dreambooth_project(tmp_path, REG.replace('[reg]\n', '[reg]\nfolder = "C:\\\\kohya\\\\reg\\\\1_boy"\n'))
    found = problems_of(root)
    assert "reg.folder: 'C:\\\\kohya\\\\reg\\\\1_boy' is a Windows path: give the folder as it is on this machine (relative to the " \
           "project, or absolute, with /)" in found, found
    assert not (root / "C:\\kohya\\reg\\1_boy").exists()
    write_png(root / "reg" / "1_girl" / "one.png")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('folder = "C:\\\\kohya\\\\reg\\\\1_boy"\n', 'folder = "reg"\n')
                    .replace("num_class_images = 2\n", "num_class_images = 0\n", 1))
    said = [p for p in problems_of(root) if p.startswith("reg.folder")]
    assert said and "its subfolders 1_girl hold some (kohya's layout: name one of them)" in said[0], said
    assert "(or set num_class_images to have class pictures generated there)" in said[0]


def test_filewords_in_a_preview_prompt_is_said(tmp_path):
    """A preview has no caption to read: "[filewords]" was drawn, labelled and recorded as text."""
    root = dreambooth_project(tmp_path)
    toml = root / "copylora.toml"
    text = toml.read_text()
    assert "\nprompts = " in text
    toml.write_text(text.replace("\nprompts = [", '\nprompts = ["sks house, [filewords]", ', 1))
    said = [w for w in plan_warnings(make_plan(load_project(root))) if "[filewords]" in w and w.startswith("sample.prompts")]
    assert said and said[0].startswith("sample.prompts[0]: 'sks house, [filewords]' has [filewords]"), said


def test_class_pictures_under_the_teachers_own_prompt_are_said(tmp_path):
    """A kohya_ss reg_data_dir imports with both prompts empty (kohya took them from its folder
    names): prior preservation on the teachers' own prompt pulls the LoRA to the class pictures."""
    root = dreambooth_project(tmp_path)
    toml = root / "copylora.toml"
    text = toml.read_text()
    assert not [w for w in plan_warnings(make_plan(load_project(root))) if "prior preservation then pulls" in w]
    toml.write_text(text.replace('instance_prompt = "sks house, [filewords]"', 'instance_prompt = "a house"', 1))
    said = [w for w in plan_warnings(make_plan(load_project(root))) if "prior preservation then pulls" in w]
    assert len(said) == 1 and said[0].startswith("reg.class_prompt: the class pictures train under 'a house'"), said
