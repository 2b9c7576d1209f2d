"""Does splitting the singular values evenly between lora_up and lora_down (what our merge
writes) lose less in fp16/bf16 files than kohya's layout (S folded into up)?

    OMP_NUM_THREADS=1 python bench/split_precision.py

Synthetic rank-8 B and A deltas on three SD1.5 module shapes, merged to rank 16 exactly, then
the factors are cast to fp16/bf16 and the relative Frobenius error against the exact B − A is
averaged over the shapes, for three magnitudes of lora_up (trained LoRAs span roughly these).
"""

from __future__ import annotations

import torch

from engine.merge.low_rank import LowRankTerm, low_rank_svd, split_factors

SHAPES = ((320, 2880), (1280, 1280), (640, 640))


def term(weight: float, m: int, n: int, rank: int, up_scale: float) -> LowRankTerm:
    return LowRankTerm(weight, torch.randn(m, rank) * up_scale, torch.randn(rank, n) / n**0.5)


def main() -> None:
    torch.manual_seed(0)
    print("| lora_up magnitude | fp16 balanced | fp16 S in up | bf16 balanced | bf16 S in up |")
    print("|---|---:|---:|---:|---:|")
    for up_scale in (1e-2, 1e-3, 1e-4):
        sums = [0.0] * 4
        for m, n in SHAPES:
            b, a = term(1 / 8, m, n, 8, up_scale), term(-1 / 8, m, n, 8, up_scale)
            exact = b.weight * b.up.double() @ b.down.double() + a.weight * a.up.double() @ a.down.double()
            svd = low_rank_svd([b, a], 16)
            scale = 16 / svd.s.numel()
            layouts = (split_factors(svd, scale), ((svd.u * svd.s) / scale, svd.v.T))
            i = 0
            for dtype in (torch.float16, torch.bfloat16):
                for up, down in layouts:
                    approx = scale * up.to(dtype).double() @ down.to(dtype).double()
                    sums[i] += float((approx - exact).norm() / exact.norm())
                    i += 1
        avg = [s / len(SHAPES) for s in sums]
        print(f"| ~{up_scale:g} | {avg[0]:.2e} | {avg[1]:.2e} | {avg[2]:.2e} | {avg[3]:.2e} |")


if __name__ == "__main__":
    main()
