"""The metadata of trained, merged and re-ranked LoRAs says what they are (issue 29): the
training resolution (not the family's 512×512) and U-Net only when no text-encoder module is in
the file."""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from copylora_tui.cli.main import main  # noqa: E402
from engine.lora.files import load_lora_file, save_lora_file  # noqa: E402
from engine.lora.metadata import trained_resolution, trains_unet_only  # noqa: E402
from engine.merge.project_result import make_result  # noqa: E402
from engine.merge.svd import merge_loras  # noqa: E402
from engine.project.folder import load_project  # noqa: E402
from engine.project.plan import make_plan  # noqa: E402
from engine.train.trainer import train  # noqa: E402
from tests.helpers import copy_example, quiet  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny):
    """example-monochrome at 64×64, A and B trained one step each (U-Net only, as by default)."""
    root = copy_example(tmp_path_factory.mktemp("meta"))
    project = load_project(root)
    project.train = replace(project.train, resolution=[64, 64], save_precision="float")
    plan = make_plan(project, max_steps=1)
    for side in ("a", "b"):
        train(plan, side, model=tiny, log=quiet)
    return plan


def meta(path) -> dict:
    return load_lora_file(path).metadata


def test_a_and_b_say_their_training_resolution_and_unet_only(trained):
    for side in ("a", "b"):
        m = meta(trained.side(side).lora_path)
        assert m["modelspec.resolution"] == "64x64" and m["ss_resolution"] == "(64, 64)"
        assert m["ss_network_train_unet_only"] == "True"


def test_the_merged_result_keeps_them(trained):
    lora, _stats, _result = make_result(trained, device="cpu")
    m = meta(lora)
    assert m["modelspec.resolution"] == "64x64"  # was the family's 512x512
    assert m["ss_resolution"] == "(64, 64)"
    assert m["ss_network_train_unet_only"] == "True"  # was False


def test_merge_and_resize_commands_write_them(trained, tmp_path, capsys):
    b, a = trained.side("b").lora_path, trained.side("a").lora_path
    merged, resized = tmp_path / "m.safetensors", tmp_path / "r.safetensors"
    assert main(["merge", "--models", str(b), str(a), "--ratios", "1", "-1", "--new_rank", "4", "--save_to", str(merged)]) == 0
    assert main(["resize", str(b), "--new_rank", "2", "--save_to", str(resized)]) == 0  # the differential route's result is this
    for path in (merged, resized):
        m = meta(path)
        assert (m["modelspec.resolution"], m["ss_network_train_unet_only"]) == ("64x64", "True")


def test_a_text_encoder_module_makes_it_false(tmp_path):
    g = torch.Generator().manual_seed(0)

    def module(out_f, in_f):
        return torch.randn(4, in_f, generator=g), torch.randn(out_f, 4, generator=g) * 0.1, 1.0

    unet = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    facts = {"ss_base_model_version": "sd_v1", "modelspec.resolution": "512x768"}
    with_te = save_lora_file(tmp_path / "te.safetensors", {unet: module(32, 32), te: module(32, 32)}, facts, "float")
    result = merge_loras([with_te], [1.0], new_rank=4)
    assert result.metadata["ss_network_train_unet_only"] == "False"
    assert result.metadata["modelspec.resolution"] == "512x768"
    assert trains_unet_only([unet]) and not trains_unet_only([unet, te])


def test_trained_resolution_reads_both_keys_and_takes_the_largest():
    assert trained_resolution([{"modelspec.resolution": "64x64"}, {"ss_resolution": "(128, 192)"}]) == (128, 192)
    assert trained_resolution([{}, {"ss_resolution": "None"}]) is None  # external files without it: the family's default
