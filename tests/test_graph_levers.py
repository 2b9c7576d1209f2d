"""bench/graph_levers.py: the levers it times and its wiring, on the CPU (the rates mean something on a GPU only)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.graph_levers import half_norms, lora_difference


def test_half_norms_run_the_norms_in_their_inputs_precision_and_put_the_classes_back():
    group, layer = nn.GroupNorm(4, 8).to(torch.bfloat16), nn.LayerNorm(8).to(torch.bfloat16)
    x, y = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16), torch.randn(2, 5, 8, dtype=torch.bfloat16)
    forwards = (nn.GroupNorm.forward, nn.LayerNorm.forward)
    calls: list[torch.dtype] = []
    real = F.group_norm

    def spy(x, *args, **kwargs):
        calls.append(torch.is_autocast_enabled("cpu"))
        return real(x, *args, **kwargs)

    with half_norms(), torch.autocast("cpu", dtype=torch.bfloat16):
        F.group_norm = spy
        try:
            got_group, got_layer = group(x), layer(y)
        finally:
            F.group_norm = real
        mixed = nn.GroupNorm(4, 8)(x)  # fp32 weights, bf16 input: left to autocast
    assert calls == [False]  # autocast off around the norm itself
    assert got_group.dtype == got_layer.dtype == torch.bfloat16
    assert torch.equal(got_group, F.group_norm(x, 4, group.weight, group.bias, group.eps))
    assert torch.equal(got_layer, F.layer_norm(y, (8,), layer.weight, layer.bias, layer.eps))
    assert mixed.shape == x.shape
    assert (nn.GroupNorm.forward, nn.LayerNorm.forward) == forwards


def test_lora_difference_reads_the_worst_tensor():
    want = {"a.lora_up.weight": torch.ones(4), "a.alpha": torch.tensor(1.0), "b.lora_up.weight": torch.zeros(4)}
    got = {"a.lora_up.weight": torch.full((4,), 1.5), "a.alpha": torch.tensor(9.0), "b.lora_up.weight": torch.ones(4)}
    assert lora_difference(got, want) == pytest.approx(0.5)  # alpha and the all-zero tensor left out
    assert lora_difference(None, want) is None


def test_the_script_times_each_lever_against_the_step_as_shipped(tmp_path, capsys):
    from bench.graph_levers import main

    assert main(["--base", "tiny", "--size", "64x64", "--steps", "4", "--precision", "no", "--optimizer", "AdamW",
                 "--levers", "half-norms", "--profile", "--work", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("one side", "twin pair"):
        entry = report["levers"]["half-norms"][name]
        assert len(entry["shipped"]) == len(entry["half-norms"]) == 2 and entry["lever_vs_shipped"], entry
        assert entry["shipped_vs_itself"] == 0.0 and entry["lora_vs_shipped"] == 0.0  # fp32 here: the lever changes nothing
        assert all(entry["final_loss"]["shipped"]) and entry["final_loss"]["shipped"] == entry["final_loss"]["half-norms"]
    profiled = report["twin_kernels"]  # the window after the first third (step 2 to 3 of 4), operators by CPU time here
    assert profiled and all(row["steps"] == 1 and row["ms_per_step"] > 0 for row in profiled), profiled
    assert any("addmm" in row["kernel"] or "bmm" in row["kernel"] for row in profiled), profiled
    assert report["graph_log"] == ["cuda_graphs = true: training eagerly: there is no CUDA device (training on the CPU)"]
    with pytest.raises(SystemExit):
        main(["--levers", "nonsense", "--base", "tiny", "--size", "64x64", "--steps", "1", "--work", str(tmp_path / "x")])


def test_the_per_target_casts_lever_trains_the_same_loras_and_restores_the_shipped_way(tmp_path, capsys):
    from bench.graph_levers import main
    from engine.lora import step_weights

    assert main(["--base", "tiny", "--size", "64x64", "--steps", "3", "--precision", "bf16", "--optimizer", "AdamW",
                 "--levers", "per-target-casts", "--work", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("one side", "twin pair"):  # bf16 autocast: the casts the shipped step makes once, bit for bit
        entry = report["levers"]["per-target-casts"][name]
        assert entry["lora_vs_shipped"] == 0.0 and entry["final_loss"]["shipped"] == entry["final_loss"]["per-target-casts"], entry
    assert step_weights.ENABLED
