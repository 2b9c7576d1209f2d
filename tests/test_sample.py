"""Preview grids: strength 0 is the base model bit for bit, 1 differs; the grid and its PNG
metadata; previews during training leave the training untouched."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from engine.train.controls import TrainControls
from engine.train.sample import SampleSettings, generate, read_grid_parameters, sample_lora  # noqa: E402
from tests.helpers import copy_example, run_preview_job  # noqa: E402

SETTINGS = SampleSettings(prompts=["", "a red house"], steps=3, size=[64, 96], strengths=[0.0, 1.0], seed=7)


@pytest.fixture(scope="module")
def lora_file(tiny, tmp_path_factory):
    from engine.lora.network import LoRANetwork

    network = LoRANetwork(tiny.unet, tiny.text_encoders, rank=4, alpha=4.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return network.save(tmp_path_factory.mktemp("lora") / "L.safetensors", dtype="float")


def pixels(image):
    import numpy as np

    return np.asarray(image)


def test_strength_zero_is_the_base_pipeline_bit_for_bit(tiny, lora_file):
    import numpy as np

    from engine.lora.network import LoRANetwork

    base = generate(tiny, SETTINGS, None)
    network = LoRANetwork.from_file(lora_file, tiny.unet, tiny.text_encoders, tiny.family)
    with_lora = generate(tiny, SETTINGS, network)
    for row_base, row_lora in zip(base, with_lora):
        assert np.array_equal(pixels(row_base[0]), pixels(row_lora[0]))  # strength 0.0
        assert not np.array_equal(pixels(row_base[0]), pixels(row_lora[1]))  # strength 1.0
    # The network is left as found: not hooked into the model.
    assert all(lora._hook is None for lora in network.loras())


def test_prompts_drawn_in_one_batch_are_the_pictures_drawn_one_at_a_time(tiny, lora_file):
    """Batched prompts (engine.train.sample.sample_batch) share the U-Net calls, yet each picture
    keeps its own seed's noise: the same picture as drawn alone, but for float rounding."""
    import numpy as np

    from engine.lora.network import LoRANetwork
    from engine.train.sample import sample_batch

    settings = replace(SETTINGS, prompts=["", "a red house", "a blue car"], strengths=[0.0, 0.5, 1.0])
    assert sample_batch(settings) == 1024 * 1024 // (64 * 96)  # a toy-sized preview: one call for many prompts
    assert sample_batch(replace(settings, size=[832, 1216])) == 1  # SDXL's size: one picture at a time, as before
    assert sample_batch(replace(settings, sampler="DPM++ SDE Karras")) == 1  # its Brownian noise spans the batch
    network = LoRANetwork.from_file(lora_file, tiny.unet, tiny.text_encoders, tiny.family)
    calls = []
    together = generate(tiny, settings, network, progress=lambda done, total: calls.append((done, total)))
    alone = generate(tiny, settings, network, batch=1)
    assert calls == [(3, 9), (6, 9), (9, 9)]  # one call per strength, every prompt in it
    for row_together, row_alone in zip(together, alone, strict=True):
        for a, b in zip(row_together, row_alone, strict=True):
            difference = np.abs(pixels(a).astype(int) - pixels(b).astype(int))
            assert difference.mean() < 1 and difference.max() <= 16  # rounding, grown by a random model (another seed: ~45)
    assert not np.array_equal(pixels(together[1][0]), pixels(together[2][0]))  # and the prompts are not mixed up
    assert not np.array_equal(pixels(together[1][0]), pixels(together[1][2]))  # nor the strengths


def test_base_pictures_are_drawn_once_for_every_lora_measured(tiny, lora_file, monkeypatch):
    """Strength 0 is the base: a benchmark measuring many LoRAs draws its pictures once."""
    import numpy as np

    import engine.train.sample as sample
    from engine.lora.network import LoRANetwork
    from engine.train.effect import generate_rows

    drawn = []
    real = sample.generate
    monkeypatch.setattr(sample, "generate", lambda model, settings, network, **kw: drawn.append(list(settings.strengths)) or
                        real(model, settings, network, **kw))
    network = LoRANetwork.from_file(lora_file, tiny.unet, tiny.text_encoders, tiny.family)
    kept: dict = {}
    sampling = {"steps": 3, "size": (64, 64), "guidance": 7.0}
    first = generate_rows(tiny, network, ["", "a red house"], [1, 2], [0.0, 1.0], base_pictures=kept, **sampling)
    again = generate_rows(tiny, network, ["", "a red house"], [1, 2], [0.0, 1.0], base_pictures=kept, **sampling)
    fresh = generate_rows(tiny, network, ["", "a red house"], [1, 2], [0.0, 1.0], **sampling)
    assert drawn == [[0.0, 1.0], [0.0, 1.0], [1.0], [1.0], [0.0, 1.0], [0.0, 1.0]]  # per seed; the second time without 0
    assert set(kept) == set(first) and len(kept) == 4
    for key in first:
        assert again[key][0] is first[key][0] and np.array_equal(pixels(again[key][0]), pixels(fresh[key][0]))
        assert np.array_equal(pixels(again[key][1]), pixels(fresh[key][1]))


