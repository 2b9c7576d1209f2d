"""What a base Linear and its LoRA computed as one autograd function would save: a probe, not a
feature (CPU, fp32, no autocast).

Today a LoRA is a forward hook: the base Linear's output, then the LoRA's own operators and
autograd nodes on top (per target and step, counted on ``tiny``: the base's 2 kernels and the
LoRA's 9 — 2 matmuls and the scaled sum forward; the scale, 4 matmuls and the input gradient's
sum backward). One function that replaces the Linear's forward (as sd-scripts replaces
``forward``) can put the scale and the sums inside ``addmm``: 3 kernels forward, 5 backward, one
autograd node. This script swaps that in for every Linear target (convolution targets keep their
hooks), trains one side as the trainer does, and reports the operators and kernels a step
(bench/op_count.py), the steps/s of two runs of each without counting (after their first third,
in the order hooked, fused, fused, hooked), and how far the LoRA ends from the hooked one's
(plain SGD, fp32: rounding only).

    OMP_NUM_THREADS=1 python bench/fused_linear_probe.py --steps 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def fused_function():
    import torch

    class BaseAndLoRA(torch.autograd.Function):
        """``x Wᵀ + b + s·(x Dᵀ) Uᵀ`` for a Linear (W, b) and its LoRA (D down, U up, s scale)."""

        @staticmethod
        def forward(ctx, x, weight, bias, down, up, scale):
            flat = x.reshape(-1, x.shape[-1])
            hidden = flat.mm(down.t())
            out = torch.addmm(bias, flat, weight.t()) if bias is not None else flat.mm(weight.t())
            out.addmm_(hidden, up.t(), alpha=scale)
            ctx.save_for_backward(flat, weight, down, up, hidden)
            ctx.scale, ctx.shape = scale, x.shape
            return out.reshape(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx, grad):
            flat, weight, down, up, hidden = ctx.saved_tensors
            grad = grad.reshape(-1, grad.shape[-1])
            grad_hidden = torch.addmm(hidden, grad, up, beta=0, alpha=ctx.scale)  # s·g U (the first argument only shapes it)
            grad_up = torch.addmm(up, grad.t(), hidden, beta=0, alpha=ctx.scale)  # s·gᵀ h
            grad_down = grad_hidden.t().mm(flat)
            grad_x = grad.mm(weight).addmm_(grad_hidden, down)
            return grad_x.reshape(ctx.shape), None, None, grad_down, grad_up, None

    return BaseAndLoRA


@contextmanager
def fused_linears() -> Iterator[None]:
    """While inside, every LoRA on a Linear replaces its module's forward instead of hooking it."""
    from unittest import mock

    import torch

    from engine.lora.network import LoRAModule

    function = fused_function()
    hooked_attach, hooked_remove = LoRAModule.attach, LoRAModule.remove

    def attach(lora) -> None:
        base = lora.base
        if not isinstance(base, torch.nn.Linear) or lora.folded is not None:
            return hooked_attach(lora)

        def forward(x):
            if lora.multiplier == 0:
                return torch.nn.functional.linear(x, base.weight, base.bias)
            return function.apply(x, base.weight, base.bias, lora.lora_down.weight, lora.lora_up.weight, lora.multiplier * lora.scale)

        base.forward = forward
        lora.__dict__["_fused"] = True

    def remove(lora) -> None:
        if lora.__dict__.pop("_fused", False):
            del lora.base.forward  # the class's forward again
            return
        hooked_remove(lora)

    with mock.patch.object(LoRAModule, "attach", attach), mock.patch.object(LoRAModule, "remove", remove):
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", default="128x192")
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import load_file

    from bench.acceptance_speed import timed
    from bench.gpu_acceptance import make_project, teacher_pictures
    from bench.op_count import ops_per_step
    from engine.models.loading import load_base_model
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan
    from engine.train.trainer import train

    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("x"))
    model = load_base_model("tiny")
    report: dict = {"size": args.size, "steps": args.steps}
    with tempfile.TemporaryDirectory() as work:
        pictures = teacher_pictures(Path(work) / "pictures", width, height)
        loras, plans = {}, {}
        for name, fused in (("hooked", False), ("fused", True)):
            root = make_project(Path(work) / name, pictures, "tiny", size=(width, height), steps=args.steps, precision="no",
                                optimizer="SGDNesterov", sample_steps=1, device="cpu")
            project = load_project(root)
            project.train.learning_rate, project.train.save_precision, project.train.copy_check_every_n_steps = 0.5, "float", 0
            save_project(project)
            plan = make_plan(load_project(root))
            plans[name] = plan
            with fused_linears() if fused else _nothing():
                ops, kernels = ops_per_step(lambda c, p=plan: train(p, "a", model=model, log=lambda line: None, controls=c))
            report[name] = {"ops_per_step": round(ops), "kernels_per_step": round(kernels), "it_per_s": []}
        for name in ("hooked", "fused", "fused", "hooked"):  # timed in ABBA order: neither always runs first
            with fused_linears() if name == "fused" else _nothing():
                rate, result, _ = timed(lambda c, p=plans[name]: train(p, "a", model=model, log=lambda line: None, controls=c))
            report[name]["it_per_s"].append(round(rate, 2) if rate else None)
            loras[name] = load_file(str(result.lora_path))
            assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in model.unet.modules())
        want, got = loras["hooked"], loras["fused"]
        # Tensors at rounding level are left out: at 64×64 the mid block's self-attention sees one
        # token, so its to_q / to_k LoRAs get no gradient (norms ~1e-11, all rounding).
        report["worst_relative_difference"] = max(float((got[k].double() - want[k].double()).norm() / want[k].double().norm())
                                                  for k in want if "alpha" not in k and float(want[k].norm()) > 1e-8)
        report["fused_kernels_vs_hooked"] = round(report["fused"]["kernels_per_step"] / report["hooked"]["kernels_per_step"], 3)
    print(json.dumps(report, indent=1))
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    raise SystemExit(main())
