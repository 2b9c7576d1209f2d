"""The exact low-rank SVD merge: exactness against dense fp64 SVD, files, stats, bad inputs, CLI."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

torch = pytest.importorskip("torch")

from copylora_tui.cli.main import EXIT_USAGE, main  # noqa: E402
from engine.errors import LoRAFileError  # noqa: E402
from engine.lora.files import load_lora_file, save_lora_file  # noqa: E402
from engine.lora.weights import LoRAWeights
from engine.merge.svd import MergeError, merge_loras, save_merge  # noqa: E402
from tests.helpers import Boom, write_png  # noqa: E402


def factors(g, out_f, in_f, rank, kernel=1, spread=1.0):
    down = torch.randn(rank, in_f, kernel, kernel, generator=g) if kernel > 1 else torch.randn(rank, in_f, generator=g)
    up = torch.randn(out_f, rank, 1, 1, generator=g) if kernel > 1 else torch.randn(out_f, rank, generator=g)
    return down * spread, up * 0.1


def dense(w: LoRAWeights):
    """The module's effective delta as an (out, in·k·k) fp64 matrix."""
    return (w.alpha / w.rank) * w.up.double().reshape(w.up.shape[0], -1) @ w.down.double().reshape(w.down.shape[0], -1)


@pytest.fixture
def pair(tmp_path):
    """B and A with mixed ranks and alphas, a 3x3 conv, a 1x1 conv, and modules in one input only."""
    g = torch.Generator().manual_seed(0)
    b = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (*factors(g, 40, 48, 8), 1.0),
        "lora_unet_down_blocks_0_attentions_0_proj_in": tuple(
            t.reshape(*t.shape, 1, 1) for t in factors(g, 32, 32, 4)
        ) + (2.0,),
        "lora_unet_down_blocks_0_resnets_0_conv1": (*factors(g, 32, 16, 4, kernel=3), 0.5),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2": (*factors(g, 24, 96, 6), 3.0),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (*factors(g, 32, 32, 8), 8.0),  # B only
    }
    a = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (*factors(g, 40, 48, 4), 4.0),
        "lora_unet_down_blocks_0_attentions_0_proj_in": tuple(
            t.reshape(*t.shape, 1, 1) for t in factors(g, 32, 32, 8)
        ) + (1.0,),
        "lora_unet_down_blocks_0_resnets_0_conv1": (*factors(g, 32, 16, 2, kernel=3), 2.0),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2": (*factors(g, 24, 96, 8), 1.0),
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (*factors(g, 48, 32, 4), 1.0),  # A only
    }
    # The writer folds scales so that each file has one alpha; effective deltas are unchanged.
    pb = save_lora_file(tmp_path / "B.safetensors", b, {"ss_base_model_version": "sd_v1"}, "float")
    pa = save_lora_file(tmp_path / "A.safetensors", a, {"ss_base_model_version": "sd_v1"}, "float")
    return pb, pa


def exact_difference(pb, pa):
    b, a = load_lora_file(pb).modules, load_lora_file(pa).modules
    out = {}
    for name in {**b, **a}:
        total = 0
        if name in b:
            total = total + dense(b[name])
        if name in a:
            total = total - dense(a[name])
        out[name] = total
    return out


def best_rank_k(matrix, k):
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k]


