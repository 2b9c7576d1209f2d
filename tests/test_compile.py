"""`[train] compile`: torch.compile on CUDA, where it was checked correct; ignored on the CPU,
where inductor's backward gave gradients ~10 % off (bench/compile_check.py, docs/BENCHMARKS.md)."""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from engine.project.folder import load_project  # noqa: E402
from engine.project.plan import make_plan  # noqa: E402
from engine.project.provenance import training_fingerprint  # noqa: E402
from engine.train.trainer import train, unet_forward  # noqa: E402
from tests.helpers import copy_example  # noqa: E402


def make(tmp_path, steps: int, **keys):
    root = copy_example(tmp_path)
    project = load_project(root)
    project.train = replace(project.train, save_precision="float", resolution=[128, 192], **keys)
    return make_plan(project, max_steps=steps)


def test_compile_is_ignored_on_the_cpu_and_trains_the_same(tmp_path, tiny):
    plain = train(make(tmp_path / "plain", 6), "a", model=tiny, log=lambda line: None)
    logs: list[str] = []
    asked = train(make(tmp_path / "asked", 6, compile=True), "a", model=tiny, log=logs.append, device="cpu")
    assert any("compile = true is ignored on the CPU" in line for line in logs), logs
    from safetensors.torch import load_file

    want, got = load_file(str(plain.lora_path)), load_file(str(asked.lora_path))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert any(float(v.abs().max()) > 0 for k, v in got.items() if "lora_up" in k)  # it trained


def test_compile_does_not_make_checkpoints_stale(tmp_path):
    """Switching it on or off changes how a step runs, not what it computes: a run resumes."""
    root = copy_example(tmp_path)

    def fingerprint(**keys) -> str:
        project = load_project(root)
        return training_fingerprint(make_plan(replace(project, train=replace(project.train, **keys)), max_steps=4), "a")

    assert fingerprint(compile=True) == fingerprint(compile=False)
    assert fingerprint(noise_offset=0.1) != fingerprint()  # the comparison sees a setting that matters


def test_unet_forward_compiles_only_on_cuda(tiny, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(module) or "compiled")
    logs: list[str] = []
    assert unet_forward(tiny.unet, False, "cuda", logs.append) is tiny.unet
    assert unet_forward(tiny.unet, True, "cpu", logs.append) is tiny.unet and compiled == []
    assert unet_forward(tiny.unet, True, "cuda:0", logs.append) == "compiled" and compiled == [tiny.unet]
    assert "ignored on the CPU" in logs[0] and "compiling the U-Net" in logs[1]


@pytest.mark.gpu
def test_compiled_lora_gradients_match_fp64_on_cuda():
    """What makes the option honest: on CUDA the compiled step's LoRA gradients are as close to
    an fp64 reference as the eager step's (H100, 2026-11-28: 7.0e-3 vs 6.9e-3, TF32 convs)."""
    from bench.compile_check import check

    result = check("tiny", "cuda")
    assert result["correct"], result
