"""Is torch.compile correct for copylora's LoRA training? One forward and backward of a U-Net
with a random (non-zero) LoRA hooked in, the base frozen as in training: eager fp32 and compiled
fp32 against an eager fp64 reference, for the output and every LoRA gradient. `[train] compile`
is only honoured where this passes (docs/BENCHMARKS.md).

    OMP_NUM_THREADS=1 python bench/compile_check.py [--base tiny] [--device cpu|cuda] [--backend inductor]

Exit status 0: the compiled gradients are as close to fp64 as the eager ones (within 10x, or 1e-3).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _errors(got: dict, ref: dict) -> dict:
    """Relative distance of each gradient to the reference (1.0 for a missing one)."""
    out = {}
    for name, want in ref.items():
        have = got.get(name)
        out[name] = 1.0 if have is None else float((have.double() - want).norm() / max(float(want.norm()), 1e-30))
    return out


def check(base: str, device: str, mode: str = "default", backend: str = "inductor") -> dict:
    import torch

    from engine.lora.network import LoRANetwork
    from engine.models.loading import load_base_model

    model = load_base_model(base, device=device)
    unet = model.unet
    unet.requires_grad_(False)  # as the trainer freezes it: only the LoRA learns
    network = LoRANetwork(unet, model.text_encoders, family=model.family, rank=4, alpha=4.0, text_encoder=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.05).to(device))
    network.apply_to()
    sample_size = unet.config.sample_size
    x = torch.randn(1, 4, sample_size, sample_size, generator=g).to(device)
    t = torch.tensor([500], device=device)
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g).to(device)

    def step(forward, dtype):
        for p in network.parameters():
            p.grad = None
        out = forward(x.to(dtype), t, cond.to(dtype)).sample
        (out.double() ** 2).mean().backward()
        return out.detach().double(), {n: p.grad.detach().double() for n, p in network.named_parameters() if p.grad is not None}

    try:
        eager_out, eager = step(unet, torch.float32)
        compiled_out, compiled = step(torch.compile(unet, mode=None if mode == "default" else mode, backend=backend), torch.float32)
        unet.double()
        network.double()
        ref_out, ref = step(unet, torch.float64)
    finally:
        network.remove()
    eager_err, compiled_err = _errors(eager, ref), _errors(compiled, ref)
    worst_eager, worst_compiled = max(eager_err.values()), max(compiled_err.values())
    ranked = sorted(compiled_err.items(), key=lambda kv: -kv[1])
    median = sorted(compiled_err.values())[len(compiled_err) // 2]
    return {"base": base, "device": device, "mode": mode, "backend": backend, "torch": torch.__version__,
            "output_rel_error_eager": float((eager_out - ref_out).norm() / ref_out.norm()),
            "output_rel_error_compiled": float((compiled_out - ref_out).norm() / ref_out.norm()),
            "lora_tensors": len(ref), "grads_max_rel_error_eager": worst_eager, "grads_max_rel_error_compiled": worst_compiled,
            "grads_median_rel_error_compiled": median,
            "grads_off_by_more_than_1e-3": sum(v > 1e-3 for v in compiled_err.values()),
            "correct": worst_compiled <= max(1e-3, 10 * worst_eager), "worst_grads": ranked[:5]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="default")
    parser.add_argument("--backend", default="inductor", help="inductor (what compile = true uses), aot_eager (tracing only), ...")
    args = parser.parse_args(argv)
    result = check(args.base, args.device, args.mode, args.backend)
    print(json.dumps(result, indent=1))
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    raise SystemExit(main())
