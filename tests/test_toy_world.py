"""The toy model's world and yardsticks: pictures drawn from a seed, held-out combinations, the
colour reader, the effect measures, the tokenizer, and the pretraining script's smoke run."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

from copylora_tui.cli.main import main
from engine.models.toy_data import (
    COLOURS,
    Scene,
    all_combinations,
    dataset,
    draw,
    grayscale,
    held_out_combinations,
    held_out_prompts,
    is_held_out,
    random_scene,
    region_colours,
)
from engine.project.folder import load_project, save_project
from engine.project.plan import make_plan, plan_warnings
from tests.helpers import REPO


def test_the_dataset_is_a_function_of_its_seed_and_never_shows_held_out_combinations():
    first, again = dataset(7, 40), dataset(7, 40)
    assert [c for _, c in first] == [c for _, c in again]
    assert all(a.tobytes() == b.tobytes() for (a, _), (b, _) in zip(first, again))
    assert [c for _, c in dataset(8, 40)] != [c for _, c in first]
    held = {f"a {c} {s} on a {b} background" for c, s, b in held_out_combinations()}
    # the captions of 2000 pictures without drawing them: dataset() draws exactly these scenes
    from engine.models.toy_data import dataset_scenes

    assert [c for _, c in dataset_scenes(7, 40)] == [c for _, c in first]
    started = time.perf_counter()
    captions = [c for _, c in dataset_scenes(3, 2000)]
    # 0.11 s here; 21 s when each scene asked is_held_out of all 360 combinations (2026-12-04)
    assert time.perf_counter() - started < 5.0
    combos = all_combinations()
    assert held_out_combinations() == [c for c in combos if is_held_out(*c)]
    assert not any(c.split(",")[0] in held for c in captions if c)
    assert 0.08 < captions.count("") / len(captions) < 0.22  # caption dropout
    assert 0.12 < sum(c.endswith("monochrome") for c in captions) / len(captions) < 0.3
    assert len(held_out_prompts()) >= 50 and len(held_out_prompts()) == len(all_combinations()) // 5
    # every colour is held out as a shape and as a background somewhere
    assert {c for c, _, _ in held_out_combinations()} == set(COLOURS) == {b for _, _, b in held_out_combinations()}


def test_the_colour_reader_reads_drawn_pictures():
    """The yardstick first: on pictures drawn exactly, it must name their colours."""
    rng = random.Random(1)
    scenes = [replace_mono(random_scene(rng, held_out=True)) for _ in range(100)]
    right = sum(region_colours(draw(s)) == (s.colour, s.background) for s in scenes)
    assert right >= 95, right


def test_the_shape_reader_reads_drawn_pictures():
    """The shape yardstick (issue 24) is checked before it judges a model: on 200 scenes drawn
    exactly (every shape, held-out and trained, at the world's sizes and places) it names the
    shape at least 95 % of the time, and all three words together as often."""
    from engine.models.toy_data import SHAPES, read_scene

    rng = random.Random(5)
    scenes = [replace_mono(random_scene(rng, held_out=i % 2 == 0)) for i in range(200)]
    assert {s.shape for s in scenes} == set(SHAPES)
    read = [read_scene(draw(s)) for s in scenes]
    shapes = sum(r[1] == s.shape for r, s in zip(read, scenes))
    whole = sum(r == (s.colour, s.shape, s.background) for r, s in zip(read, scenes))
    assert shapes >= 190 and whole >= 190, (shapes, whole)


def test_the_shape_reader_reads_a_shape_of_the_wrong_aspect_and_ignores_a_stray_speck():
    """What the toy bases draw (run 24's held-out squares, docs/BENCHMARKS.md): squares 36 pixels
    wide and 48 high, and a stray speck of the shape's colour near a corner. The reader fitted
    shapes of the box's longer side to the pixels, so such a square read as a circle (17 of 36);
    it must read each shape stretched to either aspect as itself, and a speck must not move it."""
    from PIL import Image, ImageDraw

    from engine.models.toy_data import RING_HOLE, SHAPES, read_scene

    def picture(shape: str, width: int, height: int, speck: str) -> Image.Image:
        image = Image.new("RGB", (256, 256), COLOURS["cyan"])
        pen = ImageDraw.Draw(image)
        box = (128 - width * 2, 128 - height * 2, 128 + width * 2, 128 + height * 2)  # drawn at 4× like draw()
        red = COLOURS["red"]
        if shape == "square":
            pen.rectangle(box, fill=red)
        elif shape == "triangle":
            pen.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=red)
        else:
            pen.ellipse(box, fill=red)
            if shape == "ring":
                cx, cy, rx, ry = 128, 128, width * 2 * RING_HOLE, height * 2 * RING_HOLE
                pen.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=COLOURS["cyan"])
        if speck == "corner":  # beside the shape's top right corner, as the bases draw it
            pen.ellipse((box[2] + 6, box[1] - 14, box[2] + 14, box[1] - 6), fill=red)
        elif speck == "far":  # alone in the picture's corner: the shape's box must not reach it
            pen.ellipse((228 - 12, 228 - 12, 228, 228), fill=red)
        return image.resize((64, 64), Image.Resampling.LANCZOS)

    for shape in SHAPES:
        for width, height in ((36, 48), (48, 36), (40, 40), (24, 30)):
            for speck in ("none", "corner", "far"):
                assert read_scene(picture(shape, width, height, speck)) == ("red", shape, "cyan"), (shape, width, height, speck)


def test_a_world_of_varied_colours_draws_around_the_names_and_the_readers_still_read_it(monkeypatch):
    """``--colour-jitter``/``--saturation-jitter`` (issue 24): each drawn colour moves around its
    name (toward its gray, and each channel). The readers must stay exact on such pictures before
    a base trained on them is judged by them; a world without jitter keeps its exact colours."""
    from engine.models import toy_data
    from engine.models.toy_data import read_scene, varied_colour

    plain = random_scene(random.Random(9))
    assert plain.fill is None and plain.ground is None
    monkeypatch.setattr(toy_data, "COLOUR_JITTER", 25)
    monkeypatch.setattr(toy_data, "SATURATION_JITTER", 0.4)
    monkeypatch.setattr(toy_data, "RADIUS", (0.24, 0.38))
    varied = random_scene(random.Random(9))
    assert (varied.colour, varied.shape, varied.background) == (plain.colour, plain.shape, plain.background)
    rng = random.Random(3)
    draws = [varied_colour(rng, "yellow") for _ in range(200)]
    assert len(set(draws)) > 150 and all(0 <= v <= 255 for rgb in draws for v in rgb)
    yellow, gray = COLOURS["yellow"], 0.299 * 245 + 0.587 * 220 + 0.114 * 40
    assert min(d[2] for d in draws) < yellow[2] - 15 and max(d[2] for d in draws) <= yellow[2] + 25 + 0.4 * (gray - yellow[2]) + 1
    rng = random.Random(5)
    scenes = [replace_mono(random_scene(rng, held_out=i % 2 == 0)) for i in range(200)]
    picture = draw(scenes[0])
    assert picture.getpixel((1, 1)) == scenes[0].ground  # the background drawn in its varied colour
    read = [read_scene(draw(s)) for s in scenes]
    whole = sum(r == (s.colour, s.shape, s.background) for r, s in zip(read, scenes))
    assert whole >= 190, whole


def replace_mono(scene):
    from dataclasses import replace

    return replace(scene, monochrome=False)


def test_effect_measures_see_grayscale_and_keep_structure():
    from engine.train.effect import luminance, measure_effect, psnr, saturation, ssim

    rng = random.Random(2)
    colour = [draw(replace_mono(random_scene(rng))) for _ in range(6)]
    gray = [grayscale(img) for img in colour]
    assert all(saturation(g) < 0.01 for g in gray) and sum(saturation(c) for c in colour) / len(colour) > 0.2
    assert all(ssim(luminance(c), luminance(g)) > 0.999 for c, g in zip(colour, gray))  # gray keeps the luminance
    assert ssim(luminance(colour[0]), luminance(colour[1])) < 0.9  # another picture is not the same
    report = measure_effect({(f"p{i}", 1): [c, g] for i, (c, g) in enumerate(zip(colour, gray))}, [0.0, 1.0])
    assert report.effect < 0.02 and report.collateral_ssim > 0.999 and report.pairs == 6
    assert psnr(colour[0], colour[0]) == float("inf") and psnr(colour[0], gray[0]) < 30


def test_every_word_of_the_toy_world_is_one_token():
    from engine.models.toy import toy_tokenizer, toy_words

    tokenizer = toy_tokenizer()
    for word in toy_words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


@pytest.mark.slow
def test_the_pretraining_script_runs_and_writes_a_loadable_model(tmp_path):
    torch = pytest.importorskip("torch")
    out = tmp_path / "toy"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_toy.py"), "--out", str(out), "--vae-steps", "2",
                           "--unet-steps", "2", "--pool", "4", "--vae-batch", "2", "--unet-batch", "2", "--threads", "1",
                           "--noise-offset", "0.5", "--shape-weight", "4", "--min-snr-gamma", "5"],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((out / "pretrain.json").read_text())
    assert record["unet"]["shape_weight"] == 4 and record["unet"]["min_snr_gamma"] == 5
    assert record["vae"]["steps"] == 2 and record["unet"]["steps"] == 2 and record["scaling_factor"] > 0
    assert record["unet"]["steps_done"] == 2 and record["unet"]["max_minutes"] == 0 and record["cuda_graph"] is False
    assert record["unet"]["noise_offset"] == 0.5
    sums = (out / "SHA256SUMS").read_text()
    assert "unet/diffusion_pytorch_model.safetensors" in sums
    from engine.models.loading import load_base_model

    model = load_base_model(str(out))
    assert model.family == "sd1" and abs(model.vae.config.scaling_factor - record["scaling_factor"]) < 1e-6

    # issue 24's levers: continued with a wider, shallower text encoder (the U-Net's to_k/to_v
    # made anew), 1/√SNR weighting, bigger shapes, figures every step; the record keeps the lineage
    wider = tmp_path / "wider"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_toy.py"), "--out", str(wider), "--start-from", str(out),
                           "--vae-steps", "0", "--unet-steps", "2", "--pool", "4", "--unet-batch", "2", "--threads", "1",
                           "--te-width", "64", "--te-layers", "2", "--debiased", "--radius", "0.25,0.4", "--eval-every", "1",
                           "--eval-prompts", "1", "--max-length", "16", "--centred", "--attn-lr-mult", "10", "--te-probe", "0.1",
                           "--te-probe-steps", "3", "--colour-jitter", "20", "--saturation-jitter", "0.3", "--ema", "0.9"],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    again = json.loads((wider / "pretrain.json").read_text())
    assert again["from"]["vae"]["steps"] == 2 and again["total_minutes"] >= again["minutes"]
    assert again["text_encoder"] == {"width": 64, "layers": 2, "heads": 4, "max_length": 16} and again["centred"] and again["attn_lr_mult"] == 10.0
    assert again["radius"] == [0.25, 0.4] and again["unet"]["debiased"]
    assert (again["colour_jitter"], again["saturation_jitter"], record["colour_jitter"]) == (20, 0.3, 0)
    assert again["te_probe"]["weight"] == 0.1 and again["te_probe"]["steps"] == 3 and again["te_probe"]["loss_last_100"] > 0
    assert [e["step"] for e in again["evals"]] == [0, 1, 2] and {"shape_colour", "background", "shape"} <= set(again["evals"][-1])
    assert again["unet"]["ema"] == 0.9 and {"shape_colour", "background", "shape"} <= set(again["evals"][-1]["ema"])
    # --ema writes the last step's weights beside the average (OUT-last), each loadable, told apart
    last = tmp_path / "wider-last"
    assert again["last_step_weights"] == str(last) and "the last step's" in json.loads((last / "pretrain.json").read_text())["weights"]
    averaged, stepped = load_base_model(str(wider)), load_base_model(str(last))
    assert not torch.equal(averaged.unet.conv_in.weight, stepped.unet.conv_in.weight)
    assert torch.equal(averaged.vae.decoder.conv_out.weight, stepped.vae.decoder.conv_out.weight)  # one VAE, not averaged
    model = load_base_model(str(wider))
    assert model.tokenizers[0].model_max_length == 16  # prompts pad to 16 tokens where this model trains and samples
    assert model.text_encoders[0].config.hidden_size == 64 and model.unet.config.cross_attention_dim == 64
    assert abs(model.vae.config.scaling_factor - record["scaling_factor"]) < 1e-3  # the VAE and its scale kept

    # a VAE borrowed from another run (--vae-from): its training minutes count in this model's budget
    borrowed = tmp_path / "borrowed"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_toy.py"), "--out", str(borrowed), "--vae-from", str(wider),
                           "--vae-steps", "0", "--unet-steps", "1", "--pool", "4", "--unet-batch", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    third = json.loads((borrowed / "pretrain.json").read_text())
    assert third["vae_from"]["path"] == str(wider) and third["vae_from"]["steps"] == 2  # trained by the first run, two links back
    assert third["vae_from"]["minutes"] == record["vae"]["minutes"] and third["total_minutes"] >= third["minutes"]

    # the colour yardstick runs on it (an untrained model: the figures are near chance)
    report = tmp_path / "colours.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "toy_colours.py"), "--base", str(out), "--prompts", "2", "--seeds", "1",
                           "--trained", "--threads", "1", "--out", str(report)],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    measured = json.loads(report.read_text())
    assert measured["prompts"] == 2 and measured["trained"]["prompts"] == 2 and 0 <= measured["shape_accuracy"] <= 1
    assert 0 <= measured["shape_colour_accuracy"] <= 1 and 0 <= measured["trained"]["shape_accuracy"] <= 1
    assert measured["guidance"] == 5.0 and measured["monochrome_prompt_saturation"] >= 0


def test_pretraining_on_a_gpu_that_is_not_there_says_so_in_one_line(tmp_path):
    """``--device cuda`` (a lent GPU runs the same pretraining in minutes) on a machine without
    one: a line and exit 2 before anything is trained or written."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_toy.py"), "--out", str(tmp_path / "toy"), "--vae-steps", "1",
                           "--unet-steps", "1", "--pool", "4", "--threads", "1", "--device", "cuda"],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "pretrain_toy: error: device cuda asked for, but torch sees no CUDA GPU" in done.stderr and not (tmp_path / "toy").exists()


