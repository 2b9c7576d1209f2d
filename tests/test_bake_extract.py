"""Bake-and-extract: bake LoRAs into a base model, extract a LoRA from two checkpoints' difference.

All on the tiny SD1.5-topology model, CPU, fp32. The central check is that the two routes of
the copy-machine workflow agree: bake A and bake B, extract B−A at rank 16 == the exact SVD
merge +1·B −1·A at rank 16 (both exact at rank 16, since rank(ΔB − ΔA) ≤ 8 + 8).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import snapshot
from helpers_models import sd1_single_file_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.errors import CopyloraError, LoRAFileError, ModelError, ValidationError
from engine.lora.files import load_lora_file, save_lora_file
from engine.lora.names import find_targets
from engine.lora.network import LoRANetwork
from engine.lora.weights import lora_delta
from engine.merge.bake import bake_lora
from engine.merge.extract import ExtractError, extract_lora, truncated_svd
from engine.merge.svd import merge_loras
from engine.models import tiny as tiny_model
from engine.models.loading import load_base_model

U32 = 2.0**-24  # fp32 unit roundoff
# The baked model's forward vs the base's forward with the LoRA network hooked in: the same
# sums in another order (W·x + Δ·x vs (W+Δ)·x) through a dozen layers, in fp32.
FORWARD_RTOL = 1e-5


@pytest.fixture(scope="module")
def base():
    return load_base_model("tiny")


def _random_lora(base, seed: int, alpha: float, path: Path) -> Path:
    """A rank-8 LoRA (conv rank 8 too) with random non-zero factors, ‖ΔW‖ 0.2 … 10 % of ‖W‖."""
    generator = torch.Generator().manual_seed(seed)
    net = LoRANetwork(base.unet, base.text_encoders, rank=8, alpha=alpha, conv_rank=8, conv_alpha=alpha)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.03)
    net.save(path, dtype="float")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory, base):
    """LoRAs A and B, the tiny model as a single file, and A and B baked into the tiny folder."""
    root = tmp_path_factory.mktemp("method1")
    a = _random_lora(base, 1, 4.0, root / "A.safetensors")
    b = _random_lora(base, 2, 1.0, root / "B.safetensors")
    single = root / "tiny_sd1.safetensors"
    save_file(sd1_single_file_state_dict(tiny_model.tiny_pipeline()), str(single))
    baked_a = bake_lora("tiny", a, root / "tiny_A")
    baked_b = bake_lora("tiny", b, root / "tiny_B")
    return {"root": root, "A": a, "B": b, "single": single, "baked_a": baked_a, "baked_b": baked_b}


def _inputs():
    g = torch.Generator().manual_seed(7)
    return (
        torch.randn(1, 4, 16, 16, generator=g),
        torch.randn(1, 8, 32, generator=g),
        torch.randint(0, 300, (1, 10), generator=g),
    )


def _outputs(model):
    latents, context, ids = _inputs()
    with torch.no_grad():
        unet = model.unet(latents, 10, encoder_hidden_states=context).sample
        text = model.text_encoders[0](ids)[0]
    return unet, text


def _assert_close(got, want, rtol=FORWARD_RTOL):
    scale = want.abs().max()
    assert float((got - want).abs().max()) <= rtol * float(scale), float((got - want).abs().max() / scale)


def _with_lora(base, lora_path, ratio=1.0):
    net = LoRANetwork.from_file(lora_path, base.unet, base.text_encoders, base.family, multiplier=ratio).apply_to()
    try:
        return _outputs(base)
    finally:
        net.remove()


# --------------------------------------------------------------------------- bake


def test_bake_into_diffusers_folder(work, base):
    result = work["baked_a"]
    out = result.path
    assert result.format == "diffusers" and result.family == "sd1" and out.is_dir()
    lora = load_lora_file(work["A"])
    assert len(result.modules) == len(lora.modules) == 350
    assert sorted(result.files_rewritten) == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"]
    assert result.max_rounding < 1e-5  # fp32 storage keeps ΔW to ~u·‖W‖/‖ΔW‖
    # Only the rewritten weight files differ from the base folder; the cache mark is not copied.
    src, dst = snapshot(tiny_model.tiny_model_dir()), snapshot(out)
    assert set(dst) == set(src) - {"copylora-complete"}
    assert [f for f in dst if dst[f] != src[f]] == sorted(result.files_rewritten)
    # Inside the rewritten files: same keys and dtypes, only the LoRA's weights changed.
    before = load_file(str(tiny_model.tiny_model_dir() / "unet" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {m.key.split("/", 1)[1] for m in result.modules if m.key.startswith("unet/")}
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        note = json.loads(f.metadata()["copylora_bake"])
    assert note["lora"] == "A.safetensors" and note["ratio"] == 1.0
    # The baked model computes what the base computes with the LoRA hooked in.
    baked = load_base_model(str(out))
    for got, want in zip(_outputs(baked), _with_lora(base, work["A"])):
        _assert_close(got, want)


def test_bake_into_single_file_keeps_layout(work, base):
    out = work["root"] / "single_A.safetensors"
    result = bake_lora(str(work["single"]), work["A"], out, ratio=0.5)
    assert result.format == "single-file" and result.files_rewritten == [out.name]
    with safe_open(str(work["single"]), "pt") as f:
        src_meta = f.metadata() or {}
    before, after = load_file(str(work["single"])), load_file(str(out))
    assert set(after) == set(before)  # every original key, no new ones
    assert all(after[k].dtype == before[k].dtype for k in before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {m.key for m in result.modules} and len(changed) == 350
    assert all(k.startswith(("model.diffusion_model.", "cond_stage_model.transformer.text_model.")) for k in changed)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert {k: meta[k] for k in src_meta} == src_meta and "copylora_bake" in meta
    # Loaded back through diffusers' own single-file conversion: base + 0.5·LoRA.
    baked = load_base_model(str(out), config_dir=tiny_model.tiny_model_dir())
    for got, want in zip(_outputs(baked), _with_lora(base, work["A"], ratio=0.5)):
        _assert_close(got, want)


def test_bake_keeps_or_casts_precision(work):
    fp16 = work["root"] / "tiny_fp16.safetensors"
    save_file({k: v.half() for k, v in load_file(str(work["single"])).items()}, str(fp16))
    kept = bake_lora(str(fp16), work["B"], work["root"] / "b16.safetensors")
    tensors = load_file(str(kept.path))
    assert {v.dtype for v in tensors.values()} == {torch.float16}
    # fp16 rounding of W + ΔW is reported: at most u16·‖W + ΔW‖ (u16 = 2⁻¹¹), i.e. up to
    # ~5e-4·‖W‖/‖ΔW‖ of the delta: 13 % for the smallest deltas here, against ~1e-6 in fp32.
    assert kept.max_rounding > 0.01
    assert all(m.rounding * m.delta_norm <= 2**-11 * (m.weight_norm + m.delta_norm) for m in kept.modules)
    cast = bake_lora(str(fp16), work["B"], work["root"] / "b32.safetensors", save_precision="float")
    assert {v.dtype for v in load_file(str(cast.path)).values()} == {torch.float32}


# --------------------------------------------------------------------------- the two methods agree


def _merged_deltas(work, rank=16):
    merged = merge_loras([work["B"], work["A"]], [1.0, -1.0], new_rank=rank, new_conv_rank=rank)
    return {name: lora_delta(*w) for name, w in merged.modules.items()}


def _weights_by_name(model):
    return {t.name: t.module.weight.detach() for t in find_targets(model.unet, model.text_encoders, model.family, True)}


@pytest.mark.parametrize("svd", ["auto", "randomized"])
def test_bake_then_extract_equals_svd_merge(work, svd):
    """Bake-and-extract (bake A, bake B, extract B−A) == the SVD route (exact merge +B −A), both at rank 16.

    Tolerance per module, relative to ‖ΔB − ΔA‖_F: storing W + ΔA and W + ΔB in fp32 rounds
    each element by at most u·|W + Δ| (u = 2⁻²⁴), so the extracted difference is off by a
    matrix E with ‖E‖ ≤ u·(‖W+ΔA‖ + ‖W+ΔB‖); the rank-16 truncation of (exact rank-16 + E) is
    within 2‖E‖ of the exact one (Eckart–Young): bound = 2u·(‖W+ΔA‖ + ‖W+ΔB‖)/‖ΔB − ΔA‖, i.e.
    ~eps·‖W‖/‖Δ‖ (1e-6 … 3.5e-5 here, where ‖Δ‖/‖W‖ is 0.2 … 10 %), plus 2e-6 for the fp32
    SVD/QR arithmetic of the two routes (the fp32 merge alone is ~1.2e-6 from an fp64 one).
    Measured: at most ~0.6 × the rounding bound (max 4.7e-6, median 1.4e-6), because rounding
    errors are ±u/2 spread, not all u in one direction.
    """
    out = work["root"] / f"extracted_{svd}.safetensors"
    result = extract_lora(
        str(work["baked_a"].path), str(work["baked_b"].path), dim=16, conv_dim=16, save_to=out,
        save_precision="float", svd=svd,
    )
    assert set(result.svd_methods.values()) == ({"randomized"} if svd == "randomized" else {"dense"})
    extracted = load_lora_file(out)
    assert {w.alpha for w in extracted.modules.values()} == {16.0}
    assert extracted.metadata["ss_network_dim"] == "16" and extracted.metadata["ss_base_model_version"] == "sd_v1"
    merged = _merged_deltas(work)
    assert set(extracted.modules) == set(merged) and result.skipped == []
    baked_a, baked_b = load_base_model(str(work["baked_a"].path)), load_base_model(str(work["baked_b"].path))
    wa, wb = _weights_by_name(baked_a), _weights_by_name(baked_b)
    worst = 0.0
    for name, want in merged.items():
        got = lora_delta(*extracted.modules[name]).reshape(want.shape)
        bound = 2 * U32 * (float(wa[name].norm()) + float(wb[name].norm())) / float(want.norm()) + 2e-6
        rel = float((got - want).norm() / want.norm())
        assert rel <= bound, (name, rel, bound)
        worst = max(worst, rel / bound)
    assert worst < 0.9
    stats = json.loads(out.with_name(out.stem + ".stats.json").read_text())
    assert stats["kind"] == "extract" and len(stats["modules"]) == len(merged)
    assert all(m["rel_error"] < 1e-3 and m["energy_kept"] > 0.999999 for m in stats["modules"])
    assert {m["block"] for m in stats["modules"]} >= {"te", "in1", "mid", "out3"}


def test_extract_from_single_file_and_rank_truncation(work):
    """Single-file and folder inputs mix; at rank 4 the stats report the truncation honestly."""
    single_a = work["root"] / "single_A_full.safetensors"
    bake_lora(str(work["single"]), work["A"], single_a)
    out = work["root"] / "r4.safetensors"
    result = extract_lora(
        str(single_a), str(work["baked_b"].path), dim=4, save_to=out, config_dir=tiny_model.tiny_model_dir()
    )
    extracted = load_lora_file(out)
    assert extracted.modules and all(w.down.dtype == torch.float16 for w in extracted.modules.values())
    assert all(w.rank == 4 and w.down.dim() in (2, 4) for w in extracted.modules.values())
    assert not any("resnets" in n or "samplers" in n for n in extracted.modules)  # no conv_dim: no ResNet convs
    merged = merge_loras([work["B"], work["A"]], [1.0, -1.0], new_rank=4)
    by_name = {s.name: s for s in merged.stats}
    for s in result.stats:
        m = by_name[s.name]
        assert 0 < s.rel_error < 1 and math.isclose(s.rel_error, m.rel_error, rel_tol=1e-3, abs_tol=1e-5)
        assert math.isclose(s.rel_error**2 + s.energy_kept, 1.0, abs_tol=1e-6)


def test_min_diff_drops_the_text_encoder_like_kohya(work):
    out = work["root"] / "nomin.safetensors"
    result = extract_lora(str(work["baked_a"].path), str(work["baked_b"].path), dim=4, save_to=out, min_diff=10.0)
    assert result.text_encoder_dropped and not any(n.startswith("lora_te_") for n in result.modules)
    assert any(n.startswith("lora_unet_") for n in result.modules)
    # The metadata says what the file holds (it said False for every extract before).
    assert load_lora_file(out).metadata["ss_network_train_unet_only"] == "True"


def test_clamp_quantile_reproduces_kohyas_clamp(work, tmp_path):
    exact = extract_lora(str(work["baked_a"].path), str(work["baked_b"].path), dim=4,
                         save_to=tmp_path / "exact.safetensors", save_precision="float")
    clamped = extract_lora(str(work["baked_a"].path), str(work["baked_b"].path), dim=4, clamp_quantile=0.9,
                           save_to=tmp_path / "clamped.safetensors", save_precision="float")
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2"
    down = clamped.modules[name].down
    assert int((down.abs() == down.abs().max()).sum()) > 1  # values piled up at the clamp limit
    want, got = lora_delta(*exact.modules[name]), lora_delta(*clamped.modules[name])
    assert 1e-3 < float((got - want).norm() / want.norm()) < 0.5
    assert "0.9" in clamped.metadata["copylora_extract"]


def test_truncated_svd_randomized_where_certain_else_dense():
    g = torch.Generator().manual_seed(3)
    m, n, r = 700, 1500, 12
    low = torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g)
    noisy = low + 1e-4 * torch.randn(m, n, generator=g)
    fast, exact = truncated_svd(noisy, 16), truncated_svd(noisy, 16, "dense")
    assert fast.method == "randomized" and exact.method == "dense"
    approx = (fast.u * fast.s) @ fast.v.T
    best = (exact.u * exact.s) @ exact.v.T
    # The error the stats report is the true error of the factors kept.
    assert math.isclose(float((noisy - approx).norm() / noisy.norm()), fast.rel_error, rel_tol=1e-2)
    assert fast.rel_error <= exact.rel_error * (1 + 1e-3) + 1e-7
    assert float((approx - best).norm() / best.norm()) < 1e-5
    flat = torch.randn(m, n, generator=g)  # no decay at all: a randomized SVD is not trusted
    assert truncated_svd(flat, 16).method == "dense (randomized not certain)"
    assert truncated_svd(flat[:300], 16).method == "dense"  # small side ≤ 512: dense anyway


@pytest.mark.gpu
def test_extract_on_cuda_matches_cpu(work, tmp_path):
    cpu = extract_lora(str(work["baked_a"].path), str(work["baked_b"].path), dim=16, conv_dim=16,
                       save_to=tmp_path / "cpu.safetensors", save_precision="float")
    gpu = extract_lora(str(work["baked_a"].path), str(work["baked_b"].path), dim=16, conv_dim=16,
                       save_to=tmp_path / "gpu.safetensors", save_precision="float", device="cuda")
    for name, w in cpu.modules.items():
        want, got = lora_delta(*w), lora_delta(*gpu.modules[name])
        assert float((got - want).norm() / want.norm()) < 1e-4


def test_module_to_weight_mapping_matches_kohya_names():
    """The names bake maps to weights are exactly kohya's (SD1.5 and SDXL, with conv), from the full-size configs."""
    from engine.merge.bake import _meta_components, _module_keys
    from engine.models.loading import CONFIG_ROOT

    reference = Path(__file__).resolve().parent.parent.parent / "shared" / "reference"
    if not reference.is_dir():
        pytest.skip("shared/reference not present")
    for family, table in [("sd1", "kohya_sd15_r8_conv8.tsv"), ("sdxl", "kohya_sdxl_r8_conv8.tsv")]:
        keys = _module_keys(_meta_components(CONFIG_ROOT / family, family), family)
        names = {line.split("\t")[0].rsplit(".lora_", 1)[0].removesuffix(".alpha")
                 for line in (reference / table).read_text().splitlines() if line.strip()}
        assert set(keys) == names
        components = {component for component, _, _ in keys.values()}
        assert components == ({"unet", "text_encoder", "text_encoder_2"} if family == "sdxl" else {"unet", "text_encoder"})
        assert all(key.endswith(".weight") for _, key, _ in keys.values())