def test_grid_layout_labels_and_metadata_round_trip(tiny, lora_file, tmp_path):
    out = sample_lora(tiny, lora_file, SETTINGS, tmp_path / "grid.png", model_name="tiny")
    from PIL import Image

    with Image.open(out) as image:
        width, height = image.size
        text = dict(image.text)
    label = 17  # a band of one line of the default font, padded (engine.train.grid_labels)
    assert (width, height) == (2 * 64, 4 * label + 2 * 96)  # title, strengths, and each prompt above its row
    record = read_grid_parameters(out)
    assert SampleSettings(**record["settings"]) == SETTINGS
    assert record["lora"] == "L.safetensors" and len(record["lora_sha256"]) == 64
    assert "Steps: 3, Sampler: Euler a, CFG scale: 7, Seed: 7, Size: 64x96" in text["parameters"]


def a1111_fields(infotext: str) -> dict[str, str]:
    """The last line of an infotext as A1111 reads it (modules/infotext_utils.py: re_param and unquote)."""
    import json
    import re

    fields = {}
    for key, value in re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', infotext.splitlines()[-1]):
        fields[key] = json.loads(value) if value.startswith('"') else value
    return fields


def test_a1111_reads_back_every_strength_and_the_lora(tiny, lora_file, tmp_path):
    """The infotext's values with commas were written bare: A1111's PNG Info (and every reader
    of its format) read "Strengths: -1, 0, 0.5, 1" as -1, and a LoRA named "mono, v2" as "mono"."""
    import shutil

    named = shutil.copy(lora_file, tmp_path / "mono, v2.safetensors")
    settings = replace(SETTINGS, prompts=["a red house"], strengths=[-1.0, 0.0, 0.5, 1.0], steps=1)
    out = sample_lora(tiny, Path(named), settings, tmp_path / "grid.png", model_name="tiny")
    from PIL import Image

    with Image.open(out) as image:
        fields = a1111_fields(image.info["parameters"])
    assert fields["Strengths"] == "-1, 0, 0.5, 1" and fields["LoRA"] == "mono, v2.safetensors", fields
    assert (fields["Steps"], fields["Sampler"], fields["CFG scale"], fields["Seed"], fields["Size"]) == ("1", "Euler a", "7", "7", "64x96")


