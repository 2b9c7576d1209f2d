"""The plain data of a LoRA: one module's factors and alpha (:class:`LoRAWeights`), a whole
file's modules and metadata (:class:`LoRAFile`), the dense delta of a module, and kohya's
precision names. The network (:mod:`engine.lora.network`), the file format
(:mod:`engine.lora.files`), the merge and the extraction all speak these.

A LoRA module adds ``multiplier * alpha/rank * up(down(x))`` to its base module's output;
kohya's file keys are ``<name>.lora_down.weight``, ``<name>.lora_up.weight``, ``<name>.alpha``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
SAVE_DTYPES = {
    "float": torch.float32,
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class LoRAWeights(NamedTuple):
    """One module's LoRA: ``delta = alpha / rank * up @ down`` (rank = ``down.shape[0]``)."""

    down: torch.Tensor  # (rank, in) or (rank, in, k, k)
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRAFile(NamedTuple):
    modules: dict[str, LoRAWeights]
    metadata: dict[str, str]


def lora_delta(down: torch.Tensor, up: torch.Tensor, alpha: float) -> torch.Tensor:
    """The dense weight change of one module, shaped like the base weight."""
    rank = down.shape[0]
    flat = up.reshape(up.shape[0], rank).float() @ down.reshape(rank, -1).float()
    return (flat * (alpha / rank)).reshape(up.shape[0], *down.shape[1:])


def to_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """A torch dtype from kohya's precision names ("float", "fp16", "bf16") or a dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return SAVE_DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown precision {dtype!r}; use one of float, fp16, bf16") from None


