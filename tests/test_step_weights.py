"""The LoRAs' weights cast (and the twin's stacked) once per forward (engine.lora.step_weights):
the same LoRAs bit for bit as casting at every target, with hundreds of kernels fewer a step."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from bench.op_count import ops_per_step  # noqa: E402
from engine.lora import step_weights  # noqa: E402
from engine.lora.fused import fused_count  # noqa: E402
from engine.train.controls import TrainControls  # noqa: E402
from engine.train.trainer import train  # noqa: E402
from engine.train.twin import train_twin  # noqa: E402
from tests.helpers import quiet  # noqa: E402
from tests.test_cuda_graphs import assert_identical, make  # noqa: E402


def _run(monkeypatch, enabled: bool, fn):
    monkeypatch.setattr(step_weights, "ENABLED", enabled)
    results = []
    kernels = ops_per_step(lambda controls: results.append(fn(controls)))[1]
    return results[0], kernels


@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_one_side_casts_once_and_trains_the_same_lora(tmp_path, tiny, monkeypatch, precision):
    plan = make(tmp_path / "p", 4, mixed_precision=precision)
    each, kernels_each = _run(monkeypatch, False, lambda c: train(plan, "a", model=tiny, log=quiet, controls=c, device="cpu"))
    once, kernels_once = _run(monkeypatch, True, lambda c: train(plan, "a", model=tiny, log=quiet, controls=c, device="cpu"))
    assert_identical(once.lora_path, each.lora_path)
    targets = 160  # tiny's fused targets (SD1.5's names): the training log's "160 of 192"
    if precision == "bf16":  # four casts a target (down, up, and their gradients back) become a few kernels
        assert kernels_each - kernels_once >= 3 * targets, (kernels_each, kernels_once)
    else:  # nothing to cast: nothing prepared, the same kernels
        assert kernels_once == kernels_each


@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_the_twins_stacks_are_made_once_and_train_the_same_loras(tmp_path, tiny, monkeypatch, precision):
    plan = make(tmp_path / "p", 4, mixed_precision=precision)
    each, kernels_each = _run(monkeypatch, False, lambda c: train_twin(plan, model=tiny, log=quiet, controls=c, device="cpu"))
    once, kernels_once = _run(monkeypatch, True, lambda c: train_twin(plan, model=tiny, log=quiet, controls=c, device="cpu"))
    for side in ("a", "b"):
        assert_identical(once[side].lora_path, each[side].lora_path)
    per_target = 5 if precision == "bf16" else 1  # the two stacks (and the casts) forward, their gradients back
    assert kernels_each - kernels_once >= per_target * 160, (kernels_each, kernels_once)
    assert fused_count(tiny.unet) == 0  # the hooks are gone afterwards


def test_with_gradient_checkpointing_the_recomputed_forward_gives_the_same_loras(tmp_path, tiny, monkeypatch):
    """The blocks' forward runs again in the backward, after the prepared weights are gone: it
    casts per target then, and the gradients are the same."""
    plan = make(tmp_path / "p", 3, mixed_precision="bf16", gradient_checkpointing=True)
    runs, used = {}, []
    for enabled in (False, True):
        monkeypatch.setattr(step_weights, "ENABLED", enabled)
        controls = TrainControls(on_progress=lambda _p: used.append(tiny.unet.is_gradient_checkpointing))
        runs[enabled] = train_twin(plan, model=tiny, log=quiet, device="cpu", controls=controls)
    assert used and all(used) and not tiny.unet.is_gradient_checkpointing  # on while it trained, off again after (a shared model)
    for side in ("a", "b"):
        assert_identical(runs[True][side].lora_path, runs[False][side].lora_path)


def test_a_view_no_target_used_gets_a_zero_gradient_and_frozen_weights_none():
    down, up = torch.randn(2, 3, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    frozen = torch.randn(2, 3)
    d, u, f = step_weights._Gathered.apply(torch.bfloat16, ((2, 3), (4, 2), (2, 3)), down, up, frozen)
    assert d.dtype == u.dtype == torch.bfloat16 and torch.equal(d, down.to(torch.bfloat16)) and torch.equal(f, frozen.to(torch.bfloat16))
    (u.float() * 2).sum().backward()
    assert torch.equal(up.grad, torch.full((4, 2), 2.0)) and torch.equal(down.grad, torch.zeros(2, 3))
    assert frozen.grad is None


@pytest.mark.gpu
def test_on_a_gpu_the_casts_made_once_train_as_the_casts_per_target(tmp_path, monkeypatch):
    """fp16 autocast on CUDA, one side and the twin, 6 steps of SGD: the same casts, so the LoRAs
    differ only by the run-to-run noise of CUDA's backward kernels (the bound: fp16 rounding,
    5e-4 per op, carried through six steps; far under a lost or doubled gradient's ~1/6)."""
    from engine.models.loading import load_base_model

    model = load_base_model("tiny", device="cuda")
    plan = make(tmp_path / "p", 6, mixed_precision="fp16", optimizer_type="SGDNesterov", learning_rate=0.5)
    got = {}
    for enabled in (False, True):
        monkeypatch.setattr(step_weights, "ENABLED", enabled)
        got[enabled] = (train(plan, "a", model=model, log=quiet, device="cuda"), train_twin(plan, model=model, log=quiet, device="cuda"))
    from tests.test_cuda_graphs import lora

    for each, once in [(got[False][0].lora_path, got[True][0].lora_path)] + [(got[False][1][s].lora_path, got[True][1][s].lora_path) for s in "ab"]:
        want, have = lora(each), lora(once)
        for key, w in want.items():
            if "lora_up" in key and float(w.float().norm()) > 0:
                assert float((have[key].double() - w.double()).norm() / w.double().norm()) < 1e-2, key


def test_through_torch_compile_the_weights_stay_per_target(tiny):
    """A compiled U-Net (what torch.compile returns keeps the module as ``_orig_mod``) was checked
    on a GPU with the per-target casts: the step leaves it so."""
    from contextlib import nullcontext

    from engine.train.trainer import StepFunction

    class Driver:
        runs: list = []

        def weights_once(self, device_type):
            raise AssertionError("prepared under torch.compile")

    class Compiled:
        _orig_mod = tiny.unet

    assert StepFunction(Driver(), tiny, Compiled(), nullcontext(), torch.float32, defer=False).weights_once is nullcontext
    plain = StepFunction(Driver(), tiny, tiny.unet, nullcontext(), torch.float32, defer=False)
    assert plain.weights_once.__func__ is Driver.weights_once