# --------------------------------------------------------------------------- bad inputs


def _fake_lora(path: Path, names_shapes: dict[str, tuple[int, int]]) -> Path:
    modules = {n: (torch.randn(4, i), torch.randn(o, 4), 4.0) for n, (o, i) in names_shapes.items()}
    return save_lora_file(path, modules, {"ss_base_model_version": "sdxl_base_v1-0"}, "float")


def test_lora_for_another_family_is_refused_and_nothing_written(work, tmp_path):
    sdxl = _fake_lora(tmp_path / "xl.safetensors", {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (640, 640),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280),
    })
    before = snapshot(tmp_path)
    for base, out in [("tiny", tmp_path / "baked"), (str(work["single"]), tmp_path / "baked.safetensors")]:
        with pytest.raises(LoRAFileError, match="match nothing in this sd1 base model") as info:
            bake_lora(base, sdxl, out)
        assert "sdxl" in str(info.value) and "lora_unet_input_blocks_4_1" in str(info.value)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["xl.safetensors"]


def test_lora_of_another_width_is_refused(work, tmp_path):
    lora = load_lora_file(work["A"])
    wrong = {n: (w.down[:, :-1].contiguous() if w.down.dim() == 2 else w.down, w.up, w.alpha) for n, w in lora.modules.items()}
    path = save_lora_file(tmp_path / "wide.safetensors", wrong, {}, "float")
    with pytest.raises(LoRAFileError, match="do not fit the shapes"):
        bake_lora("tiny", path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["wide.safetensors"]


def test_missing_files_and_bad_destinations(work, tmp_path):
    with pytest.raises(LoRAFileError, match="not found"):
        bake_lora("tiny", tmp_path / "nope.safetensors", tmp_path / "out")
    with pytest.raises(ModelError, match="base model not found"):
        bake_lora(str(tmp_path / "nope"), work["A"], tmp_path / "out")
    with pytest.raises(ValidationError, match="give a folder path"):
        bake_lora("tiny", work["A"], tmp_path / "out.safetensors")
    with pytest.raises(ValidationError, match="give a .safetensors path"):
        bake_lora(str(work["single"]), work["A"], tmp_path / "out")
    with pytest.raises(ValidationError, match="already exists"):
        bake_lora("tiny", work["A"], work["baked_a"].path)
    with pytest.raises(ValidationError, match="base model itself"):
        bake_lora(str(work["single"]), work["A"], work["single"])
    with pytest.raises(ModelError, match="base model not found"):
        extract_lora(str(tmp_path / "nope"), "tiny", dim=4, save_to=tmp_path / "x.safetensors")
    with pytest.raises(ValidationError, match="dim: must be a whole number"):  # the engine names parameters
        extract_lora("tiny", "tiny", dim=0, save_to=tmp_path / "x.safetensors")
    with pytest.raises(ExtractError, match="identical"):
        extract_lora("tiny", "tiny", dim=4, save_to=tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def sdxl_single(tmp_path_factory):
    """tiny-sdxl as an SDXL single file (A1111/ComfyUI key names), and a LoRA on every
    U-Net, text-encoder-1 and text-encoder-2 module (q/k/v of the fused OpenCLIP attention too)."""
    from engine.models.ldm_keys import sdxl_single_file_state_dict

    root = tmp_path_factory.mktemp("sdxl-single")
    single = root / "tiny_sdxl.safetensors"
    pipe = tiny_model.tiny_sdxl_pipeline()
    save_file(sdxl_single_file_state_dict(pipe), str(single), metadata={"modelspec.title": "tiny sdxl"})
    torch.manual_seed(5)
    network = LoRANetwork(pipe.unet, [pipe.text_encoder, pipe.text_encoder_2], family="sdxl", rank=4, alpha=2.0,
                          conv_rank=4, conv_alpha=2.0, text_encoder=True)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape) * 0.05)
    lora = network.save(root / "XL.safetensors", dtype="float")
    return {"root": root, "single": single, "lora": lora}