def test_the_effect_benchmark_runs_end_to_end(tmp_path):
    """bench/effect_bench.py with every option it has, on the built-in tiny model, tiny sizes:
    the script cannot rot (its figures on a real toy model are in docs/BENCHMARKS.md)."""
    out = tmp_path / "effect.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "effect_bench.py"), "--base", "tiny", "--epochs", "1", "--prompts", "1",
                           "--seeds", "1", "--ranks", "4", "--routes", "svd-merge,differential,addift,slider", "--steps", "2", "--guidance", "1",
                           "--noise-offset", "0.5", "--lr", "1e-3", "--set", "max_train_steps=3", "--sampler", "k_euler", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "COPYLORA_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["route"], r["new_rank"], r["guidance"]) for r in rows] == [(route, 4, 1.0) for route in ("svd-merge", "differential", "addift", "slider")]
    assert all(set(r["copy_check_psnr"]) == {"A vs picture A", "A + result vs picture B"} for r in rows)
    assert [r["steps_trained"] for r in rows] == [6, 6, 3, 3]  # A and B 3 steps each; one LoRA 3 steps
    assert {r["sampler"] for r in rows} == {"euler"}  # kohya's name read, the canonical one kept
    assert "| svd-merge | max_train_steps 3, sampler euler | 6 |" in done.stdout and "| addift | max_train_steps 3, sampler euler | 3 |" in done.stdout
    tables = subprocess.run([sys.executable, str(REPO / "bench" / "effect_bench.py"), "--tables", str(out), str(out)],
                            capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    # each row in both tables (the per-colour one names its rows the same way)
    assert tables.returncode == 0 and tables.stdout.count("| slider | max_train_steps 3, sampler euler |") == 4, tables.stderr[-2000:]
    assert tables.stdout.count("Per prompt colour") == 1  # one per-colour table for all the files
    colour = rows[0]["per_colour"]  # the one prompt names a shape colour and a background colour
    assert len(colour) == 2 and "Per prompt colour" in done.stdout
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "effect_bench.py"), "--base", "tiny", "--sampler", "dpm++ 2m karas"],
                         capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "did you mean 'dpmpp_2m_karras'" in bad.stderr and "Traceback" not in bad.stderr