def test_a_grid_whose_labels_take_it_past_pillows_limit_is_refused_before_drawing(tiny, lora_file, tmp_path, monkeypatch, capsys):
    """16 prompts x 16 strengths at 832x832 is 177 MP of pictures, under [sample]'s 178 MP; with the
    label bands above each row the grid was 181 MP, which Pillow (the app's pane, A1111, ComfyUI)
    refuses to open: drawn for hours, then unreadable. Now refused, exit 2, before the model loads
    (the command) or anything is drawn (the preview job's sample_lora)."""
    from PIL import Image

    import engine.models.loading
    import engine.train.sample as sample
    from copylora_tui.cli.main import EXIT_USAGE, main

    def never(*_args, **_kwargs):
        raise AssertionError("drawn")

    monkeypatch.setattr(engine.models.loading, "load_base_model", never)
    monkeypatch.setattr(sample, "generate", never)
    strengths = ",".join(f"{-1 + i / 7.5:g}" for i in range(16))
    prompts = [arg for i in range(16) for arg in ("--prompt", f"a girl, upper body, outdoors, picture {i}")]
    assert main(["sample", str(lora_file), "--base", "tiny", "--size", "832x832", "--strengths", strengths, *prompts]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--strengths: 16 prompt(s) x 16 strength(s) at 832x832 make a 13312x" in err and "Pillow still opens" in err, err
    settings = replace(SETTINGS, prompts=[f"picture {i}" for i in range(16)], strengths=[i / 15 for i in range(16)], size=[832, 832])
    with pytest.raises(sample.SampleError, match="megapixels, which Pillow still opens"):
        sample_lora(tiny, lora_file, settings, tmp_path / "grid.png", model_name="tiny")
    assert 178_000_000 < 2 * Image.MAX_IMAGE_PIXELS  # the limit kept is one Pillow opens


def test_unknown_sampler_and_bad_size_are_clear_errors(tiny):
    from engine.train.sample import SampleError

    with pytest.raises(SampleError, match="unknown sampler"):
        generate(tiny, replace(SETTINGS, sampler="euler_z"), None)
    with pytest.raises(SampleError, match="multiples of 8"):
        generate(tiny, replace(SETTINGS, size=[65, 96]), None)


def test_previews_during_training_change_nothing(tmp_path, tiny):
    from engine.lora.files import load_lora_file
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.train.trainer import train

    results = {}
    for label, every in (("plain", 0), ("previews", 4)):
        root = copy_example(tmp_path / label)
        project = load_project(root)
        project.train = replace(project.train, save_precision="float", sample_every_n_steps=every)
        project.sample = replace(project.sample, steps=2, size=[64, 96])
        plan = make_plan(project, max_steps=10)
        requests = iter([False, False, True] + [False] * 20)  # and one sample-now request at step 3
        result = train(plan, "a", model=tiny, log=lambda _l: None, controls=TrainControls(sample_requested=lambda: next(requests)))
        results[label] = load_lora_file(result.lora_path).modules
        if every:
            names = sorted(p.name for p in plan.samples_dir.iterdir())
            assert names == [f"example-monochrome_A-step{s:06d}.png" for s in (3, 4, 8)]
    for name, w in results["plain"].items():
        assert torch.equal(w.down, results["previews"][name].down) and torch.equal(w.up, results["previews"][name].up)


def test_sample_command_on_a_project_and_its_errors(tmp_path, tiny, lora_file, capsys):
    import shutil

    from copylora_tui.cli.main import EXIT_USAGE, main

    root = copy_example(tmp_path)
    assert main(["sample", str(root)]) == EXIT_USAGE  # nothing merged yet
    assert "does not exist yet" in capsys.readouterr().err
    (root / "output").mkdir()
    shutil.copy(lora_file, root / "output" / "example-monochrome.safetensors")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("steps = 8", "steps = 2").replace("size = [128, 192]", "size = [64, 64]"))
    samples = root / "output" / "samples"
    grid_png = samples / "example-monochrome-grid.png"
    # other settings than [sample]: a grid of its own; it wrote over the project's preview (then stale, drawn again by run)
    assert main(["sample", str(root), "--strengths", "0,0.5,1", "--prompt", "x", "--seed", "5"]) == 0
    [own] = samples.glob("example-monochrome-sample-*.png")
    assert not grid_png.exists() and f"wrote {own} " in capsys.readouterr().out
    record = read_grid_parameters(own)
    assert record["settings"]["strengths"] == [0.0, 0.5, 1.0] and record["settings"]["seed"] == 5
    # [sample]'s settings: the project's preview, drawn now, and current (it was "stale: [sample] changed")
    from engine.project.folder import load_project
    from engine.project.outputs import Grid, png_record
    from engine.project.plan import make_plan

    assert main(["sample", str(root)]) == 0
    # it records the project's [sample], as the preview job does: current (here the "result" is a
    # bare copy of a LoRA, no merge of this project's, so its grid is of a result `run` makes again)
    grid = Grid(make_plan(load_project(root)))
    assert png_record(grid.path)["project_sample"] == grid.record()["project_sample"]
    assert grid.status().reason == "of a result that is made again"
    assert main(["sample", str(lora_file), "--strengths", "a,b", "--sampler", "nope"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--base" in err and "--strengths" in err and "--sampler" in err


def test_a_missing_lora_file_of_the_users_is_said_as_missing_not_as_untrained(tmp_path, capsys):
    """`sample PROJECT --lora FILE` with a mistyped FILE (a kohya or A1111 LoRA) said "does not
    exist yet (train/merge first: copylora run …)", as if training would make it."""
    from copylora_tui.cli.main import EXIT_USAGE, main

    root = copy_example(tmp_path)
    assert main(["sample", str(root), "--lora", str(tmp_path / "kohya_lora.safetensors")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--lora: no such file:" in err and "kohya_lora.safetensors" in err and "train/merge first" not in err, err


@pytest.mark.parametrize("flags, says", [
    (["--size", "0x0"], "--size: each side must be at least 64 pixels"),
    (["--size", "100x100"], "--size: 100x100: both sides must be multiples of 8"),
    (["--size", "9000x64"], "--size: each side must be at most"),
    (["--guidance", "nan"], "--guidance: must be a finite number"),
    (["--guidance", "-3"], "--guidance: must be at least 0"),
    (["--strengths", ""], "--strengths: must not be empty"),
    (["--strengths", "0,inf"], "--strengths: must be a finite number"),
    (["--strengths", "0,,1"], "--strengths: must be numbers separated by commas, got '0,,1'"),  # it drew 2 columns
    (["--size", "64x64x64"], "--size: must be WIDTHxHEIGHT or one number for a square"),
    (["--size", "100"], "--size: 100x100: both sides must be multiples of 8"),  # one number: a square, as [sample] size reads it
    (["--strengths", "0,50"], "--strengths: must be between -10 and 10"),
    (["--seed", "-1"], "--seed: must be at least 0"),
    (["--seed", str(2**70)], "--seed: must be at most"),
    (["--steps", "5000"], "--steps: must be at most"),
    (["--strengths", ",".join(["1"] * 300)], "--strengths: 1 prompt(s) x 300 strength(s) = 300 pictures of"),  # drawn for minutes
    (["--size", "4096x4096", "--strengths", ",".join(["1"] * 11)], "(185 megapixels): at most 256 pictures and 178 megapixels"),
    (["--prompt", "x", "--sampler", "DPM++ 2M Karas"], "--sampler: unknown value 'DPM++ 2M Karas' (did you mean 'dpmpp_2m_karras'?)"),
])
def test_sample_flags_obey_the_rules_of_a_projects_sample_table(lora_file, flags, says, capsys):
    """The flags went around [sample]'s checks: `--size 0x0` or `--guidance nan` reached the
    model, an empty --strengths drew nothing. Now each is the problem the TOML gives, named by
    its flag, said before the model loads (no base is even given here: that is said beside it)."""
    from copylora_tui.cli.main import EXIT_USAGE, main

    assert main(["sample", str(lora_file), *flags]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err and "--base: a LoRA file needs the base model" in err, err


def test_class_images_are_generated_once(tmp_path, tiny):
    from engine.project.folder import load_project, save_project
    from engine.project.params import RegParams
    from engine.train.class_images import generate_class_images, missing_class_images

    root = copy_example(tmp_path)
    project = load_project(root)
    project.reg = RegParams(folder="reg", class_prompt="picture", num_class_images=2)
    project.train = replace(project.train, resolution=[64, 64])
    project.sample = replace(project.sample, steps=2)
    save_project(project)  # valid although reg/ does not exist yet: it will be generated
    assert missing_class_images(project) == 2
    done = []
    written = generate_class_images(project, model=tiny, log=lambda _l: None, progress=lambda d, t: done.append((d, t)))
    assert [p.name for p in written] == ["class-0000.png", "class-0001.png"] and done[-1] == (2, 2)
    assert missing_class_images(project) == 0
    assert generate_class_images(project, model=tiny, log=lambda _l: None) == []


def test_run_queues_class_images_then_trainings_then_merge_then_preview(tmp_path, monkeypatch):
    from engine.jobs.enqueue import enqueue_project
    from engine.jobs.queue import Queue
    from engine.project.folder import load_project, save_project
    from engine.project.params import RegParams

    root = copy_example(tmp_path)
    project = load_project(root)
    project.reg = RegParams(folder="reg", class_prompt="picture", num_class_images=3)
    save_project(project)
    queue = Queue(tmp_path / "state")
    steps = enqueue_project(queue, root)
    assert [(s.what, s.action) for s in steps] == [
        ("class images", "queued"), ("train A", "queued"), ("train B", "queued"), ("merge", "queued"), ("preview", "queued")]
    reg, a, b, merge, preview = (s.job for s in steps)
    assert a.depends_on == [reg.id] and b.depends_on == [reg.id]
    assert merge.depends_on == [a.id, b.id] and preview.depends_on == [merge.id]


# --------------------------------------------------------------------------- previews on a CPU


def test_cpu_previews_are_scaled_down_and_said(tmp_path):
    from engine.project.params import SampleParams
    from engine.train.sample import CPU_MAX_PIXELS, CPU_MAX_STEPS, preview_settings

    full = SampleParams(size=[600, 896], steps=20)
    settings, note = preview_settings(full, "cpu")
    width, height = settings.size
    assert width * height <= CPU_MAX_PIXELS and width % 8 == 0 and height % 8 == 0
    assert abs(width / height - 600 / 896) < 0.03 and settings.steps == CPU_MAX_STEPS
    assert note == ("no CUDA: preview drawn at 312x464, 10 steps instead of 600x896, 20 steps "
                    "(set [sample] cpu_full_size = true to draw it as set)")
    assert preview_settings(full, "cuda:0") == (SampleSettings.from_params(full), None)  # a GPU draws it as set
    assert preview_settings(SampleParams(size=[600, 896], steps=20, cpu_full_size=True), "cpu")[1] is None
    small = SampleParams(size=[128, 192], steps=8)  # the examples' previews: already small
    assert preview_settings(small, "cpu") == (SampleSettings.from_params(small), None)
    few_steps = preview_settings(SampleParams(size=[128, 192], steps=30), "cpu")
    assert few_steps[0].size == [128, 192] and few_steps[0].steps == CPU_MAX_STEPS and "30 steps" in few_steps[1]


def test_the_preview_job_draws_at_the_trainings_clip_skip(lora_file, tmp_path, monkeypatch):
    import json

    from engine.project.folder import load_project
    from engine.project.outputs import Grid
    from engine.project.plan import make_plan

    artifacts = run_preview_job(tmp_path, monkeypatch, lora_file, sample={"size": [64, 64], "steps": 1}, train={"clip_skip": 2})
    assert read_grid_parameters(artifacts["grid"])["settings"]["clip_skip"] == 2
    root = tmp_path / "example-monochrome"
    assert "clip skip" not in Grid(make_plan(load_project(root))).status().reason  # (its merged LoRA is a stand-in: stale for that)
    # a grid drawn before previews read the clip skip (its record has none): drawn again
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(artifacts["grid"]) as image:
        record = json.loads(image.info["copylora"])
        record.pop("clip_skip")
        info = PngInfo()
        info.add_text("copylora", json.dumps(record))
        image.save(artifacts["grid"], pnginfo=info)
    assert Grid(make_plan(load_project(root))).status().reason == "drawn at another clip skip than the LoRA trained at"


def test_the_preview_job_on_a_cpu_draws_the_scaled_grid_and_logs_why(lora_file, tmp_path, monkeypatch, capsys):
    """The queue's preview job (runner.run_sample), as the worker runs it on a machine without CUDA."""
    artifacts = run_preview_job(tmp_path, monkeypatch, lora_file, sample={"size": [400, 600], "steps": 12})
    out = capsys.readouterr().out
    assert "no CUDA: preview drawn at 312x464, 10 steps instead of 400x600, 12 steps" in out
    record = read_grid_parameters(artifacts["grid"])
    assert record["settings"]["size"] == [312, 464] and record["settings"]["steps"] == 10
    assert artifacts["device"] == "cpu" and artifacts["seconds"] > 0


def test_what_of_a_prompt_is_not_read_as_a1111_reads_it_is_said(tiny):
    """A 1000-token prompt was cut to 77 tokens silently; "(monochrome:1.3)" and "<lora:x:1>",
    pasted from A1111, reached the text encoder as plain words without a word."""
    from engine.train.sample import prompt_notes

    long = "a red circle on a blue background, " * 30
    notes = prompt_notes(tiny, ["", "a red circle", long, "(monochrome:1.3), 1girl", "x <lora:other:1>", "a (red) circle"])
    assert len(notes) == 3, notes
    assert notes[0].startswith("prompt 'a red circle on a blue background, a ...' is ") and notes[0].endswith("only its first 225 are read")
    assert all("A1111 syntax" in note for note in notes[1:])


def test_a_japanese_prompt_is_said_to_be_read_as_byte_pieces(tiny):
    """CLIP's tokenizer has next to no Japanese: 白黒の少女 is read as UTF-8 byte pieces, and the
    grid drew something else without a word. Said once per prompt, of any prompt with kana or
    kanji (half-width katakana too); English is not."""
    from engine.train.sample import prompt_notes

    notes = prompt_notes(tiny, ["白黒の少女", "1girl, monochrome", "1girl、ﾓﾉｸﾛ", "白黒の少女"])
    assert len(notes) == 2, notes
    assert notes[0].startswith("prompt '白黒の少女' is written in Japanese, Chinese or Korean: CLIP's tokenizer reads it as ")
    assert "byte pieces for 5 characters" in notes[0] and notes[0].endswith("write prompts in English (or Danbooru tags: 1girl, monochrome)")
    assert notes[1].startswith("prompt '1girl、ﾓﾉｸﾛ' is written in Japanese")


@pytest.mark.parametrize("base", ["tiny", "tiny-sdxl"])
def test_prompts_encoded_here_draw_what_the_pipeline_draws(base, monkeypatch):
    """The previews' own encoding (clip skip, long prompts) against the pipeline's, where both
    apply (clip skip 1, a short prompt, with and without a negative prompt): the same picture."""
    import numpy as np
    import torch

    import engine.train.sample as sample
    from engine.models.loading import load_base_model

    torch.set_num_threads(1)
    model = load_base_model(base)
    for negative in ("", "blurry"):
        settings = sample.SampleSettings(prompts=["a red circle", ""], negative_prompt=negative, steps=2, size=[64, 64],
                                         strengths=[0.0], seed=5)
        theirs = [np.asarray(row[0], dtype=np.int16) for row in sample.generate(model, settings)]
        real = sample._own_encoding
        monkeypatch.setattr(sample, "_own_encoding", lambda model, pipe, settings: real(model, pipe, settings, force=True))
        ours = [np.asarray(row[0], dtype=np.int16) for row in sample.generate(model, settings)]
        monkeypatch.setattr(sample, "_own_encoding", real)
        for a, b in zip(theirs, ours):
            assert np.abs(a - b).max() <= 1, (base, negative)


def test_previews_read_the_trainings_clip_skip_and_long_prompts(tiny, tmp_path, capsys):
    """Previews ignored [train] clip_skip (an anime base trained at 2 was previewed at 1) and cut
    prompts at 75 tokens (kohya's samples read 225)."""
    import numpy as np

    from copylora_tui.cli.main import main
    from engine.train.sample import SampleSettings, generate, read_grid_parameters
    from tests.helpers import copy_example, set_keys

    def drawn(**keys):
        settings = SampleSettings(**{"prompts": ["a red circle"], "steps": 2, "size": [64, 64], "strengths": [0.0], "seed": 5, **keys})
        return np.asarray(generate(tiny, settings)[0][0])

    assert not np.array_equal(drawn(), drawn(clip_skip=2))
    words = "a red circle on a blue background, " * 3  # 81 tokens in the tiny vocabulary: past 75
    assert not np.array_equal(drawn(prompts=[words + "green"]), drawn(prompts=[words + "yellow"]))
    root = copy_example(tmp_path)
    set_keys(root, "train", clip_skip=2)
    out = tmp_path / "grid.png"
    assert main(["sample", str(root), "--lora", "none", "--steps", "1", "--size", "64x64", "--save_to", str(out)]) == 0
    from PIL import Image

    assert read_grid_parameters(out)["settings"]["clip_skip"] == 2
    with Image.open(out) as image:
        assert "Clip skip: 2" in image.info["parameters"]  # A1111's infotext
    capsys.readouterr()
    assert main(["sample", str(root), "--lora", "none", "--clip_skip", "13"]) == 2
    assert "--clip_skip: must be between 1 and 12, got 13" in capsys.readouterr().err


def test_a_text_encoder_lora_is_read_at_each_strength_when_prompts_are_encoded_here(tiny):
    """Encoded once before the LoRA was applied, a clip-skip-2 preview left the text encoder's
    LoRA out (and a network hooked in training gave strength 0 its multiplier)."""
    import numpy as np
    import torch

    from engine.lora.network import LoRANetwork

    network = LoRANetwork(tiny.unet, tiny.text_encoders, rank=4, alpha=4.0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    text = [p for name, p in network.named_parameters() if name.startswith("text_encoder_loras")]
    assert text

    def draw(strength, net):
        settings = SampleSettings(prompts=["a red circle"], steps=2, size=[64, 64], strengths=[strength], seed=5, clip_skip=2)
        return np.asarray(generate(tiny, settings, net)[0][0], dtype=np.int16)

    with_text = draw(1.0, network)
    saved = [p.detach().clone() for p in text]
    with torch.no_grad():
        for parameter in text:
            parameter.zero_()
    assert np.abs(with_text - draw(1.0, network)).max() > 0  # the text encoder's LoRA is in the picture
    with torch.no_grad():
        for parameter, value in zip(text, saved):
            parameter.copy_(value)
    base = draw(0.0, None)
    network.apply_to()  # hooked, at 1.0, as a network in training
    network.set_multiplier(1.0)
    try:
        assert np.array_equal(draw(0.0, network), base)  # strength 0: the base picture
    finally:
        network.remove()