def test_sdxl_single_file_layout_is_the_inverse_of_diffusers(sdxl_single):
    """Our SDXL single-file names, read by diffusers' own converter, give tiny-sdxl back exactly."""
    model = load_base_model(str(sdxl_single["single"]), config_dir=tiny_model.tiny_sdxl_dir())
    reference = load_base_model("tiny-sdxl")
    assert model.family == "sdxl"
    for got, want in [(model.unet, reference.unet), (model.vae, reference.vae),
                      (model.text_encoders[0], reference.text_encoders[0]), (model.text_encoders[1], reference.text_encoders[1])]:
        a, b = got.state_dict(), want.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


def test_bake_into_sdxl_single_file_matches_the_folder_bake_bit_for_bit(sdxl_single, tmp_path):
    single, lora = sdxl_single["single"], sdxl_single["lora"]
    out = tmp_path / "baked.safetensors"
    result = bake_lora(str(single), lora, out)
    assert result.format == "single-file" and result.family == "sdxl"
    before, after = load_file(str(single)), load_file(str(out))
    assert set(after) == set(before) and all(after[k].dtype == before[k].dtype for k in before)
    touched = {m.key.split("[")[0] for m in result.modules}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == touched  # every other tensor copied through bit for bit
    fused = [m for m in result.modules if m.key.endswith(("[q]", "[k]", "[v]"))]
    assert fused and all(m.key.startswith("conditioner.embedders.1.model.transformer.resblocks.") for m in fused)
    assert len(result.modules) == len(load_lora_file(lora).modules)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.title"] == "tiny sdxl" and "copylora_bake" in meta
    # The same LoRA baked into the diffusers folder: every weight equal, bit for bit.
    folder = bake_lora("tiny-sdxl", lora, tmp_path / "baked-folder")
    from_single = load_base_model(str(out), config_dir=tiny_model.tiny_sdxl_dir())
    from_folder = load_base_model(str(folder.path))
    for got, want in [(from_single.unet, from_folder.unet), (from_single.text_encoders[0], from_folder.text_encoders[0]),
                      (from_single.text_encoders[1], from_folder.text_encoders[1])]:
        a, b = got.state_dict(), want.state_dict()
        assert a.keys() == b.keys()
        assert [k for k in b if not torch.equal(a[k], b[k])] == []