def test_the_effect_benchmark_measures_several_captioned_pairs(tmp_path):
    """--project with several pairs, each under its own caption ([reg] folder "" and
    [filewords]): the copy check draws A's first picture under that picture's caption, and the
    table says how many pairs trained."""
    from engine.project.params import RegParams
    from tests.helpers import copy_example

    root = copy_example(tmp_path, "pairs", source="example-toy")
    for side in ("a", "b"):
        for old in [*(root / side).glob("*.png"), *(root / side).glob("*.txt")]:
            old.unlink()
    for i, scene in enumerate([Scene("yellow", "circle", "blue", 0.5, 0.5, 0.3), Scene("red", "square", "green", 0.5, 0.5, 0.3)]):
        picture = draw(scene)
        for side, drawn in (("a", picture), ("b", grayscale(picture))):
            drawn.save(root / side / f"{i}.png")
            (root / side / f"{i}.txt").write_text(scene.caption())
    project = load_project(root)
    project.info.base_model, project.train.caption, project.reg = "tiny", "", RegParams(folder="", instance_prompt="[filewords]")
    save_project(project)
    out = tmp_path / "effect.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "effect_bench.py"), "--base", "tiny", "--project", str(root), "--prompts", "1",
                           "--seeds", "1", "--ranks", "4", "--routes", "svd-merge", "--steps", "2", "--guidance", "1",
                           "--set", "max_train_steps=2", "--lbws", f"none={[0] * 17}", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "COPYLORA_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    row, weighted = json.loads(out.read_text())["rows"]
    assert row["caption"] == "a yellow circle on a blue background" and row["pictures"] == 2
    assert "| svd-merge | max_train_steps 2, 2 pairs | 4 |" in done.stdout
    # --lbws: the same two LoRAs merged again with every block weighted 0 change nothing
    assert (row["blocks"], weighted["blocks"], weighted["block_weights"]) == ("", "none", [0.0] * 17)
    assert "| svd-merge | max_train_steps 2, 2 pairs, blocks none | 4 |" in done.stdout
    assert weighted["saturation"]["1.0"] == weighted["saturation"]["0.0"] and weighted["collateral_ssim"] > 0.999999
    assert row["saturation"]["1.0"] != row["saturation"]["0.0"]
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "effect_bench.py"), "--base", "tiny", "--lbws", "out=[1,0]"],
                         capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "--lbws[0]: 2 weights" in bad.stderr and "Traceback" not in bad.stderr
    twice = subprocess.run([sys.executable, str(REPO / "bench" / "effect_bench.py"), "--base", "tiny", "--lbws", f"a={[1] * 17}",
                            "--lbws", f"a={[0] * 17}"], capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert twice.returncode == 2 and "the name 'a' is given twice" in twice.stderr


def test_the_effect_benchmark_measures_the_base_asked_for_the_change_in_words(tmp_path):
    """--prompt-reference ", monochrome": the toy base on each prompt + the suffix, measured as a
    LoRA at strength 1 (the yardstick for a LoRA's collateral); --routes-off trains nothing."""
    out = tmp_path / "reference.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "effect_bench.py"), "--base", "toy", "--prompts", "2", "--seeds", "1",
                           "--steps", "6", "--guidance", "7", "--prompt-reference", ", monochrome", "--routes-off", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["route"] == "base" and row["prompt_suffix"] == ", monochrome" and row["pairs"] == 2
    assert row["effect"] < 0.8  # the toy base draws "…, monochrome" in gray (measured 0.69 here)
    assert "| base | prompt + ', monochrome' as strength 1 | 0 | 0 | — | 7 |" in done.stdout and "— dB" in done.stdout


def test_the_effect_breaks_down_by_prompt_colour():
    """Which colours lose their colour: per colour named in the prompts, S₁/S₀ over the pictures
    naming it as background and, separately, as the shape's colour."""
    from PIL import Image

    from engine.train.effect import colour_breakdown, measure_effect

    red, grey = Image.new("RGB", (16, 16), (220, 40, 40)), Image.new("RGB", (16, 16), (90, 90, 90))
    half = Image.blend(red, grey, 0.5)
    images = {("a blue ring on a red background", 1): [red, grey],  # red background: all colour gone
              ("a red circle on a yellow background", 1): [red, half],  # yellow background: part of it
              ("not a toy prompt", 1): [red, red]}
    report = measure_effect(images, [0.0, 1.0])
    per = report.per_colour
    assert set(per) == {"red", "blue", "yellow"} and list(per) == ["red", "yellow", "blue"]  # the world's order
    assert per["red"]["background"]["effect"] < 0.01 and per["red"]["background"]["pictures"] == 1
    assert 0.2 < per["red"]["shape"]["effect"] < 0.8 and per["yellow"]["background"]["effect"] == per["red"]["shape"]["effect"]
    assert per["blue"]["background"] is None and per["blue"]["shape"]["effect"] < 0.01
    assert colour_breakdown([]) == {}


def test_the_effect_levers_script_runs_end_to_end(tmp_path):
    """bench/effect_levers.py (the CFG diagnostic) on tiny, tiny sizes: it cannot rot."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "effect_levers.py"), "--base", "tiny", "--work", str(tmp_path / "w"),
                           "--mode", "mix2", "--epochs", "1", "--prompts", "1", "--steps", "2", "--threads", "1",
                           "--groups", "all,attn2 k/v only"],
                          capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "COPYLORA_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((tmp_path / "w" / "mix2" / "levers.json").read_text())
    assert [(r["group"], r["cfg"]) for r in record["rows"]] == [("all", 5.0), ("all", 1.0), ("attn2 k/v only", 5.0), ("attn2 k/v only", 1.0)]
    assert record["rows"][2]["modules"] == 32 and record["rows"][0]["modules"] == 192


def test_the_effect_levers_change_only_what_the_pair_is_conditioned_on(tmp_path, monkeypatch, tiny):
    import engine.train.side_run as side_run
    import engine.train.training_data as trainer
    from bench.effect_levers import CAPTION, condition_on
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from tests.helpers import copy_example

    monkeypatch.setattr(side_run, "training_data", side_run.training_data)  # restored after the test
    plan = make_plan(load_project(copy_example(tmp_path)), max_steps=2)
    assert trainer.training_data(tiny, plan, "a", lambda line: None).prompts == [""]
    condition_on("mix3")
    data = side_run.training_data(tiny, plan, "a", lambda line: None)
    repeats = plan.side("a").repeats  # each repeat of the picture draws its own 3 prompts
    assert data.prompts[0] == "" and 4 <= len(data.prompts) <= 1 + 3 * repeats and len(data.items) == 4 * repeats
    assert condition_on("caption") == CAPTION and condition_on("empty") == ""


def test_the_pretraining_loss_weights_the_shape_and_the_noisy_steps():
    """--shape-weight's weights are 1 off the shape and the weight on it; --min-snr-gamma's are
    min(SNR, γ)/SNR: 1 at the noisy steps, below 1 where the picture is still clear."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler

    from bench.pretrain_toy import latent_weights, min_snr_weights, pictures_tensor
    from engine.models.toy_data import Scene, draw, shape_mask

    scene = Scene("red", "square", "blue", cx=0.3, cy=0.3, radius=0.2)
    mask = np.asarray(shape_mask(scene))
    picture = np.asarray(draw(scene), dtype=float)
    inside = mask > 250
    assert inside[19, 19] and not inside[50, 50] and 0.05 < inside.mean() < 0.3
    assert np.allclose(picture[inside].mean(axis=0), (220, 40, 40), atol=3)  # the mask is where the shape is drawn
    masks = pictures_tensor([shape_mask(scene).convert("RGB")])[:, :1] * 0.5 + 0.5
    weights = latent_weights(masks, 4.0, 16)
    assert weights.shape == (1, 1, 16, 16) and float(weights[0, 0, 4, 4]) == pytest.approx(4.0, abs=1e-3)
    assert float(weights[0, 0, 14, 14]) == pytest.approx(1.0, abs=1e-3)
    snr = min_snr_weights(DDPMScheduler(beta_schedule="scaled_linear"), torch.tensor([5, 990]), 5.0)
    assert float(snr[0]) < 0.1 and float(snr[1]) == pytest.approx(1.0)


def test_the_text_encoder_probe_makes_the_averaged_text_tell_the_shapes_apart():
    """--te-probe-steps: run 17's text encoder had let "circle" and "square" collapse in its
    position-averaged output (0.4 % apart). A small text encoder trained on the probe alone for
    a few hundred steps must tell every word apart there; the labels read the caption's words."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.pretrain_toy import CaptionProbe, caption_labels, pretrain_text_encoder
    from engine.models.toy import toy_tokenizer
    from engine.models.toy_data import COLOURS, SHAPES, dataset_scenes

    labels = caption_labels(["a red ring on a blue background, monochrome", ""])
    colours = list(COLOURS)
    assert labels.tolist() == [[colours.index("red"), SHAPES.index("ring"), colours.index("blue"), 1],
                               [len(COLOURS), len(SHAPES), len(COLOURS), 0]]

    torch.manual_seed(0)
    tokenizer = toy_tokenizer()
    tokenizer.model_max_length = 16
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    components = {"text_encoder": text_encoder, "tokenizer": tokenizer}
    captions = [caption for _, caption in dataset_scenes(1, 512)]

    def averaged(caption):
        ids = tokenizer([caption], padding="max_length", max_length=16, return_tensors="pt").input_ids
        with torch.no_grad():
            return text_encoder(ids)[0][0].mean(dim=0)

    def apart(a, b):
        return float((averaged(a) - averaged(b)).norm() / averaged(a).norm())

    probe = CaptionProbe(32, seed=0)
    losses = pretrain_text_encoder(components, captions, 300, 32, 3e-3, 0, probe)
    assert losses[-1] < 0.5 * losses[0]
    base = "a red circle on a blue background"
    for other in ("a red square on a blue background", "a red triangle on a blue background", "a red ring on a blue background"):
        assert apart(base, other) > 0.2, other


def test_a_continued_run_fits_the_probe_head_without_moving_the_text_encoder():
    """fit_probe_head: a continued --te-probe run first fits its fresh head to the trained text
    encoder (its loss falls) and leaves every text-encoder weight as it was."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.pretrain_toy import CaptionProbe, caption_labels, fit_probe_head
    from engine.models.toy import toy_tokenizer
    from engine.models.toy_data import dataset_scenes

    torch.manual_seed(0)
    tokenizer = toy_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    before = {name: value.clone() for name, value in text_encoder.state_dict().items()}
    captions = [caption for _, caption in dataset_scenes(2, 256)]
    ids = tokenizer(captions, padding="max_length", max_length=16, return_tensors="pt").input_ids
    labels = caption_labels(captions)
    probe = CaptionProbe(32, seed=0)
    with torch.no_grad():
        start = float(probe.loss(text_encoder(ids[:64])[0], labels[:64]))
    fitted = fit_probe_head(text_encoder, probe, ids, labels, 3e-2, 0, steps=60)
    assert fitted < 0.8 * start
    assert all(torch.equal(before[name], value) for name, value in text_encoder.state_dict().items())


def test_ema_writes_the_average_and_leaves_training_and_its_evals_on_the_right_weights():
    """--ema (issue 24): the weights written are the moving average, each eval measures the
    last step's weights and then the average's, and swapping the average in for an eval puts the
    training weights back (the same losses as a run without it, step for step)."""
    import torch

    from bench.pretrain_toy import build, train_unet
    from engine.models.toy_data import dataset_scenes

    captions = [caption for _, caption in dataset_scenes(4, 8)]
    latents = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))

    def run(ema_decay: float):
        torch.manual_seed(0)
        components = build(0, te_layers=2)
        seen: list[float] = []

        def evaluate_now():  # what an eval sees: one of the U-Net's weights
            seen.append(float(components["unet"].conv_in.weight.detach().sum()))
            return {"shape": 0.0}

        evals: list[dict] = []
        losses = train_unet(components, latents, captions, 4, 2, 1e-2, 0, eval_every=2, evaluate_now=evaluate_now, evals=evals,
                            ema_decay=ema_decay)
        return losses, seen, evals, components["unet"].conv_in.weight.detach().clone()

    plain_losses, plain_seen, plain_evals, plain_weight = run(0.0)
    losses, seen, evals, weight = run(0.5)
    assert losses == plain_losses  # training itself never ran on the average
    assert seen[0::2] == plain_seen and seen[1::2] != plain_seen  # each eval: the step's weights, then the average's
    assert [set(e) for e in evals] == [{"step", "minutes", "shape", "ema"}] * 2 and "ema" not in plain_evals[0]
    assert not torch.equal(weight, plain_weight)  # what is written is the average
    assert abs(float(weight.sum()) - seen[-1]) < 1e-4  # ... the one the last eval measured


