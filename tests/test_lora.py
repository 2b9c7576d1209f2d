"""The LoRA network: kohya names and shapes, apply/remove, files, metadata, diffusers interop."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.errors import CopyloraError, LoRAFileError
from engine.lora.files import kohya_hashes, load_lora_file, save_lora_file
from engine.lora.metadata import lora_metadata
from engine.lora.network import LoRANetwork, apply_lora_file
from engine.lora.weights import LoRAWeights, lora_delta
from engine.models.loading import build_empty
from engine.models.tiny import tiny_pipeline

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def reference(table: str) -> dict[str, tuple]:
    path = REFERENCE / table
    if not path.is_file():
        pytest.skip(f"reference table {path} not present")
    rows = (line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if line.strip())
    return {key: tuple(int(n) for n in shape.split(",")) if shape else () for key, shape, _ in rows}


def key_shapes(network: LoRANetwork) -> dict[str, tuple]:
    out = {}
    for lora in network.loras():
        out[f"{lora.name}.lora_down.weight"] = tuple(lora.lora_down.weight.shape)
        out[f"{lora.name}.lora_up.weight"] = tuple(lora.lora_up.weight.shape)
        out[f"{lora.name}.alpha"] = tuple(lora.alpha.shape)
    return out


@pytest.fixture
def inputs(tiny):
    g = torch.Generator().manual_seed(1)
    ids = tiny.tokenizers[0](["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    return torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500]), ids


def run(model, inputs):
    latents, t, ids = inputs
    with torch.no_grad():
        hidden = model.text_encoders[0](ids)[0]
        return model.unet(latents, t, hidden).sample, hidden


def randomise(network: LoRANetwork, seed: int = 0, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in network.loras():
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=g) * std)


# --------------------------------------------------------------------------- names and shapes


@pytest.mark.parametrize("table, conv", [("kohya_sd15_r8.tsv", 0), ("kohya_sd15_r8_conv8.tsv", 8)])
def test_tiny_names_equal_kohya_sd15(tiny, table, conv):
    network = LoRANetwork(tiny.unet, tiny.text_encoders, rank=8, alpha=1.0, conv_rank=conv, conv_alpha=1.0)
    assert set(key_shapes(network)) == set(reference(table))


@pytest.mark.parametrize(
    "family, table, conv",
    [
        ("sd1", "kohya_sd15_r8.tsv", 0),
        ("sd1", "kohya_sd15_r8_conv8.tsv", 8),
        ("sdxl", "kohya_sdxl_r8.tsv", 0),
        ("sdxl", "kohya_sdxl_r8_conv8.tsv", 8),
    ],
)
def test_full_size_names_and_shapes_equal_kohya(family, table, conv):
    unet, encoders = build_empty(family)
    network = LoRANetwork(unet, encoders, family=family, rank=8, alpha=1.0, conv_rank=conv, conv_alpha=1.0)
    assert key_shapes(network) == reference(table)


def test_text_encoder_names_keep_kohya_text_model_prefix(tiny):
    network = LoRANetwork(tiny.unet, tiny.text_encoders)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in network.text_encoder_loras
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in network.unet_loras
    assert not LoRANetwork(tiny.unet, tiny.text_encoders, text_encoder=False).text_encoder_loras


# --------------------------------------------------------------------------- behaviour


def test_apply_remove_multiplier(tiny, inputs):
    base, base_hidden = run(tiny, inputs)
    network = LoRANetwork(tiny.unet, tiny.text_encoders, rank=4, conv_rank=4).apply_to()
    try:
        fresh, _ = run(tiny, inputs)
        assert torch.equal(fresh, base)  # lora_up starts at zero: a new network changes nothing
        randomise(network)
        changed, changed_hidden = run(tiny, inputs)
        assert (changed - base).abs().max() > 1e-3 and (changed_hidden - base_hidden).abs().max() > 1e-3
        network.set_multiplier(0.0)
        assert torch.equal(run(tiny, inputs)[0], base)
        network.set_multiplier(1.0)
        assert torch.equal(run(tiny, inputs)[0], changed)
    finally:
        network.remove()
    after, after_hidden = run(tiny, inputs)
    assert torch.equal(after, base) and torch.equal(after_hidden, base_hidden)


def test_hook_adds_scaled_low_rank_delta(tiny):
    network = LoRANetwork(tiny.unet, tiny.text_encoders, rank=4, alpha=2.0, multiplier=0.5)
    randomise(network)
    lora = network.text_encoder_loras["lora_te_text_model_encoder_layers_3_mlp_fc1"]
    x = torch.randn(2, 5, lora.base.in_features)
    with torch.no_grad():
        base = lora.base(x)
        network.apply_to()
        got = lora.base(x)
        network.remove()
    delta = lora_delta(*lora.weights())
    assert torch.allclose(got, base + 0.5 * x @ delta.T, atol=1e-6)


def test_trainable_parameters_and_groups(tiny, inputs):
    network = LoRANetwork(tiny.unet, tiny.text_encoders, rank=4, alpha=1.0).apply_to()
    try:
        base_ids = {id(p) for p in [*tiny.unet.parameters(), *tiny.text_encoders[0].parameters()]}
        assert not base_ids & {id(p) for p in network.parameters()}  # base weights are not ours
        assert len(network.unet_parameters()) == 2 * len(network.unet_loras)
        assert len(network.text_encoder_parameters()) == 2 * len(network.text_encoder_loras)
        groups = network.param_groups(1e-4, 5e-5)
        assert [g["lr"] for g in groups] == [1e-4, 5e-5]
        before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
        optimizer = torch.optim.SGD(groups, lr=1e-4)
        latents, t, ids = inputs
        with torch.enable_grad():
            loss = tiny.unet(latents, t, tiny.text_encoders[0](ids)[0]).sample.pow(2).mean()
            loss.backward()
        optimizer.step()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in network.unet_parameters())
        assert all(torch.equal(before[k], v) for k, v in tiny.unet.state_dict().items())
    finally:
        network.remove()
        tiny.unet.zero_grad(set_to_none=True)
        tiny.text_encoders[0].zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- files


def mixed_network(tiny) -> LoRANetwork:
    """Random weights, conv modules, and alphas that differ between modules."""
    network = LoRANetwork(tiny.unet, tiny.text_encoders, rank=4, alpha=1.0, conv_rank=2, conv_alpha=0.5)
    randomise(network)
    for i, lora in enumerate(network.loras()):
        if i % 3 == 0:
            lora.set_alpha(2.0)
        if i % 7 == 0:
            lora.set_alpha(3.0)
    return network


def test_save_load_round_trip(tiny, tmp_path):
    network = mixed_network(tiny)
    path = network.save(tmp_path / "a.safetensors", dtype="float", metadata={"ss_network_dim": 4})
    lora = load_lora_file(path)
    mine = network.weights()
    assert lora.modules.keys() == mine.keys()
    assert len({w.alpha for w in lora.modules.values()}) == 1  # one alpha per file
    for name, w in lora.modules.items():
        assert torch.equal(w.down, mine[name].down)  # fp32: down is untouched
        assert torch.allclose(lora_delta(*w), lora_delta(*mine[name]), rtol=1e-6, atol=1e-8)
    assert lora.metadata["ss_network_dim"] == "4"

    # The file loads back into a network built like the saved one: same deltas.
    other = LoRANetwork(tiny.unet, tiny.text_encoders, rank=4, alpha=1.0, conv_rank=2, conv_alpha=0.5)
    other.load_weights(path)
    for name, w in other.weights().items():
        assert torch.allclose(lora_delta(*w), lora_delta(*mine[name]), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_save_precision(tiny, tmp_path, precision, dtype):
    network = mixed_network(tiny)
    path = network.save(tmp_path / "h.safetensors", dtype=precision)
    with safe_open(str(path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}
        assert f.get_tensor(next(k for k in f.keys() if k.endswith(".alpha"))).shape == ()
    lora = load_lora_file(path, dtype=torch.float32)
    name = "lora_unet_mid_block_attentions_0_proj_in"
    want = lora_delta(*network.weights()[name])
    assert torch.allclose(lora_delta(*lora.modules[name]), want, atol=want.abs().max().item() * 2e-2)


def test_reads_hand_written_kohya_file(tiny, tmp_path, inputs):
    g = torch.Generator().manual_seed(3)
    attn = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # 32 -> 32 Linear
    proj = "lora_unet_up_blocks_3_attentions_2_proj_out"  # 1x1 conv, 32 channels
    conv = "lora_unet_down_blocks_1_resnets_0_conv1"  # 3x3 conv 32 -> 64
    text = "lora_te_text_model_encoder_layers_11_mlp_fc2"  # 128 -> 32 Linear
    tensors = {
        f"{attn}.lora_down.weight": torch.randn(3, 32, generator=g).to(torch.bfloat16),
        f"{attn}.lora_up.weight": torch.randn(32, 3, generator=g).to(torch.bfloat16),
        f"{attn}.alpha": torch.tensor(1.5, dtype=torch.bfloat16),
        f"{proj}.lora_down.weight": torch.randn(5, 32, 1, 1, generator=g),
        f"{proj}.lora_up.weight": torch.randn(32, 5, 1, 1, generator=g),  # no alpha: alpha = rank
        f"{conv}.lora_down.weight": torch.randn(2, 32, 3, 3, generator=g).half(),
        f"{conv}.lora_up.weight": torch.randn(64, 2, 1, 1, generator=g).half(),
        f"{conv}.alpha": torch.tensor(1, dtype=torch.int64),
        f"{text}.lora_down.weight": torch.randn(8, 128, generator=g),
        f"{text}.lora_up.weight": torch.randn(32, 8, generator=g),
        f"{text}.alpha": torch.tensor(0.0),  # kohya: 0 means rank
    }
    path = tmp_path / "other_tool.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    lora = load_lora_file(path)
    assert {n: (w.rank, w.alpha) for n, w in lora.modules.items()} == {
        attn: (3, 1.5), proj: (5, 5.0), conv: (2, 1.0), text: (8, 8.0)
    }
    assert lora.metadata == {"ss_network_module": "networks.lora"}

    base, _ = run(tiny, inputs)
    network = apply_lora_file(path, tiny, multiplier=0.7)
    try:
        assert len(network.loras()) == 4
        changed, _ = run(tiny, inputs)
        assert (changed - base).abs().max() > 1e-4
        got = network.unet_loras[conv].weights()
        assert torch.equal(got.down, lora.modules[conv].down.float()) and got.alpha == 1.0
    finally:
        network.remove()
    assert torch.equal(run(tiny, inputs)[0], base)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing", "loha", "no_up", "bad_shape"])
def test_unreadable_files_give_one_clear_error(tiny, tmp_path, damage):
    good = LoRANetwork(tiny.unet, tiny.text_encoders, rank=2).save(tmp_path / "good.safetensors")
    path = tmp_path / "bad.safetensors"
    if damage == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a safetensors file at all")
    elif damage == "empty":
        save_file({}, str(path))
    elif damage == "loha":
        save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, str(path))
    elif damage == "no_up":
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path))
    elif damage == "bad_shape":
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 3)},
                  str(path))
    with pytest.raises(LoRAFileError) as info:
        load_lora_file(path)
    assert isinstance(info.value, CopyloraError) and str(path) in str(info.value)


def test_file_for_another_model_is_refused(tiny, tmp_path):
    path = tmp_path / "xl.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(2, 32),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(32, 2)}, str(path))
    # SGM names alone say no family: on SD1.5 they are read as its own, and SDXL's widths do not fit
    with pytest.raises(LoRAFileError, match=r"xl.safetensors: lora_unet_down_blocks_1_attentions_0_proj_in: shapes .* do not fit .* "
                                            r"\(a LoRA for another model\?\)"):
        apply_lora_file(path, tiny)
    network = LoRANetwork(tiny.unet, tiny.text_encoders, rank=2)
    with pytest.raises(LoRAFileError, match="do not fit"):
        network.load_weights(path)


def test_writer_takes_plain_mappings(tmp_path):
    modules = {
        "lora_unet_a": (torch.ones(2, 3), torch.ones(4, 2), 1.0),
        "lora_unet_b": LoRAWeights(torch.ones(4, 3, 3, 3), torch.ones(5, 4, 1, 1), None),  # None: alpha = rank
    }
    path = save_lora_file(tmp_path / "m.safetensors", modules, {"ss_steps": 3}, dtype=torch.float32)
    lora = load_lora_file(path)
    assert {w.alpha for w in lora.modules.values()} == {1.0}
    assert torch.allclose(lora_delta(*lora.modules["lora_unet_b"]), lora_delta(torch.ones(4, 3, 3, 3),
                                                                              torch.ones(5, 4, 1, 1), 4.0))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


# --------------------------------------------------------------------------- metadata


def test_metadata_and_hashes(tiny, tmp_path):
    facts = {
        "network_dim": 8, "network_alpha": 1.0, "conv_dim": 8, "conv_alpha": 1, "learning_rate": 1e-4,
        "optimizer": "bitsandbytes.optim.adamw.AdamW8bit", "steps": 4000, "epoch": 800, "resolution": (600, 900),
        "seed": 42, "datasets": [{"dir": "/p/concept/A", "repeats": 5, "images": 1}],
        "model_name": "/models/v1-5-pruned.safetensors", "model_hash": "e1441589",
        "training_started_at": 1700000000.5, "output_name": "concept_A", "clip_skip": 1,
    }
    meta = lora_metadata(facts, "sd1")
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "1.0"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "1"}
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_steps"] == "4000" and meta["ss_epoch"] == "800" and meta["ss_seed"] == "42"
    assert meta["ss_resolution"] == "(600, 900)" and meta["ss_num_train_images"] == "5"
    assert json.loads(meta["ss_dataset_dirs"]) == {"A": {"n_repeats": 5, "img_count": 1}}
    assert meta["ss_sd_model_name"] == "v1-5-pruned.safetensors" and meta["ss_sd_model_hash"] == "e1441589"
    assert meta["ss_optimizer"] == "bitsandbytes.optim.adamw.AdamW8bit"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.resolution"] == "600x900" and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.title"] == "concept_A" and meta["modelspec.encoder_layer"] == "1"
    assert meta["modelspec.date"].startswith("2023-11-1")
    xl = lora_metadata({}, "sdxl")
    assert xl["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert xl["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert xl["ss_base_model_version"] == "sdxl_base_v1-0" and "ss_network_args" not in xl
    assert lora_metadata({}, "sd2-v")["modelspec.prediction_type"] == "v"

    path = mixed_network(tiny).save(tmp_path / "m.safetensors", dtype="fp16", metadata=meta)
    stored = load_lora_file(path).metadata
    assert {k: stored[k] for k in meta} == meta
    # sshs_model_hash covers the tensor bytes only, which do not depend on the metadata: it is
    # the sha256 of everything after the file's own header.
    blob = path.read_bytes()
    header = int.from_bytes(blob[:8], "little")
    assert stored["sshs_model_hash"] == hashlib.sha256(blob[8 + header:]).hexdigest()
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert (stored["sshs_model_hash"], stored["sshs_legacy_hash"]) == kohya_hashes(tensors, meta)
    assert len(stored["sshs_legacy_hash"]) == 8


# --------------------------------------------------------------------------- diffusers reads our files


def test_diffusers_load_lora_weights_matches_ours(tmp_path, caplog):
    pytest.importorskip("peft")
    pipe = tiny_pipeline()
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    network = LoRANetwork(unet, [text_encoder], rank=4, alpha=1.0, conv_rank=2, conv_alpha=0.5)
    randomise(network)
    for i, lora in enumerate(network.loras()):  # different alphas AND ranks across modules
        if i % 3 == 0:
            lora.set_alpha(2.0)
    g = torch.Generator().manual_seed(0)
    latents, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500])
    ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        base_hidden = text_encoder(ids)[0]
        base = unet(latents, t, base_hidden).sample
        network.apply_to()
        our_hidden = text_encoder(ids)[0]
        ours = unet(latents, t, our_hidden).sample
        network.remove()
    path = network.save(tmp_path / "ours.safetensors", dtype="float")

    from tests.helpers_models import diffusers_load_problems

    assert not diffusers_load_problems(pipe, path)

    with torch.no_grad():
        their_hidden = text_encoder(ids)[0]
        theirs = unet(latents, t, our_hidden).sample
    te_diff = (their_hidden - our_hidden).abs().max().item()
    unet_diff = (theirs - ours).abs().max().item()
    print(f"diffusers vs ours: text encoder {te_diff:.2e}, unet {unet_diff:.2e}")
    assert (our_hidden - base_hidden).abs().max() > 0.1 and (ours - base).abs().max() > 0.05
    assert te_diff < 1e-4 and unet_diff < 1e-4


def test_reads_plain_tensor_pt_lora_and_refuses_pickled_objects(tmp_path):
    good = tmp_path / "old.pt"
    torch.save({"lora_unet_a.lora_down.weight": torch.ones(2, 3), "lora_unet_a.lora_up.weight": torch.ones(4, 2)}, good)
    assert load_lora_file(good).modules["lora_unet_a"].alpha == 2.0
    evil = tmp_path / "evil.pt"
    torch.save({"lora_unet_a.lora_down.weight": torch.ones(2, 3), "x": _Payload()}, evil)
    with pytest.raises(LoRAFileError, match="plain-tensor"):
        load_lora_file(evil)


class _Payload:
    """Stands for any object a malicious pickle could carry."""
