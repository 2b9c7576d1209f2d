"""Exact truncated SVD of a sum of low-rank products, without forming the dense matrix.

A module's merged delta is ``ΔW = Σ_i w_i · up_i @ down_i`` (``w_i`` = ratio_i · alpha_i / r_i,
up_i: m×r_i, down_i: r_i×n). Stack the weighted ups into U (m×R) and the downs into D (R×n),
R = Σ r_i. With the thin QR decompositions U = Q_u R_u and Dᵀ = Q_d R_d:

    ΔW = Q_u (R_u R_dᵀ) Q_dᵀ,   and the SVD of the small R×R core  R_u R_dᵀ = A S Bᵀ  gives
    ΔW = (Q_u A) S (Q_d B)ᵀ     — an exact SVD of ΔW (Q_u A and Q_d B have orthonormal columns).

Cost O((m+n)R² + R³) instead of O(m·n·min(m,n)) for a dense SVD, and memory O((m+n)R) instead
of m·n. Truncating to the top k singular values is then the best rank-k approximation
(Eckart–Young), exactly as a dense SVD would give it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class LowRankTerm:
    weight: float  # ratio · alpha / rank
    up: Tensor  # (m, r)
    down: Tensor  # (r, n)


@dataclass
class TruncatedSVD:
    u: Tensor  # (m, k) orthonormal columns
    s: Tensor  # (k,) kept singular values, descending
    v: Tensor  # (n, k) orthonormal columns
    all_s: Tensor  # (min(R, m, n),) every singular value of ΔW, descending


def low_rank_svd(terms: list[LowRankTerm], rank: int, dtype=None) -> TruncatedSVD:
    """Top-``rank`` SVD of Σ weight·up@down (rank is capped at what the sum can have)."""
    import torch

    dtype = dtype or torch.float32
    ups = torch.cat([t.up.to(dtype) * t.weight for t in terms], dim=1)  # m × R
    downs = torch.cat([t.down.to(dtype) for t in terms], dim=0)  # R × n
    q_u, r_u = torch.linalg.qr(ups, mode="reduced")  # m×p, p×R   (p = min(m, R))
    q_d, r_d = torch.linalg.qr(downs.T, mode="reduced")  # n×q, q×R
    core = r_u @ r_d.T  # p × q
    a, s, bh = torch.linalg.svd(core, full_matrices=False)
    k = max(1, min(rank, s.numel()))
    return TruncatedSVD(u=q_u @ a[:, :k], s=s[:k], v=q_d @ bh[:k].T, all_s=s)


def split_factors(svd: TruncatedSVD, scale: float):
    """LoRA factors with ``scale · up @ down == U S Vᵀ``.

    The singular values are split evenly (√S on each side) and ``1/scale`` is folded in the
    same way: balanced factors have similar magnitudes, so casting both to fp16/bf16 loses the
    least (an unbalanced split puts S² of dynamic range into one factor).
    """
    import torch

    root = torch.sqrt(svd.s / scale)
    up = svd.u * root.unsqueeze(0)
    down = root.unsqueeze(1) * svd.v.T
    return up, down


def frobenius_norm(terms: list[LowRankTerm], dtype=None) -> float:
    """‖Σ w·up@down‖_F from r×r Gram products only: trace((UᵀU)(DDᵀ))."""
    return max(inner(terms, terms, dtype), 0.0) ** 0.5


def inner(left: list[LowRankTerm], right: list[LowRankTerm], dtype=None) -> float:
    """Frobenius inner product ⟨Σ left, Σ right⟩ = Σ_ij w_i w_j trace((U_iᵀU_j)(D_j D_iᵀ))."""
    import torch

    dtype = dtype or torch.float64
    total = 0.0
    for a in left:
        for b in right:
            gram_u = a.up.to(dtype).T @ b.up.to(dtype)  # r_a × r_b
            gram_d = b.down.to(dtype) @ a.down.to(dtype).T  # r_b × r_a
            total += a.weight * b.weight * float(torch.trace(gram_u @ gram_d))
    return total