def test_the_pretraining_script_refuses_a_negative_probe(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_toy.py"), "--out", str(tmp_path / "toy"), "--te-probe", "-1"],
                          capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "--te-probe and --te-probe-steps must be 0 or more" in done.stderr
    assert not (tmp_path / "toy").exists()
    done = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_toy.py"), "--out", str(tmp_path / "toy"), "--saturation-jitter", "1.5"],
                          capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "--saturation-jitter in 0–1" in done.stderr and not (tmp_path / "toy").exists()
    done = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_toy.py"), "--out", str(tmp_path / "toy"), "--ema", "1"],
                          capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "--ema must be in [0, 1)" in done.stderr and not (tmp_path / "toy").exists()


# ----------------------------------------------------------------------------- `new --base toy`


EXAMPLE_TOY_CAPTION = "a yellow circle on a blue background"  # projects/example-toy's first pair's caption


def one_pair_toy(tmp_path, name: str):
    """A one-pair toy project as `copylora new --base toy` makes it, from example-toy's first pair."""
    from engine.project.scaffold import create_project
    from tests.helpers import REPO

    example = REPO / "projects/example-toy"
    return create_project(tmp_path / name, example / "a/colour.png", example / "b/monochrome.png", base_model="toy",
                          caption=EXAMPLE_TOY_CAPTION).root



def test_describe_reads_the_toy_worlds_pictures():
    import random

    from PIL import Image

    from engine.models.toy_data import Scene, describe, draw, random_scene
    from tests.helpers import REPO

    assert describe(Image.open(REPO / "projects/example-toy/a/colour.png")) == EXAMPLE_TOY_CAPTION
    rng = random.Random(5)
    scenes = [random_scene(rng) for _ in range(40)]
    for scene in (Scene(s.colour, s.shape, s.background, s.cx, s.cy, s.radius) for s in scenes):
        assert describe(draw(scene)) == scene.caption()



def test_new_on_toy_writes_the_measured_recipe(tmp_path, capsys):
    from engine.project.scaffold import BUILTIN_PRESETS
    from tests.helpers import REPO

    example = REPO / "projects/example-toy"
    dest = tmp_path / "mine"
    assert main(["new", str(dest), "--a", str(example / "a/colour.png"), "--b", str(example / "b/monochrome.png"), "--base", "toy"]) == 0
    assert EXAMPLE_TOY_CAPTION in capsys.readouterr().out
    made, example_project = load_project(dest), load_project(example)
    assert made.train.caption == EXAMPLE_TOY_CAPTION and made.reg is None  # one pair, under its picture's caption
    for key, value in BUILTIN_PRESETS["toy"]["train"].items():  # the toy preset (docs/BENCHMARKS.md)
        assert getattr(made.train, key) == value, key
    # example-toy is four such pairs, each under its own caption file: the same [sample] and
    # [train] settings but for the caption (there per picture) and its measured length and rate
    differ = {"caption", "max_train_epochs", "learning_rate"}
    assert {k: v for k, v in vars(made.train).items() if k not in differ} == {k: v for k, v in vars(example_project.train).items() if k not in differ}
    assert made.sample == example_project.sample and example_project.reg is not None
    assert plan_warnings(make_plan(made)) == []


def test_new_keeps_real_checkpoints_and_tiny_caption_free(tmp_path):
    from engine.models.toy import new_project_caption
    from tests.helpers import REPO

    picture = REPO / "projects/example-toy/a/colour.png"
    assert new_project_caption("tiny", picture) == "" and new_project_caption("/models/sd15.safetensors", picture) == ""
    assert new_project_caption("toy", tmp_path / "missing.png") == ""  # create_project reports the missing file
    dest = tmp_path / "t"
    assert main(["new", str(dest), "--a", str(picture), "--b", str(REPO / "projects/example-toy/b/monochrome.png")]) == 0
    assert load_project(dest).train.caption == ""


def test_new_says_the_caption_the_project_holds(tmp_path, capsys):
    """`new --method addift --base toy` said "A and B train under the caption …", and wrote
    caption = "" (the route's preset trains caption-free)."""
    from tests.helpers import REPO

    example = REPO / "projects/example-toy"
    dest = tmp_path / "diff"
    assert main(["new", str(dest), "--a", str(example / "a/colour.png"), "--b", str(example / "b/monochrome.png"), "--base", "toy",
                 "--method", "addift"]) == 0
    said = capsys.readouterr().out
    assert load_project(dest).train.caption == "" and "train under the caption" not in said
    assert "A and B train caption-free, as the addift route's preset for this base has it" in said



def test_check_warns_on_a_caption_free_toy_project(tmp_path, capsys):
    root = one_pair_toy(tmp_path, "toy-bare")
    project = load_project(root)
    project.train.caption = ""
    save_project(project)
    assert main(["check", str(root)]) == 0
    err = capsys.readouterr().err
    assert "warning: train.caption: A and B train caption-free on the toy base" in err and "does not survive CFG" in err
    assert main(["check", str(root), "--json"]) == 0
    assert any("caption-free on the toy base" in w for w in json.loads(capsys.readouterr().out)["warnings"])



def test_check_names_the_one_side_left_caption_free(tmp_path):
    root = one_pair_toy(tmp_path, "toy-half")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('folder = "b"\n', 'folder = "b"\ncaption = ""\n'))
    warnings = plan_warnings(make_plan(load_project(root)))
    assert [w.split(":")[0] for w in warnings if "toy base" in w] == ["b.caption"]



