"""The shipped ``toy`` base model (engine/models/toy/) and the copy-machine effect on it.

The toy model draws coloured shapes (engine.models.toy_data's world); these tests check the
shipped files, that it loads as the SD1.5 base it is, and, end to end on a CPU, that the
example's copy-machine LoRA takes the colour away on prompts neither its pairs nor the toy
model's pretraining ever showed, and leaves the picture's structure: a test that fails if the
merge's sign, the LoRA's scale or the sampler were wrong."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from engine.models.toy import toy_model_dir
from tests.helpers import copy_example, quiet

# Two held-out prompts (combinations the toy model never saw) that it draws in their colours.
PROMPTS = ["a red triangle on a blue background", "a pink ring on a green background"]


def test_the_shipped_toy_model_matches_its_checksums_and_stays_small():
    folder = toy_model_dir()
    listed = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert set(files) == set(listed)
    assert all(hashlib.sha256(files[name].read_bytes()).hexdigest() == digest for name, digest in listed.items())
    assert sum(p.stat().st_size for p in files.values()) <= 25 * 2**20


def test_toy_loads_as_an_sd15_base_whose_lora_names_are_tiny_s(tiny):
    from engine.formats.model_files import BUILTIN_FAMILIES, BUILTIN_WIDEST
    from engine.lora.network import LoRANetwork
    from engine.models.loading import load_base_model

    toy = load_base_model("toy")
    assert toy.family == BUILTIN_FAMILIES["toy"] == "sd1" and toy.name == "toy"
    assert BUILTIN_WIDEST["toy"] == (max(toy.unet.config.block_out_channels), toy.text_encoders[0].config.hidden_size)
    names = set(LoRANetwork(toy.unet, toy.text_encoders, family="sd1").unet_loras)
    assert names == set(LoRANetwork(tiny.unet, tiny.text_encoders, family="sd1").unet_loras) and len(names) > 100


def test_copylora_check_names_the_toy_model(tmp_path, capsys):
    from copylora_tui.cli.main import main

    root = copy_example(tmp_path, "example-toy", source="example-toy")
    assert main(["check", str(root)]) == 0
    assert "toy (built-in, SD1.5 topology, pretrained on 64x64 coloured shapes)" in capsys.readouterr().out


def test_copylora_new_on_toy_gets_the_toy_preset(tmp_path):
    from engine.project.scaffold import create_project

    example = copy_example(tmp_path / "src", "example-toy", source="example-toy")
    project = create_project(tmp_path / "mine", example / "a" / "colour.png", example / "b" / "monochrome.png", base_model="toy")
    assert project.info.base_model == "toy" and project.train.resolution == [64, 64] and project.sample.size == [64, 64]
    assert project.train.caption == ""  # the example's caption describes its own picture: not a preset


@pytest.fixture(scope="module")
def toy_result(tmp_path_factory):
    """The example (eight pairs, each under its caption) trained briefly, merged: (model, plan, result path)."""
    from engine.merge.project_result import make_result
    from engine.models.loading import load_base_model
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan
    from engine.train.twin import train_twin

    root = copy_example(tmp_path_factory.mktemp("toy"), "example-toy", source="example-toy")
    project = load_project(root)
    # The example trains 1000 steps a side; 240 at its lr show the direction in a quarter of the time
    # (measured again 2026-12-06: effect 0.334, SSIM 0.638, the figures below; 480 steps cost 45 s more of the suite).
    project.train = replace(project.train, max_train_epochs=TEST_EPOCHS, save_every_n_steps=0)
    save_project(project)
    plan = make_plan(load_project(root))
    model = load_base_model("toy")
    train_twin(plan, model=model, log=quiet)  # as the queue trains it: A and B as one batch of two
    result, _, _ = make_result(plan, device="cpu")
    return model, plan, result


TEST_EPOCHS = 6  # 8 pictures × 5 repeats × 6 = 240 steps a side


def test_the_copy_machine_lora_takes_the_colour_away_on_new_prompts_and_keeps_the_picture(toy_result):
    from engine.train.effect import lora_effect

    model, _plan, result = toy_result
    report = lora_effect(model, result, PROMPTS, [1], [0.0, 1.0], steps=12, size=(64, 64), guidance=7.0)
    assert report.saturation[0.0] > 0.3  # the base draws in colour
    assert report.effect < MAX_EFFECT, report  # the colour goes (no scale leaves it at 1; a wrong sign keeps more)
    assert report.collateral_ssim > MIN_SSIM, report  # the shapes stay where they were


# Measured on run 28 (2026-12-05, the example's eight pairs at lr 5e-3, trained as a twin), these
# two held-out prompts, seed 1, 12 sampling steps, CFG 7: 480 steps a side: effect 0.40, SSIM 0.660;
# 240 steps: 0.33, SSIM 0.639; 240 steps with the merge's sign flipped: 0.91, SSIM 0.33 (both
# catch it). (The four-pair example measured 0.55 / 0.644 at 480 steps.) Two prompts are a noisy
# measure (0.33 at 240 steps, 0.40 at 480): the margins are wide on purpose. The shared noise's
# loss is not claimed: on this base and length it did not show in the effect (B on another seed:
# 0.679 against 0.713, four pairs at 240 steps).
MAX_EFFECT, MIN_SSIM = 0.65, 0.45


def test_a_copies_picture_a_and_the_result_on_top_of_it_copies_b(toy_result):
    """On the caption A's first picture trained under: A at 1 draws picture A; A at 1 + the result at 1, picture B."""
    from bench.effect_bench import copy_check, first_prompt

    model, plan, result = toy_result
    check = copy_check(model, plan.side("a").lora_path, result, plan.side("a").images[0].path, plan.side("b").images[0].path,
                       seed=1, steps=12, size=(64, 64), prompt=first_prompt(plan))
    assert check["A vs picture A"] > MIN_A_DB and check["A + result vs picture B"] > MIN_B_DB, check


# Measured as above: 480 steps: A 20.5 dB, A + result 14.4 dB; 240 steps: 15.1 and 12.3 dB, sign
# flipped 7.7 dB (the base alone drew picture A at ~10 dB on run 9).
MIN_A_DB, MIN_B_DB = 15.0, 11.5
