"""The LoRAs' weights in the step's precision, made once per forward instead of once per target.

Under autocast each fused target (:mod:`engine.lora.fused`) casts its LoRA's fp32 ``down`` and
``up`` to the step's precision, and autograd casts both gradients back: four kernels a target,
772 of the 3 306 kernels of a graphed SD1.5 step on the H100 (2026-12-06). The twin stacks A's
and B's weights at every target first: two more. Here they are gathered by one concatenation
and cast once, each target reads its view of that buffer, and one autograd node casts all the
gradients back and cuts them apart: a handful of kernels a step instead of hundreds.

The values are the same bit for bit (a cast is elementwise; concatenating and cutting only
moves elements), so the LoRAs are too (tested against the per-target way on the CPU, whose
autocast casts to bf16 the same way).

Only for targets that run the fused function with their own weights: not a LoRA that carries a
frozen one (the differential route's fold) or is carried, not at strength 0, not in full
precision. A view no target used gets a zero gradient, as its weights would have had none.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from engine.lora.fused import ForwardReplaced

ENABLED = True  # the benches' switch (bench/graph_levers.py times the per-target casts against it)
KEY = "step_weights"  # where a target finds its prepared (down, up): its owner's __dict__ (no submodule, no parameter)


class _Gathered(torch.autograd.Function):
    """``params`` concatenated, cast to ``dtype`` and cut into views of ``shapes`` (consecutive
    parameters: one each, or a twin's two stacked); backward: the gradients the other way, in
    the parameters' precision, cut into one view per parameter."""

    @staticmethod
    def forward(ctx: Any, dtype: torch.dtype, shapes: tuple[tuple[int, ...], ...], *params: torch.Tensor):
        flat = torch.cat([p.reshape(-1) for p in params])
        if flat.dtype != dtype:
            flat = flat.to(dtype)
        ctx.param_dtype, ctx.param_shapes, ctx.shapes = params[0].dtype, [p.shape for p in params], shapes
        ctx.set_materialize_grads(False)  # no zeros for an unused view unless another one has a gradient
        return tuple(_cut(flat, start, shape) for start, shape in _cuts(shapes))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None):
        like = next((g for g in grads if g is not None), None)
        if like is None:
            return (None, None, *([None] * len(ctx.param_shapes)))
        flat = torch.cat([grad.reshape(-1) if grad is not None else like.new_zeros(math.prod(shape)) for grad, shape in zip(grads, ctx.shapes)])
        if flat.dtype != ctx.param_dtype:
            flat = flat.to(ctx.param_dtype)
        needed = ctx.needs_input_grad[2:]
        return (None, None, *(_cut(flat, start, shape) if need else None for (start, shape), need in zip(_cuts(ctx.param_shapes), needed)))


def _cut(flat: torch.Tensor, start: int, shape: Sequence[int]) -> torch.Tensor:
    """``flat[start:start + n].view(shape)`` as one operator instead of two (an eager step
    dispatches one per target and side, forward and backward: host time on a GPU)."""
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return flat.as_strided(tuple(shape), tuple(reversed(strides)), flat.storage_offset() + start)


def _cuts(shapes: Sequence[Sequence[int]]) -> Iterator[tuple[int, Sequence[int]]]:
    start = 0
    for shape in shapes:
        yield start, shape
        start += math.prod(shape)


def fused_own(lora) -> bool:
    """Whether ``lora`` runs the fused function with its own weights (what can be prepared).
    Called for every LoRA at every step: its imports are the module's."""
    return (isinstance(lora._hook, ForwardReplaced) and isinstance(lora.lora_down, nn.Linear) and not lora.full_precision
            and lora.multiplier != 0 and lora.folded is None and lora.folded_into is None and lora.lora_down.weight.requires_grad)


def pair_own(lora_a, lora_b) -> bool:
    """Whether a twin target's two LoRAs (its forward replaced by the twin's fused function)
    run as one stack: both on, at one scale, of one shape and precision (twin.same_pair's rule
    for a Linear)."""
    if lora_a.full_precision or lora_b.full_precision or lora_a.multiplier == 0 or lora_b.multiplier == 0:
        return False
    down_a, down_b, up_a, up_b = lora_a.lora_down.weight, lora_b.lora_down.weight, lora_a.lora_up.weight, lora_b.lora_up.weight
    return (down_a.shape == down_b.shape and up_a.shape == up_b.shape and down_a.dtype == down_b.dtype
            and lora_a.multiplier * lora_a.scale == lora_b.multiplier * lora_b.scale)


@contextmanager
def prepared(device_type: str, singles: Sequence = (), pairs: Sequence[tuple[Any, Any]] = ()) -> Iterator[None]:
    """Inside (a forward under the step's autocast, if any): each LoRA of ``singles`` that runs
    fused with its own weights finds them prepared, and each twin pair of ``pairs`` (pairs whose
    Linear runs the twin's fused function; owned by its A) its stacks. Singles are prepared only
    under autocast (without a cast there is nothing to save); pairs always (their stacks)."""
    autocast = torch.is_autocast_enabled(device_type)
    singles = [lora for lora in singles if fused_own(lora)] if autocast else []
    pairs = [(a, b) for a, b in pairs if pair_own(a, b)]
    if not ENABLED or not (singles or pairs):
        yield
        return
    params: list[torch.Tensor] = []
    shapes: list[tuple[int, ...]] = []
    owners = []
    for lora in singles:
        params += [lora.lora_down.weight, lora.lora_up.weight]
        shapes += [tuple(lora.lora_down.weight.shape), tuple(lora.lora_up.weight.shape)]
        owners.append(lora)
    for a, b in pairs:
        params += [a.lora_down.weight, b.lora_down.weight, a.lora_up.weight, b.lora_up.weight]
        shapes += [(2, *a.lora_down.weight.shape), (2, *a.lora_up.weight.shape)]
        owners.append(a)
    dtype = torch.get_autocast_dtype(device_type) if autocast else params[0].dtype
    views = _Gathered.apply(dtype, tuple(shapes), *params)
    for i, owner in enumerate(owners):
        owner.__dict__[KEY] = (views[2 * i], views[2 * i + 1])
    try:
        yield
    finally:
        for owner in owners:
            owner.__dict__.pop(KEY, None)