def test_check_is_quiet_for_example_toy_and_tiny(capsys):
    from tests.helpers import REPO

    for example in ("example-toy", "example-monochrome"):
        assert main(["check", str(REPO / "projects" / example)]) == 0
        assert "caption-free on the toy base" not in capsys.readouterr().err



async def test_the_apps_new_dialog_writes_the_toy_caption_too(tmp_path, monkeypatch):
    from textual.widgets import DataTable, Input

    from copylora_tui.app import CopyloraApp
    from tests.helpers import REPO
    from tests.test_app_support import make_projects, use_home, wait_until

    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.query_one("#projects", DataTable).row_count == 1)
        await pilot.press("n")
        dialog = app.screen
        for key, value in (("name", "toyish"), ("a", REPO / "projects/example-toy/a/colour.png"),
                           ("b", REPO / "projects/example-toy/b/monochrome.png"), ("base", "toy")):
            dialog.query_one(f"#new-{key}", Input).value = str(value)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: (projects / "toyish" / "copylora.toml").is_file())
    assert load_project(projects / "toyish").train.caption == EXAMPLE_TOY_CAPTION


def test_toy_pairs_writes_valid_projects_of_several_pairs(tmp_path):
    """bench/toy_pairs.py: pairs4 with captions is four checked pairs each under its own caption;
    the collage is one pair; an existing folder is refused."""
    sys.path.insert(0, str(REPO / "bench"))
    from toy_pairs import write_project

    from engine.project.concepts import resolve_prompt

    root = write_project("pairs4", tmp_path / "four", "tiny", True)
    plan = make_plan(load_project(root))
    pictures = plan.side("b").images
    assert len(pictures) == 4 and plan.side("a").reg_images == 0 and not plan_warnings(plan)
    assert resolve_prompt(plan.project.reg.instance_prompt, pictures[3].path, ".txt") == "a orange ring on a purple background"
    # roles8: every chromatic colour once as a shape and once as a background, never on a held-out combination
    roles = make_plan(load_project(write_project("roles8", tmp_path / "roles", "tiny", True)))
    scenes = [resolve_prompt("[filewords]", image.path, ".txt").split() for image in roles.side("a").images]
    shapes, backgrounds = [(words[1], words[2], words[5]) for words in scenes], {words[5] for words in scenes}
    chromatic = set(COLOURS) - {"white", "black"}
    assert len(scenes) == 8 and {c for c, _, _ in shapes} == backgrounds == chromatic and not plan_warnings(roles)
    assert not any(is_held_out(*scene) for scene in shapes) and ("blue", "square", "yellow") in shapes  # blue circle on yellow is held out
    collage = make_plan(load_project(write_project("collage", tmp_path / "one", "tiny", False)))
    assert len(collage.side("a").images) == 1 and collage.project.reg is None and collage.project.train.caption == ""
    with pytest.raises(SystemExit):
        write_project("pairs3", tmp_path / "four", "tiny", True)


