"""A Linear and its LoRA as one function: ``x Wᵀ + b + s·(x Dᵀ) Uᵀ`` in one autograd node.

A LoRA as a forward hook runs after its Linear: the base's matmul, then the LoRA's own operators
and autograd nodes (two matmuls and the scaled sum forward; the scale, four matmuls and the
input gradient's sum backward). Most of a copy-machine step's operators are the LoRAs' (192
targets on SD1.5), and a GPU step is bound by launching them, not by their arithmetic
(docs/BENCHMARKS.md). Replacing the Linear's ``forward`` (as sd-scripts does) lets the scale and
both sums happen inside ``addmm``/``baddbmm``: 3 kernels forward and 5 backward (fewer where the
input or the LoRA needs no gradient), with the gradients computed in the parameters' own layout.

The same function takes G LoRAs over G equal parts of the batch (the twin pair: A's LoRA on the
first half, B's on the second), as batched matmuls over their stacked weights.

Only a plain ``nn.Linear`` whose ``forward`` nobody else replaced, frozen (as a LoRA's base is
in training) or under ``no_grad``, and inputs in one precision (or autocast, which this casts
for): otherwise the caller falls back to its hook's way, which computes the same.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class _LinearWithLoRAs(torch.autograd.Function):
    """``x Wᵀ + b`` plus, on each of G equal parts of the batch, ``s·(x Dᵢᵀ) Uᵢᵀ``.

    Shapes: x (..., in) with G dividing its leading rows; weight (out, in); bias (out,) or None;
    down (rank, in) and up (out, rank) for one LoRA over the whole batch, or (G, rank, in) and
    (G, out, rank) for G; scale a Python float. One LoRA runs as plain matmuls: a batched matmul
    of one costs the same kernels but more operators (views), which an eager GPU step pays."""

    @staticmethod
    def forward(ctx, x, weight, bias, down, up, scale):
        out, inputs, hidden = _computed(x, weight, bias, down, up, scale)
        ctx.save_for_backward(inputs, weight, down, up, hidden)
        ctx.scale, ctx.shape = scale, x.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        inputs, weight, down, up, hidden = ctx.saved_tensors
        need_x, _, _, need_down, need_up, _ = ctx.needs_input_grad
        scale, one = ctx.scale, down.dim() == 2
        grad = grad.reshape(-1, grad.shape[-1])
        grads = grad if one else grad.reshape(down.shape[0], -1, grad.shape[-1])  # (rows, out) or (G, rows, out)
        mm, t = (torch.addmm, torch.t) if one else (torch.baddbmm, lambda m: m.transpose(1, 2))
        grad_x = grad_down = grad_up = grad_hidden = None
        if need_x or need_down:  # s·g U, the scale inside the matmul (beta=0: the first argument only shapes it)
            grad_hidden = mm(hidden, grads, up, beta=0, alpha=scale)
        if need_up:  # s·gᵀ h, in up's own layout
            grad_up = mm(up, t(grads), hidden, beta=0, alpha=scale)
        if need_down:
            assert grad_hidden is not None
            grad_down = t(grad_hidden).mm(inputs) if one else torch.bmm(t(grad_hidden), inputs)
        if need_x:
            assert grad_hidden is not None
            flat_x = grad.mm(weight)
            if one:
                flat_x.addmm_(grad_hidden, down)
            else:
                flat_x.view(down.shape[0], -1, flat_x.shape[-1]).baddbmm_(grad_hidden, down)
            grad_x = flat_x.view(ctx.shape)
        return grad_x, None, None, grad_down, grad_up, None


def _computed(x, weight, bias, down, up, scale) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward's three kernels: (the output, the input as the backward reads it, the rank-sized hidden)."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.addmm(bias, flat, weight.t()) if bias is not None else flat.mm(weight.t())
    if down.dim() == 2:
        inputs = flat
        hidden = flat.mm(down.t())  # (rows, rank)
        out.addmm_(hidden, up.t(), alpha=scale)
    else:
        inputs = flat.reshape(down.shape[0], -1, flat.shape[-1])  # (G, rows, in)
        hidden = torch.bmm(inputs, down.transpose(1, 2))  # (G, rows, rank)
        out.view(down.shape[0], -1, out.shape[-1]).baddbmm_(hidden, up.transpose(1, 2), alpha=scale)
    return out.view(*x.shape[:-1], out.shape[-1]), inputs, hidden


def _apply(x, weight, bias, down, up, scale) -> torch.Tensor:
    if not torch.is_grad_enabled():  # a preview, a copy check: the same kernels without the autograd function's overhead
        return _computed(x, weight, bias, down, up, scale)[0]
    return _LinearWithLoRAs.apply(x, weight, bias, down, up, scale)


def fusable(base: nn.Module) -> bool:
    """Whether ``base``'s forward can be replaced: a plain ``nn.Linear`` (no subclass with a
    forward of its own, e.g. a quantized one) that nothing else has patched."""
    return isinstance(base, nn.Linear) and type(base).forward is nn.Linear.forward and "forward" not in base.__dict__


def linear_with_loras(base: nn.Linear, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor | None:
    """``base(x)`` plus a LoRA ``down`` (rank, in) / ``up`` (out, rank) at ``scale``, or G of them
    stacked ((G, rank, in) / (G, out, rank)), each on its part of the batch; None where this
    cannot run as one function (the caller's hook then does): a base whose weights want a
    gradient, inputs in several precisions without autocast, or a batch G does not divide."""
    if x.dim() < 2 or (down.dim() == 3 and x.shape[0] % down.shape[0]):
        return None
    weight: torch.Tensor = base.weight
    bias: torch.Tensor | None = base.bias
    if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        return None  # a base that trains (a loaded model not yet frozen): the function gives it no gradient
    device = x.device.type
    if torch.is_autocast_enabled(device):
        # A custom function's inputs are not cast by autocast: cast them here, where autocast
        # would have cast each matmul's operands (its casts are graph nodes too). With every
        # operand in its precision, autocast's own casts inside are no-ops, so it stays on:
        # switching it off and on per call (a context manager) cost more host time than the
        # function saved (measured on the CPU, host-bound: fused no faster than the hook).
        dtype = torch.get_autocast_dtype(device)
        x, weight, down, up = _to(x, dtype), _to(weight, dtype), _to(down, dtype), _to(up, dtype)
        return _apply(x, weight, None if bias is None else _to(bias, dtype), down, up, scale)
    if not (x.dtype == weight.dtype == down.dtype == up.dtype) or (bias is not None and bias.dtype != x.dtype):
        return None
    return _apply(x, weight, bias, down, up, scale)


def _to(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


class ForwardReplaced:
    """The handle of a replaced ``forward``: ``remove()`` puts the class's own back (the same
    meaning as a forward hook's handle, for the callers that keep one)."""

    def __init__(self, base: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.base, self.forward = base, forward
        base.forward = forward

    def remove(self) -> None:
        if self.base.__dict__.get("forward") is self.forward:
            del self.base.forward


def plain_linear(base: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """What the Linear's own forward computes."""
    return F.linear(x, base.weight, base.bias)


def fused_count(*models: nn.Module) -> int:
    """How many of ``models``' modules run a replaced forward (a LoRA inside its Linear's function)."""
    return sum(1 for model in models for module in model.modules() if "forward" in module.__dict__)
