"""A frozen LoRA carried in the matmuls of a trained one at the same module.

The differential route trains B on the base with A applied, A as a frozen LoRA beside B at every
target. Run as two modules, that is two LoRAs' operators per target and step (down, up, scale,
add, and their backward): on a GPU each is a kernel launch, and copylora's steps are bound by
launches (docs/BENCHMARKS.md: B with a frozen A ran at 2.89 against 4.27 steps/s on an H100).
Here A's rank rows join B's: one ``down`` of rank rA+rB (A's rows, then B's), one ``up`` of the
same rank (A's columns scaled by A's scale over B's), and the sum is one LoRA's pair of matmuls
at B's scale. B's gradients reach its own parameters through the concatenations.

Precision: under autocast A's rows are multiplied at the autocast precision, as B's are, instead
of in fp32. Its input is already in that precision (the base model's activations) and its
change is rounded to it when added to the module's output, so what fp32 kept beyond that was
the weights' and the rank-sized intermediate's rounding, ~2⁻¹¹ (fp16) of A's own change: below
the rounding of the output it is added to. Merging A into fp16 weights (``merge_base_weights``)
loses far more, because the rounding is to the weights' scale, not A's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from engine.lora.network import LoRAModule


def foldable(trained: LoRAModule, frozen: LoRAModule) -> bool:
    """Whether ``frozen``'s rows can join ``trained``'s: the same module, the same kind of
    layer (a k×k convolution's ``down`` is concatenated on its output channels) and the same
    precision."""
    down_t, down_f = trained.lora_down, frozen.lora_down
    if type(down_t) is not type(down_f) or trained.base is not frozen.base:
        return False
    if down_t.weight.shape[1:] != down_f.weight.shape[1:] or down_t.weight.dtype != down_f.weight.dtype:
        return False
    if frozen.lora_down.weight.requires_grad or frozen.lora_up.weight.requires_grad:
        return False  # only a frozen LoRA: its rows get no gradient of their own here
    if isinstance(down_t, nn.Conv2d):
        assert isinstance(down_f, nn.Conv2d)
        return (down_t.stride, down_t.padding, down_t.dilation) == (down_f.stride, down_f.padding, down_f.dilation)
    return True


def folded_contribution(trained: LoRAModule, frozen: LoRAModule, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What ``trained`` and ``frozen`` together add to their module's output for input ``x``, in
    ``dtype``: one ``down`` and one ``up`` over their concatenated ranks, at ``trained``'s scale."""
    down, up, _ = folded_weights(trained, frozen)
    autocast = torch.is_autocast_enabled(x.device.type)
    if not autocast:
        x = x.to(down.dtype)
    conv = trained.lora_down
    if isinstance(conv, nn.Conv2d):
        added = F.conv2d(F.conv2d(x, down, None, conv.stride, conv.padding, conv.dilation, conv.groups), up)
    else:
        added = F.linear(F.linear(x, down), up)
    return added if autocast else added.to(dtype)


def folded_weights(trained: LoRAModule, frozen: LoRAModule) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The one ``down`` and ``up`` of ``frozen``'s rows, then ``trained``'s, and the scale they
    are added at (``trained``'s)."""
    scale = trained.multiplier * trained.scale
    down = torch.cat((frozen.lora_down.weight, trained.lora_down.weight))
    up = torch.cat((scaled_up(frozen, frozen.multiplier * frozen.scale / scale), trained.lora_up.weight), dim=1)
    return down, up, scale


def scaled_up(frozen: LoRAModule, ratio: float) -> torch.Tensor:
    """``frozen``'s ``up`` times ``ratio`` (1 when both LoRAs have the same scale, the usual case:
    then the weight itself). Kept and updated in place when the ratio changes (a preview's
    strengths), so that a captured CUDA graph, which reads it by its address, stays valid."""
    up = frozen.lora_up.weight
    if ratio == 1:
        return up
    kept = frozen.__dict__.get("_scaled_up")
    with torch.no_grad():
        if kept is None or kept.shape != up.shape or kept.dtype != up.dtype or kept.device != up.device:
            kept = frozen.__dict__["_scaled_up"] = up * ratio
            frozen.__dict__["_scaled_ratio"] = ratio
        elif frozen.__dict__.get("_scaled_ratio") != ratio:
            kept.copy_(up * ratio)
            frozen.__dict__["_scaled_ratio"] = ratio
    return kept