def test_the_graphed_pretraining_step_trains_as_the_eager_one():
    """--cuda-graph (issue 24: a lent GPU pretrains the toy in minutes only if its tiny kernels are
    not launched one by one): the U-Net phase's whole step captured after 3 eager steps and
    replayed, each step's draws copied into the graph's inputs. On the CPU, with the engine's
    stand-in for a CUDA graph (capture records, replay re-runs on the same input tensors), every
    loss and every weight must be the eager run's, with every input the loss reads in play."""
    import torch

    from bench.pretrain_toy import GRAPH_WARMUP, CaptionProbe, build, train_unet
    from engine.models.toy_data import dataset_scenes
    from engine.train.cuda_graph import EagerReplay

    captions = [caption for _, caption in dataset_scenes(4, 8)]
    latents = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    weights = 1 + 3 * torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))

    class Counting(EagerReplay):
        captures = replays = 0

        def capture(self, body) -> None:
            Counting.captures += 1
            super().capture(body)

        def replay(self) -> None:
            Counting.replays += 1
            super().replay()

    def run(graph):
        torch.manual_seed(0)
        components = build(0, te_layers=2)
        probe = CaptionProbe(components["text_encoder"].config.hidden_size, 0, "cpu")
        losses = train_unet(components, latents, captions, 7, 2, 1e-2, 0, noise_offset=0.1, weights=weights, min_snr_gamma=5.0,
                            debiased=True, probe=probe, probe_weight=0.1, ema_decay=0.5, graph=graph)
        return losses, {k: v.clone() for k, v in components["unet"].state_dict().items()}

    eager_losses, eager_weights = run(None)
    losses, weights_after = run(Counting())
    assert (Counting.captures, Counting.replays) == (1, 7 - GRAPH_WARMUP)
    assert losses == eager_losses and len(set(losses)) == 7  # each step its own draw, as eager
    assert all(torch.equal(weights_after[k], eager_weights[k]) for k in eager_weights)