@pytest.mark.parametrize("new_rank, conv_rank", [(3, 2), (5, 3), (16, 16)])
def test_merge_equals_best_rank_k_of_dense(pair, tmp_path, new_rank, conv_rank):
    pb, pa = pair
    result = merge_loras([pb, pa], [1.0, -1.0], new_rank=new_rank, new_conv_rank=conv_rank)
    out, _ = save_merge(result, tmp_path / "m.safetensors", "float")
    merged = load_lora_file(out).modules
    assert len({w.alpha for w in merged.values()}) == 1  # one alpha for the whole file
    for name, delta in exact_difference(pb, pa).items():
        kernel = merged[name].down.shape[-1] if merged[name].down.dim() == 4 else 1
        k = conv_rank if kernel > 1 else new_rank
        expected = best_rank_k(delta, k)
        got = dense(merged[name])
        error = float((got - expected).norm() / expected.norm())
        assert error <= 1e-5, (name, error)
        if k >= 16:  # new rank >= total input rank: the full B - A, not an approximation
            assert float((got - delta).norm() / delta.norm()) <= 1e-5
    # 1x1 convs keep their 4-D layout; 3x3 convs are LoCon (k x k down, 1 x 1 up).
    assert merged["lora_unet_down_blocks_0_attentions_0_proj_in"].down.dim() == 4
    conv = merged["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert conv.down.shape[-2:] == (3, 3) and conv.up.shape[-2:] == (1, 1)


def test_fp16_and_bf16_saving_error_is_small(pair, tmp_path):
    pb, pa = pair
    result = merge_loras([pb, pa], [1.0, -1.0], new_rank=16)
    exact = exact_difference(pb, pa)
    errors = {}
    for precision in ("fp16", "bf16"):
        out, _ = save_merge(result, tmp_path / f"m_{precision}.safetensors", precision)
        merged = load_lora_file(out).modules
        num = sum(float((dense(merged[n]) - d).norm() ** 2) for n, d in exact.items())
        den = sum(float(d.norm() ** 2) for d in exact.values())
        errors[precision] = (num / den) ** 0.5
    print(f"relative error after saving: {errors}")
    assert errors["fp16"] < 1e-3 and errors["bf16"] < 1e-2


def test_stats_describe_the_merge(pair, tmp_path):
    pb, pa = pair
    result = merge_loras([pb, pa], [1.0, -1.0], new_rank=3, new_conv_rank=2)
    _, stats_path = save_merge(result, tmp_path / "m.safetensors", "fp16")
    document = json.loads(stats_path.read_text())
    rows = {m["name"]: m for m in document["modules"]}
    b, a = load_lora_file(pb).modules, load_lora_file(pa).modules
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2"
    row = rows[name]
    db, da = dense(b[name]), dense(a[name])
    s = torch.linalg.svd(db - da).S
    assert row["kind"] == "linear" and row["block"] == "mid" and row["shape"] == [24, 96]
    assert row["input_ranks"] == [6, 8] and row["kept_rank"] == 3
    assert row["energy_kept"] == pytest.approx(float((s[:3] ** 2).sum() / (s**2).sum()), rel=1e-5)
    assert row["rel_error"] == pytest.approx(float((s[3:] ** 2).sum().sqrt() / (s**2).sum().sqrt()), rel=1e-4)
    assert row["input_norms"] == pytest.approx([float(db.norm()), float(da.norm())], rel=1e-5)
    cos = float((db * da).sum() / (db.norm() * da.norm()))
    assert row["cos_inputs"] == pytest.approx(cos, abs=1e-6)
    only_b = rows["lora_te_text_model_encoder_layers_0_self_attn_q_proj"]
    assert only_b["input_ranks"] == [8, 0] and only_b["cos_inputs"] is None and only_b["block"] == "te"
    assert rows["lora_unet_down_blocks_0_resnets_0_conv1"]["kind"] == "conv3x3"
    assert {blk["block"] for blk in document["blocks"]} == {"te", "in0", "mid", "out1"}
    meta = load_lora_file(tmp_path / "m.safetensors").metadata
    provenance = json.loads(meta["copylora_merge"])
    assert [i["file"] for i in provenance["inputs"]] == ["B.safetensors", "A.safetensors"]
    assert [i["ratio"] for i in provenance["inputs"]] == [1.0, -1.0] and len(provenance["inputs"][0]["sha256"]) == 64
    assert meta["ss_network_dim"] == "3" and meta["ss_base_model_version"] == "sd_v1"
    assert "B.safetensors" in meta["modelspec.merged_from"]


def test_a_lora_minus_itself_is_zero_and_said_not_noise(pair, tmp_path, capsys):
    """+1·B −1·B is zero in exact arithmetic; in float it came out as rounding noise of ~1e-7 of
    the inputs, written as a rank-k LoRA with "energy kept 0.97" of that noise. Now such a
    module is zeros, its stats say nothing was lost, and the user is told why."""
    pb, pa = pair
    result = merge_loras([pb, pb], [1.0, -1.0], new_rank=4)
    assert all(float(w.up.abs().max()) == 0.0 for w in result.modules.values())
    assert all(s.energy_kept == 1.0 and s.result_norm == 0.0 for s in result.stats)
    assert any("cancel in every module" in note for note in result.notes)
    assert main(["merge", "--models", str(pb), str(pb), "--ratios", "1", "-1", "--save_to", str(tmp_path / "zero.safetensors")]) == 0
    assert "note: the inputs cancel in every module" in capsys.readouterr().err
    # A real difference, however small against the inputs (1e-3), is merged, not taken for rounding.
    lora = load_lora_file(pb)
    changed = {name: (w.down, w.up * (1.001 if i == 0 else 1.0), w.alpha) for i, (name, w) in enumerate(lora.modules.items())}
    near = save_lora_file(tmp_path / "near.safetensors", changed, {"ss_base_model_version": "sd_v1"}, "float")
    result = merge_loras([near, pb], [1.0, -1.0], new_rank=4)
    first, *rest = result.stats
    # B's first module scaled by 1.001: its change is 1e-3 of it (the part of it rank 4 keeps)
    assert first.result_norm == pytest.approx(1e-3 * first.input_norms[1] * first.energy_kept ** 0.5, rel=1e-2)
    assert all(s.result_norm == 0.0 for s in rest)
    assert result.notes == [f"{len(rest)} of {len(result.stats)} modules cancel (zero up to rounding), written as zeros: "
                            + ", ".join(s.name for s in rest[:3]) + (", …" if len(rest) > 3 else "")]


def test_kohya_clamp_is_optional_and_changes_the_result(pair):
    pb, pa = pair
    exact = merge_loras([pb, pa], [1.0, -1.0], new_rank=16)
    clamped = merge_loras([pb, pa], [1.0, -1.0], new_rank=16, clamp_quantile=0.5)
    diffs = [float((dense(clamped.modules[n]) - dense(exact.modules[n])).norm() / dense(exact.modules[n]).norm()) for n in exact.modules]
    assert max(diffs) > 0.01


def test_shape_conflict_is_refused_naming_modules(pair, tmp_path):
    pb, _ = pair
    g = torch.Generator().manual_seed(1)
    other = save_lora_file(
        tmp_path / "xl.safetensors",
        {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (*factors(g, 64, 64, 4), 1.0)},
        {}, "float",
    )
    with pytest.raises(MergeError, match="attn1_to_q.*B.safetensors: 40x48x1.*xl.safetensors: 64x64x1"):
        merge_loras([pb, other], [1.0, -1.0], new_rank=4)
    xl = save_lora_file(tmp_path / "sdxl.safetensors", {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (*factors(g, 32, 32, 4), 1.0)},
                        {"ss_base_model_version": "sdxl_base_v1-0"}, "float")
    with pytest.raises(MergeError, match="different model families"):
        merge_loras([pb, xl], [1.0, -1.0], new_rank=4)


def test_truncated_input_is_one_clear_error_and_nothing_written(pair, tmp_path):
    pb, pa = pair
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(pa.read_bytes()[:300])
    with pytest.raises(LoRAFileError):
        merge_loras([pb, broken], [1.0, -1.0], new_rank=4)
    out = tmp_path / "out.safetensors"
    code = main(["merge", "--save_to", str(out), "--models", str(pb), str(broken), "--ratios", "1", "-1", "--new_rank", "4"])
    assert code == EXIT_USAGE and not out.exists()  # a damaged input is the input to fix (found before the merge)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_kohya_command_line_works_unchanged(pair, tmp_path, capsys):
    pb, pa = pair
    out = tmp_path / "out.safetensors"
    # The seed article's command, with only the program name changed (cpu instead of cuda here).
    code = main(["merge", "--save_to", str(out), "--models", str(pb), str(pa), "--ratios", "1", "-1",
                 "--new_rank", "16", "--device", "cpu", "--save_precision", "fp16"])
    assert code == 0
    assert out.is_file() and out.with_name("out.stats.json").is_file()
    assert load_lora_file(out).modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"].down.dtype == torch.float16
    meta = load_lora_file(out).metadata  # named as its file (every merge was titled "copylora merge", ss_output_name "None")
    assert meta["modelspec.title"] == "out" and meta["ss_output_name"] == "out", meta
    capsys.readouterr()
    assert main(["stats", str(out), "--sort", "energy", "--block", "in", "--top", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(r["unet_block"].startswith("in") and r["block"].startswith("IN") for r in rows)
    assert rows[0]["energy_kept"] <= rows[1]["energy_kept"]
    assert main(["stats", str(out)]) == 0
    assert "per block" in capsys.readouterr().out
    assert main(["resize", str(pb), "--new_rank", "2"]) == 0
    assert (tmp_path / "B_r2.safetensors").is_file()
    assert main(["merge", "--save_to", str(out), "--models", str(pb), "--ratios", "1", "-1"]) == EXIT_USAGE
    assert main(["stats", str(pb)]) == EXIT_USAGE  # a LoRA that was not made by a merge has no stats


def test_diffusers_reads_the_merged_file(tmp_path):
    pytest.importorskip("peft")
    from engine.lora.network import LoRANetwork, apply_lora_file
    from engine.models.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    paths = []
    for seed, name in ((1, "B"), (2, "A")):
        network = LoRANetwork(pipe.unet, [pipe.text_encoder], rank=4, alpha=1.0, conv_rank=2, conv_alpha=1.0)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in network.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        paths.append(network.save(tmp_path / f"{name}.safetensors", dtype="float"))
    merged, _ = save_merge(merge_loras(paths, [1.0, -1.0], new_rank=6, new_conv_rank=3), tmp_path / "m.safetensors", "float")

    class Model:  # apply_lora_file needs the parts of a BaseModel
        unet, text_encoders, family = pipe.unet, [pipe.text_encoder], "sd1"

    g = torch.Generator().manual_seed(0)
    latents, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500])
    ids = pipe.tokenizer(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        net = apply_lora_file(merged, Model())
        our_hidden = pipe.text_encoder(ids)[0]
        ours = pipe.unet(latents, t, our_hidden).sample
        net.remove()
    from tests.helpers_models import diffusers_load_problems

    assert not diffusers_load_problems(pipe, merged)
    with torch.no_grad():
        their_hidden = pipe.text_encoder(ids)[0]
        theirs = pipe.unet(latents, t, our_hidden).sample
    print(f"merged file, diffusers vs ours: te {(their_hidden - our_hidden).abs().max():.2e}, unet {(theirs - ours).abs().max():.2e}")
    assert (their_hidden - our_hidden).abs().max() < 1e-4 and (theirs - ours).abs().max() < 1e-4


def test_merge_project_shorthand_uses_plan_and_merge_table(pair, tmp_path, capsys):
    import shutil

    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from tests.helpers import copy_example

    root = copy_example(tmp_path)
    plan = make_plan(load_project(root))
    pb, pa = pair
    plan.side("b").lora_path.parent.mkdir(parents=True)
    shutil.copy(pb, plan.side("b").lora_path)
    shutil.copy(pa, plan.side("a").lora_path)
    assert main(["merge", "--project", str(root)]) == 0
    merged = load_lora_file(plan.merged_path)
    # [merge].new_rank of the example is 16, but these inputs' differences hold at most rank 14
    # (8 + 6 in the mid-block module): the file says what it holds, its provenance what was asked.
    assert merged.metadata["ss_network_dim"] == "14"
    provenance = json.loads(merged.metadata["copylora_merge"])
    assert provenance["new_rank"] == 16 and provenance["written_rank"] == 14
    assert [i["file"] for i in provenance["inputs"]] == ["example-monochrome_B.safetensors", "example-monochrome_A.safetensors"]
    assert next(iter(merged.modules.values())).down.dtype == torch.float16  # [merge].save_precision


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def loras(tmp_path):
    g = torch.Generator().manual_seed(1)
    mods = {
        "lora_unet_down_blocks_0_attentions_0_proj_in": (torch.randn(6, 32, generator=g), torch.randn(32, 6, generator=g), 6.0),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (torch.randn(6, 32, generator=g), torch.randn(32, 6, generator=g), 6.0),
    }
    from engine.lora.files import save_lora_file

    b = save_lora_file(tmp_path / "B.safetensors", mods, {"ss_base_model_version": "sd_v1"}, "float")
    fewer = dict(list(mods.items())[:1])
    a = save_lora_file(tmp_path / "A.safetensors", fewer, {"ss_base_model_version": "sd_v1"}, "float")
    return b, a



def test_merge_new_rank_zero_is_an_error(loras, tmp_path, capsys):
    b, a = loras
    for flag in ("--new_rank", "--new_conv_rank"):
        code = main(["merge", "--save_to", str(tmp_path / "m.safetensors"), "--models", str(b), str(a), "--ratios", "1", "-1", flag, "0"])
        assert code == EXIT_USAGE and f"{flag}: must be greater than 0, got 0" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()



def test_merge_caps_the_rank_says_so_once_and_records_it(loras, tmp_path, capsys):
    from engine.lora.files import load_lora_file

    b, a = loras
    out = tmp_path / "m.safetensors"
    assert main(["merge", "--save_to", str(out), "--models", str(b), str(a), "--ratios", "1", "-1", "--new_rank", "100000"]) == 0
    err = capsys.readouterr().err
    assert err.count("new_rank 100000 is more than the inputs hold: written at rank 12") == 1
    # the module sets differ: said, with the module named
    assert "A.safetensors lacks 1 module(s) that another input has (lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q)" in err
    merged = load_lora_file(out)
    assert merged.metadata["ss_network_dim"] == "12" and merged.metadata["ss_network_alpha"] == "12.0"
    assert max(w.rank for w in merged.modules.values()) == 12



@pytest.mark.parametrize("name, message", [
    ("picture.png", "not a LoRA file (a PNG image)"),
    ("picture.safetensors", "not a safetensors file (a PNG image)"),
    ("evil.pt", "refused: loading it would unpickle arbitrary Python objects (posix.system)"),
])
def test_non_lora_inputs_get_our_own_one_line_error(loras, tmp_path, capsys, name, message):
    b, _a = loras
    bad = tmp_path / name
    if name.endswith(".pt"):
        with open(bad, "wb") as handle:
            pickle.dump(Boom(str(tmp_path / "pwned")), handle, protocol=2)
    else:
        shutil.copy(write_png(tmp_path / "any.png"), bad)
    code = main(["merge", "--save_to", str(tmp_path / "m.safetensors"), "--models", str(b), str(bad), "--ratios", "1", "-1"])
    err = capsys.readouterr().err
    assert code != 0 and message in err, err
    assert "weights_only" not in err.replace("weights_only=True", "") and "\x1b" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists()



def test_plain_text_strips_terminal_escapes():
    from engine.errors import first_line, plain_text

    assert plain_text("a \x1b[1mbold\x1b[0m word") == "a bold word"
    assert first_line(RuntimeError("\n \x1b[31mred\x1b[0m line\nsecond")) == "red line"
