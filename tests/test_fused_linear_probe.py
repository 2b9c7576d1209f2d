"""bench/fused_linear_probe.py: a base Linear and its LoRA as one autograd function (the next
lever for a host-bound step, measured, not shipped) trains the same LoRA with fewer kernels."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


def test_the_fused_linear_trains_the_hooked_loras_with_fewer_operators(capsys):
    from bench.fused_linear_probe import main

    assert main(["--steps", "3", "--size", "64x64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["worst_relative_difference"] < 1e-4, report  # the same LoRA, to fp32 rounding (3.8e-6 at 8 steps, 128×192)
    assert report["fused_kernels_vs_hooked"] < 0.95, report  # 0.916 with SGD at 128×192
    assert report["fused"]["ops_per_step"] < 0.8 * report["hooked"]["ops_per_step"], report  # 7 052 against 9 676
