"""Merging with LoRA Block Weight vectors (sd-scripts' --lbws): each input's delta scaled per block
before the merge, recorded in the file and the stats; the CLI flag, [merge] lbws, and their errors."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from copylora_tui.cli.main import EXIT_USAGE, main  # noqa: E402
from engine.errors import ValidationError  # noqa: E402
from engine.lbw_vectors import BLOCK_LISTS  # noqa: E402
from engine.lora.files import load_lora_file, save_lora_file  # noqa: E402
from engine.merge.svd import MergeError, merge_loras, save_merge  # noqa: E402
from tests.test_merge import dense, factors  # noqa: E402

# The modules' blocks: te q_proj BASE, down_blocks_0 (attn, proj_in, resnet) IN01, mid_block M00,
# up_blocks_1_attentions_0 OUT03.
BLOCKS = {"lora_te_": "BASE", "lora_unet_down_blocks_0_": "IN01", "lora_unet_mid_block_": "M00", "lora_unet_up_blocks_1_": "OUT03"}


# (out, in, kernel) of the modules both inputs have; B alone has a text-encoder module, A alone one of OUT03.
SHARED = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (40, 48, 1),
    "lora_unet_down_blocks_0_attentions_0_proj_in": (32, 32, 0),  # 0: a 1x1 conv
    "lora_unet_down_blocks_0_resnets_0_conv1": (32, 16, 3),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2": (24, 96, 1),
}
ONLY_B = {"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (32, 32, 1)}
ONLY_A = {"lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (48, 32, 1)}


@pytest.fixture
def loras(tmp_path):
    """B and A LoRA files (SD1 names) with modules in BASE, IN01 (linear, 1x1 and 3x3 conv), M00 and OUT03."""
    g = torch.Generator().manual_seed(0)

    def lora(shapes: dict, alpha: float) -> dict:
        out = {}
        for name, (out_f, in_f, kernel) in shapes.items():
            down, up = factors(g, out_f, in_f, 4, kernel=max(kernel, 1))
            if kernel == 0:
                down, up = down.reshape(*down.shape, 1, 1), up.reshape(*up.shape, 1, 1)
            out[name] = (down, up, alpha)
        return out

    meta = {"ss_base_model_version": "sd_v1"}
    return (save_lora_file(tmp_path / "B.safetensors", lora({**SHARED, **ONLY_B}, 1.0), meta, "float"),
            save_lora_file(tmp_path / "A.safetensors", lora({**SHARED, **ONLY_A}, 2.0), meta, "float"))


def vector(weights: dict[str, float], length: int = 17) -> list[float]:
    return [weights.get(block, 1.0) for block in BLOCK_LISTS[length]]


def block_of(name: str) -> str:
    return next(block for prefix, block in BLOCKS.items() if name.startswith(prefix))


def test_each_input_is_scaled_per_block_before_the_merge(loras, tmp_path):
    pb, pa = loras
    wb = {"BASE": 0.5, "IN01": 2.0, "M00": 0.0, "OUT03": 3.0}
    wa = {"BASE": -1.0, "IN01": 0.25, "M00": 0.0}  # OUT03 left at 1
    lbws = [vector(wb), json.dumps(vector(wa))]  # a list, and a JSON string as sd-scripts takes it
    result = merge_loras([pb, pa], [1.0, -1.0], new_rank=32, new_conv_rank=32, lbws=lbws)
    b, a = load_lora_file(pb).modules, load_lora_file(pa).modules
    for name, merged in result.modules.items():
        block = block_of(name)
        want = torch.zeros_like(dense(b.get(name) or a[name]))
        if name in b:
            want += wb.get(block, 1.0) * dense(b[name])
        if name in a:
            want -= wa.get(block, 1.0) * dense(a[name])
        got = dense(merged)
        assert (got - want).norm() <= 1e-5 * max(float(want.norm()), 1e-12) + 1e-9, name
    mid = next(s for s in result.stats if s.name.startswith("lora_unet_mid_block_"))
    assert mid.energy_kept == 1.0 and mid.result_norm == 0.0 and mid.input_norms[0] > 0  # weighted to zero; inputs' own norms kept
    assert [s.lbw_block for s in result.stats] == [block_of(s.name) for s in result.stats]

    path, stats_path = save_merge(result, tmp_path / "m.safetensors", "float")
    provenance = json.loads(load_lora_file(path).metadata["copylora_merge"])
    assert [i["lbw"] for i in provenance["inputs"]] == [vector(wb), vector(wa)]
    document = json.loads(stats_path.read_text())
    assert [i["lbw"] for i in document["inputs"]] == [vector(wb), vector(wa)]
    assert {m["name"]: m["lbw_block"] for m in document["modules"]} == {n: block_of(n) for n in result.modules}
    assert [(r["block"], r["modules"]) for r in document["lbw_blocks"]] == [("BASE", 1), ("IN01", 3), ("M00", 1), ("OUT03", 1)]
    assert {r["block"] for r in document["blocks"]} == {"te", "in0", "mid", "out1"}  # the U-Net view, as before


def test_all_ones_is_no_weighting(loras):
    pb, pa = loras
    plain = merge_loras([pb, pa], [1.0, -1.0], new_rank=8)
    ones = merge_loras([pb, pa], [1.0, -1.0], new_rank=8, lbws=[[1] * 26, None])
    for name, w in plain.modules.items():
        assert torch.equal(w.up, ones.modules[name].up) and torch.equal(w.down, ones.modules[name].down)
    assert [i["lbw"] for i in plain.inputs] == [None, None] and ones.inputs[1]["lbw"] is None


@pytest.mark.parametrize("lbws, message", [
    ([[1] * 17], "2 model(s) but 1 block-weight vector(s) (lbws): give one per model"),
    ([[1] * 20, [1] * 20], "lbws: 20 weights are SDXL blocks; an SD1/SD2 LoRA takes 17 or 26"),
    ([[1] * 17, [1] * 26], "lbws: vectors of 17 and 26 weights: give them all the same length"),
    ([[1] * 17, "[1, 2"], "lbws[1]: not a JSON list of numbers"),
])
def test_bad_lbws_are_one_line_merge_errors(loras, lbws, message):
    with pytest.raises(MergeError) as caught:
        merge_loras(list(loras), [1.0, -1.0], new_rank=4, lbws=lbws)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_cli_lbws_and_stats_views(loras, tmp_path, capsys):
    pb, pa = loras
    out = tmp_path / "out.safetensors"
    base = ["merge", "--save_to", str(out), "--models", str(pb), str(pa), "--ratios", "1", "-1", "--new_rank", "16"]
    zero_in = json.dumps(vector({"IN01": 0.0}))
    assert main([*base, "--lbws", zero_in]) == EXIT_USAGE
    assert "--lbws: 1 block-weight vector(s) for 2 model(s): give one per model" in capsys.readouterr().err
    assert main([*base, "--lbws", zero_in, "[1, 0, NaN]"]) == EXIT_USAGE
    assert "--lbws[1]: 3 weights; a block-weight vector has 12 or 20 (SDXL), or 17 or 26 (SD1/SD2)" in capsys.readouterr().err
    # found by the merge itself (the LoRAs' family), still an input to fix like the two above
    assert main([*base, "--lbws", "[" + ",".join(["1"] * 12) + "]", "[" + ",".join(["0"] * 12) + "]"]) == EXIT_USAGE
    assert "lbws: 12 weights are SDXL blocks; an SD1/SD2 LoRA takes 17 or 26" in capsys.readouterr().err
    assert not out.exists()

    assert main([*base, "--lbws", zero_in, zero_in]) == 0  # IN01 of both zeroed: those modules merge to zero
    capsys.readouterr()
    assert main(["stats", str(out), "--block", "IN01", "--json", "--top", "0"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["lbw_block"] == "IN01" and r["result_norm"] == 0.0 for r in rows)
    assert main(["stats", str(out), "--top", "0"]) == 0
    text = capsys.readouterr().out
    assert "per block (LBW)" in text and "IN01" in text and "OUT03" in text and "Δ1 block weights (17): 1,0,1,1" in text
    assert main(["stats", str(out), "--sort", "block", "--json", "--top", "0"]) == 0
    assert [r["lbw_block"] for r in json.loads(capsys.readouterr().out)] == ["BASE", "IN01", "IN01", "IN01", "M00", "OUT03"]
    assert main(["stats", str(out), "--blocks", "unet", "--block", "in0", "--json"]) == 0
    assert {r["block"] for r in json.loads(capsys.readouterr().out)} == {"in0"}
    assert main(["stats", str(out), "--blocks", "unet"]) == 0
    text = capsys.readouterr().out
    assert "per block (U-Net)" in text and "out1" in text


def project_with_loras(tmp_path, pair, lbws_line: str):
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from tests.helpers import copy_example

    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    text = toml.read_text()
    if "\nlbws = []\n" in text:  # the example writes the key with its default
        toml.write_text(text.replace("\nlbws = []\n", f"\n{lbws_line}\n", 1))
    else:
        toml.write_text(text.replace("[merge]\n", f"[merge]\n{lbws_line}\n", 1))
    plan = make_plan(load_project(root))
    plan.side("b").lora_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(pair[0], plan.side("b").lora_path)
    shutil.copy(pair[1], plan.side("a").lora_path)
    return root, plan


@pytest.mark.parametrize("written", ["[{}]", "{}"])  # [[…]], or one vector written flat: refused as "at most 2 vectors, got 17"
def test_project_lbws_one_vector_weights_both(loras, tmp_path, written):
    root, plan = project_with_loras(tmp_path, loras, "lbws = " + written.format(vector({"M00": 0.5})))
    assert plan.project.merge.lbws == [vector({"M00": 0.5})]
    assert main(["merge", "--project", str(root)]) == 0
    provenance = json.loads(load_lora_file(plan.merged_path).metadata["copylora_merge"])
    assert [i["lbw"] for i in provenance["inputs"]] == [vector({"M00": 0.5})] * 2


def test_all_ones_lbws_leaves_the_result_current(loras, tmp_path):
    """A vector of ones scales nothing: the merge made without lbws is the one it would make, so
    setting one after the merge must not call the result stale (and a real weighting must)."""
    from engine.project.folder import load_project
    from engine.project.outputs import CURRENT, STALE, Result
    from engine.project.plan import make_plan

    root, plan = project_with_loras(tmp_path, loras, "")
    from engine.lora.files import load_lora_file, save_lora_file
    from engine.project.provenance import training_fingerprint

    for side in ("a", "b"):  # the project's own training, as far as its status can tell: what is merged of it is current
        path = plan.side(side).lora_path
        lora = load_lora_file(path)
        save_lora_file(path, lora.modules, {**lora.metadata, "copylora_fingerprint": training_fingerprint(plan, side),
                                            "copylora_steps": str(plan.side(side).total_steps)}, "float")
    assert main(["merge", "--project", str(root)]) == 0
    assert Result(plan).status().state == CURRENT
    toml = root / "copylora.toml"
    base = toml.read_text()
    for line, state in ((f"lbws = [{[1] * 17}]", CURRENT), (f"lbws = [{[1.0] * 17}, {[1] * 17}]", CURRENT),
                        (f"lbws = [{vector({'M00': 0.5})}]", STALE)):
        toml.write_text(base.replace("\nlbws = []\n", f"\n{line}\n", 1) if "\nlbws = []\n" in base
                        else base.replace("[merge]\n", f"[merge]\n{line}\n", 1))
        status = Result(make_plan(load_project(root))).status()
        assert status.state == state, (line, status)


@pytest.mark.parametrize("line, problem", [
    ("lbws = [[1, 1, 1]]", "merge.lbws[0]: 3 weights; a block-weight vector has 12 or 20 (SDXL), or 17 or 26 (SD1/SD2)"),
    (f"lbws = [{[1] * 20}]", "merge.lbws: 20 weights are SDXL blocks; an SD1/SD2 LoRA takes 17 or 26"),  # tiny is an SD1 model
    (f"lbws = [{[1] * 17}, {[1] * 17}, {[1] * 17}]", "merge.lbws: at most 2 vectors ([B, A], or one for both), got 3"),
    ('lbws = [[1, "x", 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]', "merge.lbws[0]: weight 2 (IN01) is 'x', not a number"),
    ("lbws = [1, 0]", "merge.lbws[0]: 2 weights; a block-weight vector has 12 or 20 (SDXL), or 17 or 26 (SD1/SD2)"),
    ('lbws = [1, "x"]', "merge.lbws[0]: must be a list of numbers like [1,0,1,...], got 1"),
    ('lbws = "[1, 0]"', "merge.lbws: must be a list"),
])
def test_project_lbws_problems(loras, tmp_path, line, problem):
    with pytest.raises(ValidationError) as caught:
        project_with_loras(tmp_path, loras, line)
    assert any(problem in str(p) for p in caught.value.problems), caught.value


def test_project_accepts_sd_scripts_strings(loras, tmp_path):
    _, plan = project_with_loras(tmp_path, loras, 'lbws = ["[' + ",".join(["1"] * 26) + ']", "[' + ",".join(["0"] * 26) + ']"]')
    assert len(plan.project.merge.lbws) == 2


def test_sdxl_names_take_sdxl_vectors(tmp_path):
    """SGM names (input_blocks_N → INnn, output_blocks_N → OUTnn), te1/te2 in BASE; a 12-vector leaves IN01–IN03 at 1."""
    g = torch.Generator().manual_seed(1)
    shapes = {"lora_te1_text_model_encoder_layers_0_mlp_fc1": ("BASE", 32, 16), "lora_te2_text_model_encoder_layers_0_mlp_fc1": ("BASE", 32, 16),
              "lora_unet_input_blocks_1_0_emb_layers_1": ("IN01", 16, 24), "lora_unet_input_blocks_4_1_proj_in": ("IN04", 24, 24),
              "lora_unet_middle_block_1_proj_out": ("M00", 32, 32), "lora_unet_output_blocks_2_1_proj_in": ("OUT02", 24, 24)}
    modules = {name: (*factors(g, out_f, in_f, 4), 1.0) for name, (_, out_f, in_f) in shapes.items()}
    path = save_lora_file(tmp_path / "x.safetensors", modules, {"ss_base_model_version": "sdxl_base_v1-0"}, "float")
    weights = {"BASE": 2.0, "IN04": 3.0, "M00": 4.0, "OUT02": 5.0}
    result = merge_loras([path], [1.0], new_rank=8, lbws=[vector(weights, 12)])
    source = load_lora_file(path).modules
    for name, (block, _, _) in shapes.items():
        want = weights.get(block, 1.0) * dense(source[name])
        assert (dense(result.modules[name]) - want).norm() <= 1e-5 * want.norm(), name
    assert {s.name: s.lbw_block for s in result.stats} == {name: block for name, (block, _, _) in shapes.items()}
    with pytest.raises(MergeError, match="26 weights are SD1/SD2 blocks; an SDXL LoRA takes 12 or 20"):
        merge_loras([path], [1.0], new_rank=8, lbws=[[1] * 26])


def test_the_merge_job_removes_what_a_killed_merge_left(loras, tmp_path):
    """A merge killed midway left `.NAME.safetensors.xxxxxxxx.tmp` in the user's output folder for
    good. The next merge job removes its own result's, once old enough to be no live writer's."""
    import os

    from engine.jobs.queue import Queue
    from engine.jobs.runner import run_merge

    root, plan = project_with_loras(tmp_path, loras, "")
    merged = plan.merged_path
    old, young = merged.parent / f".{merged.name}.rqbgua01.tmp", merged.parent / f".{merged.name}.abcdefgh.tmp"
    for path in (old, young):
        path.write_bytes(b"partial")
    os.utime(old, (old.stat().st_atime - 3600, old.stat().st_mtime - 3600))
    queue = Queue(tmp_path / "state")
    job = queue.enqueue("merge", str(root), label="merge")
    queue.claim(None)
    run_merge(queue, queue.get(job.id), {"asked": False})
    assert merged.is_file() and not old.exists() and young.exists()
    queue.close()
