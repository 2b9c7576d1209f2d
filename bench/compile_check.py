"""Is torch.compile correct for copylora's LoRA training? Eager against compiled U-Net, one
forward and backward with a random (non-zero) LoRA hooked in: the output and every LoRA
gradient compared. This is why `[train] compile` is not offered yet (docs/BENCHMARKS.md).

    OMP_NUM_THREADS=1 python bench/compile_check.py [--base tiny] [--device cpu|cuda] [--mode default]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def check(base: str, device: str, mode: str) -> dict:
    import torch

    from engine.lora.network import LoRANetwork
    from engine.models.loading import load_base_model

    model = load_base_model(base, device=device)
    network = LoRANetwork(model.unet, model.text_encoders, family=model.family, rank=4, alpha=4.0, text_encoder=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.05).to(device))
    network.apply_to()
    sample_size = model.unet.config.sample_size
    x = torch.randn(1, 4, sample_size, sample_size, generator=g).to(device)
    t = torch.tensor([500], device=device)
    cond = torch.randn(1, 77, model.unet.config.cross_attention_dim, generator=g).to(device)

    def step(unet):
        for p in network.parameters():
            p.grad = None
        out = unet(x, t, cond).sample
        (out.float() ** 2).mean().backward()
        return out.detach().clone(), {n: p.grad.clone() if p.grad is not None else None for n, p in network.named_parameters()}

    eager_out, eager_grads = step(model.unet)
    compiled_out, compiled_grads = step(torch.compile(model.unet, mode=mode))
    rel = {}
    for name, want in eager_grads.items():
        got = compiled_grads[name]
        rel[name] = 1.0 if got is None else float((got - want).norm() / max(float(want.norm()), 1e-30))
    worst = sorted(rel.items(), key=lambda kv: -kv[1])
    return {"base": base, "device": device, "mode": mode, "torch": torch.__version__,
            "output_rel_diff": float((compiled_out - eager_out).norm() / eager_out.norm()),
            "lora_tensors": len(rel), "grads_off_by_more_than_1e-3": sum(v > 1e-3 for v in rel.values()),
            "worst_grads": worst[:5]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="default")
    args = parser.parse_args(argv)
    result = check(args.base, args.device, args.mode)
    print(json.dumps(result, indent=1))
    return 1 if result["grads_off_by_more_than_1e-3"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