def test_sdxl_fused_qkv_deltas_land_in_their_thirds(sdxl_single, tmp_path):
    """A LoRA on k_proj alone changes only the middle third of in_proj_weight."""
    from engine.models.ldm_keys import SDXL_OPENCLIP_PREFIX

    full = load_lora_file(sdxl_single["lora"])
    name = "lora_te2_text_model_encoder_layers_0_self_attn_k_proj"
    only_k = save_lora_file(tmp_path / "k.safetensors", {name: full.modules[name]}, {"ss_base_model_version": "sdxl_base_v1-0"}, "float")
    out = bake_lora(str(sdxl_single["single"]), only_k, tmp_path / "k-baked.safetensors")
    key = SDXL_OPENCLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight"
    before, after = load_file(str(sdxl_single["single"]))[key], load_file(str(out.path))[key]
    third = before.shape[0] // 3
    assert torch.equal(before[:third], after[:third]) and torch.equal(before[2 * third:], after[2 * third:])
    w = full.modules[name]
    rank = w.down.shape[0]
    delta = w.up.double() @ w.down.double() * (w.alpha / rank)  # in float64, rounded once, as bake does
    assert torch.equal(after[third:2 * third], (before[third:2 * third].double() + delta).to(before.dtype))
    assert float((after[third:2 * third].double() - before[third:2 * third].double() - lora_delta(*w).double()).abs().max()) < 1e-6


