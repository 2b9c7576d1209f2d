"""bitsandbytes' 8-bit AdamW per tensor against over flat buffers (engine/train/flat_optim.py), for a
full-size LoRA's tensors: milliseconds a step and the calls bitsandbytes makes, and whether the
weights after N steps are the same bit for bit.

The LoRA is built on the meta-device full-size U-Net (its real shapes; the LoRA's own tensors
are real), its gradients random. On a CPU this times bitsandbytes' CPU code, so the milliseconds
are the host's per-tensor work plus the arithmetic; on a GPU (``--device cuda``) the arithmetic is
the GPU's and what remains is the host's.

    OMP_NUM_THREADS=1 python bench/flat_optim_bench.py --family sd1 --rank 8 --steps 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="sd1", choices=["sd1", "sdxl"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import torch

    from engine.lora.network import LoRANetwork
    from engine.models.loading import build_empty
    from engine.train.flat_optim import FlatOptimizer
    from engine.train.optim import _bitsandbytes

    torch.set_num_threads(1)
    unet, encoders = build_empty(args.family)
    cls = _bitsandbytes("AdamW8bit")
    report: dict = {"family": args.family, "rank": args.rank, "device": args.device}
    weights = {}
    for way in ("per tensor", "flat"):
        torch.manual_seed(0)
        network = LoRANetwork(unet, encoders, family=args.family, rank=args.rank, alpha=1.0, text_encoder=False).to(args.device)
        groups = network.param_groups(1e-4)
        params = [p for g in groups for p in g["params"]]
        optimizer = cls(groups, lr=1e-4) if way == "per tensor" else FlatOptimizer(groups, cls, 1e-4)
        calls = 0
        import bitsandbytes.functional as F

        originals = {name: getattr(F, name) for name in ("optimizer_update_8bit_blockwise", "optimizer_update_32bit")}

        def counted(fn):
            def call(*a, **k):
                nonlocal calls
                calls += 1
                return fn(*a, **k)
            return call

        for name, fn in originals.items():
            setattr(F, name, counted(fn))
        gen = torch.Generator(device=args.device).manual_seed(1)
        grads = [torch.randn(p.shape, generator=gen, device=args.device) for p in params]
        times = []
        try:
            for _ in range(args.steps):
                for p, g in zip(params, grads):
                    p.grad = g
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                began = time.perf_counter()
                optimizer.step()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - began)
                optimizer.zero_grad(set_to_none=True)
        finally:
            for name, fn in originals.items():
                setattr(F, name, fn)
        steady = sorted(times[len(times) // 3:])
        report[way] = {"tensors": len(params), "bitsandbytes_calls_per_step": calls // args.steps,
                       "median_ms": round(1000 * steady[len(steady) // 2], 2)}
        weights[way] = [p.detach().cpu().clone() for p in params]
    report["same_weights_bit_for_bit"] = all(torch.equal(a, b) for a, b in zip(weights["per tensor"], weights["flat"]))
    report["flat_vs_per_tensor_time"] = round(report["flat"]["median_ms"] / report["per tensor"]["median_ms"], 3)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    raise SystemExit(main())
