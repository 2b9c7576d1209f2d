"""Smoke test of the merge benchmark on a few full-size SD1.5 modules: its reference library
(bench/merge_reference.py: module sets, pair, error measure, both methods) in-process, and the
harness (bench/merge_bench.py) end to end, in seconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    """The reference library (what the methods and the error measure are)."""
    yield load("merge_reference")
    sys.modules.pop("merge_reference", None)


@pytest.fixture(scope="module")
def harness(bench):
    """The timing harness (imports the library beside it)."""
    yield load("merge_bench")
    sys.modules.pop("merge_bench", None)


@pytest.fixture(scope="module")
def sd15_conv_shapes(bench):
    return bench.module_shapes("sd15", conv=True)


@pytest.fixture(scope="module")
def pair(bench, sd15_conv_shapes, tmp_path_factory):
    from engine.lora.files import load_lora_file

    shapes = bench.select_modules(sd15_conv_shapes, limit=6)
    a_path, b_path = bench.write_pair(shapes, tmp_path_factory.mktemp("pair"), "sd15", seed=1)
    a, b = load_lora_file(a_path).modules, load_lora_file(b_path).modules
    return shapes, (a_path, b_path), [(b, 1.0), (a, -1.0)]


def test_full_size_module_sets(bench, sd15_conv_shapes):
    assert len(sd15_conv_shapes) == 350
    assert len(bench.module_shapes("sd15", conv=False)) == 264
    by_name = {s.name: s for s in sd15_conv_shapes}
    conv = by_name["lora_unet_up_blocks_1_resnets_1_conv1"]
    assert (conv.out, conv.inp, conv.kernel, conv.rank) == (1280, 2560, 3, 8)
    assert not by_name["lora_te_text_model_encoder_layers_0_mlp_fc1"].conv


def test_subset_has_every_kind(pair):
    shapes, _, _ = pair
    assert len(shapes) == 6
    assert {s.kind for s in shapes} == {"linear", "conv1x1", "conv3x3"}


def test_pair_is_trained_like(pair):
    shapes, _, inputs = pair
    (b, _), (a, _) = inputs
    for s in shapes:
        assert a[s.name].down.dtype.is_floating_point and a[s.name].up.abs().max() > 0
    # copy-machine pair: B shares most of A
    from engine.merge.low_rank import LowRankTerm, frobenius_norm, inner

    def term(w):
        return LowRankTerm(w.alpha / w.rank, w.up.reshape(w.up.shape[0], -1), w.down.reshape(w.rank, -1))

    name = shapes[0].name
    ta, tb = term(a[name]), term(b[name])
    cos = inner([ta], [tb]) / (frobenius_norm([ta]) * frobenius_norm([tb]))
    assert 0.6 < cos < 0.95


def test_low_rank_error_equals_dense_oracle(bench, pair):
    _, (a_path, b_path), inputs = pair
    result = bench.merge_ours([b_path, a_path], [1.0, -1.0], new_rank=4, new_conv_rank=4)  # truncated: a real error
    low_rank = bench.rel_error(result.modules, inputs)
    assert 0.05 < low_rank < 1
    assert low_rank == pytest.approx(bench.dense_rel_error(result.modules, inputs), rel=1e-9)


def test_ours_exact_dense_agrees_clamp_does_not(bench, pair):
    _, (a_path, b_path), inputs = pair
    paths, ratios = [b_path, a_path], [1.0, -1.0]
    ours = bench.merge_ours(paths, ratios, new_rank=16, new_conv_rank=16).modules
    ours_error = bench.rel_error(ours, inputs)
    assert ours_error < 1e-5

    timings: dict = {}
    plain = bench.merge_dense(paths, ratios, new_rank=16, new_conv_rank=16, clamp_quantile=None, timings=timings)
    assert set(timings) == {"load", "dense", "svd"}
    assert bench.rel_error(plain, inputs) < 1e-5
    assert bench.rel_error(plain, [(ours, 1.0)]) < 1e-5  # the same LoRA (up to fp32 rounding)

    kohya = bench.merge_dense(paths, ratios, new_rank=16, new_conv_rank=16, hold_all=False)
    assert bench.rel_error(kohya, inputs) > max(1e-2, 100 * ours_error)


def test_whole_bench_run_writes_doc(harness, tmp_path, monkeypatch):
    """The bench end to end on 3 modules: fresh-process runs of ours, the JSON and the doc."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    doc, out = tmp_path / "BENCHMARKS.md", tmp_path / "merge.json"
    doc.write_text("# Benchmarks\n\nhand-written text stays\n")
    assert harness.main(["--family", "sd15", "--limit", "3", "--repeat", "1", "--skip-dense", "--no-cli",
                       "--out-json", str(out), "--doc", str(doc)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["ours"]
    row = rows[0]
    assert row["modules"] == 3 and row["subset"] and row["rel_error"] < 1e-3  # fp16 file
    assert 0 < row["phases"]["import_torch"] < row["wall_median"] and 0 < row["peak_rss_mb"] < 4096
    text = doc.read_text()
    assert "hand-written text stays" in text and harness.DOC_BEGIN in text and "| SD1.5 | 3 (subset" in text