@pytest.mark.gpu
def test_the_graphed_pretraining_step_trains_as_the_eager_one_on_a_gpu():
    """The real capture (--device cuda --cuda-graph) against eager on the GPU: the same draws, so
    the losses may differ only by rounding (a captured cuBLAS call may pick another algorithm; the
    graphed run's AdamW is the capturable one, which computes its bias corrections on the device).
    fp32 without TF32, ten steps: each loss within 1e-3 of eager's, relative."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from bench.pretrain_toy import build, cuda_graph, train_unet
    from engine.models.toy_data import dataset_scenes

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    captions = [caption for _, caption in dataset_scenes(4, 8)]
    latents = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0)).cuda()

    def run(graphed: bool):
        torch.manual_seed(0)
        components = build(0, te_layers=2)
        for name in ("unet", "text_encoder"):
            components[name].to("cuda")
        return train_unet(components, latents, captions, 10, 4, 1e-3, 0, noise_offset=0.1, device="cuda",
                          graph=cuda_graph("cuda") if graphed else None)

    eager, graphed = run(False), run(True)
    worst = max(abs(a - b) / max(abs(b), 1e-8) for a, b in zip(graphed, eager))
    print(f"graphed vs eager pretraining losses: worst relative difference {worst:.3g}")
    assert worst < 1e-3, (worst, graphed, eager)


def test_the_unet_phase_stops_at_its_time_limit_with_a_last_eval():
    """--max-unet-minutes (a lent GPU's call has a limit): the phase stops after the step that
    passes it, measured once more there; the losses say how many steps were done."""
    import torch

    from bench.pretrain_toy import build, train_unet
    from engine.models.toy_data import dataset_scenes

    captions = [caption for _, caption in dataset_scenes(4, 8)]
    latents = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    components = build(0, te_layers=2)
    evals: list[dict] = []
    losses = train_unet(components, latents, captions, 50, 2, 1e-2, 0, eval_every=1000, evaluate_now=lambda: {"shape": 0.5},
                        evals=evals, max_minutes=1e-9)
    assert len(losses) == 1 and [e["step"] for e in evals] == [1] and evals[0]["shape"] == 0.5


@pytest.mark.parametrize(("flags", "said"), [(["--max-unet-minutes", "-1"], "--max-unet-minutes must be 0 (off) or more"),
                                              (["--cuda-graph"], "--cuda-graph needs --device cuda")])
def test_the_pretraining_script_refuses_a_time_limit_or_graph_it_cannot_keep(tmp_path, flags, said):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_toy.py"), "--out", str(tmp_path / "toy"), *flags],
                          capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and said in done.stderr and not (tmp_path / "toy").exists()