def test_sd2_single_file_is_refused_clearly(work, tmp_path):
    fake = tmp_path / "sd2.safetensors"
    save_file({
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.zeros(320, 320),
        "cond_stage_model.model.ln_final.weight": torch.zeros(4),
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3072, 1024),
    }, str(fake))
    with pytest.raises(ModelError, match="single-file sd2") as info:
        bake_lora(str(fake), work["A"], tmp_path / "out.safetensors")
    assert "diffusers folder" in str(info.value)
    assert not (tmp_path / "out.safetensors").exists()


# --------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> int:
    """Through ``copylora`` itself once the lead has registered the commands, else a parser of our own."""
    from copylora_tui.cli import main as cli_main

    parser = cli_main.build_parser()
    registered = any(
        isinstance(action, argparse._SubParsersAction) and {"bake", "extract"} <= set(action.choices)
        for action in parser._actions
    )
    if registered:
        return cli_main.main(argv)
    from copylora_tui.cli import bake_commands

    own = cli_main.Parser(prog="copylora")
    own.add_argument("--debug", action="store_true")
    bake_commands.register(own.add_subparsers(dest="command", parser_class=cli_main.Parser))
    args = own.parse_args(argv)
    return cli_main.run_guarded(args.func, args)


def test_cli_bake_and_extract(work, tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    assert _cli(["bake", "--base", str(work["single"]), "--lora", str(work["B"]), "--save_to", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    lora = tmp_path / "x.safetensors"
    code = _cli(["extract", "--model_org", str(work["baked_a"].path), "--model_tuned", str(work["baked_b"].path),
                 "--dim", "8", "--conv_dim", "4", "--save_to", str(lora), "--save_precision", "bf16"])
    assert code == 0 and lora.is_file() and lora.with_name("x.stats.json").is_file()
    assert {w.down.dtype for w in load_lora_file(lora).modules.values()} == {torch.bfloat16}
    # Errors: one line, exit 1 for a failed job, 2 for an input to fix.
    code = _cli(["bake", "--base", "tiny", "--lora", str(tmp_path / "none.safetensors"), "--save_to", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--lora: no such file" in err and "Traceback" not in err  # a missing input: the input to fix
    code = _cli(["extract", "--model_org", "tiny", "--model_tuned", "tiny", "--dim", "0", "--save_to", str(tmp_path / "y.safetensors")])
    assert code == 2 and "--dim" in capsys.readouterr().err


def test_cli_help_lists_kohya_flags(capsys):
    for command, flags in [("bake", ["--base", "--lora", "--ratio", "--save_to", "--save_precision"]),
                           ("extract", ["--model_org", "--model_tuned", "--dim", "--conv_dim", "--clamp_quantile", "--device"])]:
        with pytest.raises(SystemExit) as info:
            _cli([command, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert all(flag in text for flag in flags)


def test_errors_are_copylora_errors():
    assert issubclass(ExtractError, CopyloraError)


def test_builtin_bases_resolve_to_their_folders():
    from engine.merge.bake import _resolve_base
    from engine.models.tiny import tiny_model_dir, tiny_sdxl_dir

    assert _resolve_base("tiny") == ("diffusers", tiny_model_dir())
    assert _resolve_base("tiny-sdxl") == ("diffusers", tiny_sdxl_dir())


def test_a_cut_off_checkpoint_is_named_as_such_before_any_weight_is_read(tmp_path):
    """Shapes and metadata come from the header alone (engine.formats.read_header): a copy cut
    off by a full disk is refused with what is missing, for the bake's inputs and for a base
    model's family detection alike."""
    from safetensors.torch import save_file

    from engine.errors import ModelError
    from engine.merge.bake import _read_header
    from engine.models.loading import _checkpoint_tensors

    whole = tmp_path / "whole.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3)}, str(whole), metadata={"k": "v"})
    assert _read_header(whole) == ({"model.diffusion_model.out.2.weight": (4, 320, 3, 3)}, {"k": "v"})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-1000])
    for read in (_read_header, _checkpoint_tensors):
        with pytest.raises(ModelError, match="cannot read as safetensors: truncated: .* bytes, the header describes"):
            read(cut)


def test_a_bake_that_cannot_fit_on_its_disk_is_refused_before_the_work(work, monkeypatch):
    """A bake writes a checkpoint as large as the base; a full disk failed it at the end, as an
    "internal error: SafetensorError" naming no file. Too little room is refused first now, and
    a disk that fills meanwhile is said with the file and the disk."""
    import shutil

    out = work["root"] / "roomless.safetensors"
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1000))
    with pytest.raises(ValidationError, match=r"save_to: the baked checkpoint takes about \d+\.\d MB, and its disk has 0\.0 MB free"):
        bake_lora(str(work["single"]), work["A"], out)
    assert not out.exists()


def test_a_full_disk_during_a_bake_is_said_with_its_file(work, monkeypatch, capsys):
    import safetensors.torch

    from copylora_tui.cli.main import main

    out = work["root"] / "full.safetensors"

    def full(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert main(["bake", "--base", str(work["single"]), "--lora", str(work["A"]), "--save_to", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {out}: no space left on its disk (" in err and "internal error" not in err, err
    assert not out.exists() and not list(work["root"].glob(".full*"))  # nothing half-written left
