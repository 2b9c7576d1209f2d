"""Optimizers by sd-scripts name, from the libraries that implement them.

8-bit optimizers come from bitsandbytes and need CUDA: on a CPU-only machine (or when
bitsandbytes fails to load) the 8-bit AdamW/SGD variants fall back to their torch
counterparts, and the fallback is logged and recorded in the LoRA's metadata, so nobody
later wonders why a "AdamW8bit" run used 4x the optimizer memory.
"""

from __future__ import annotations

from typing import Any, Callable

from engine.errors import InputError

FALLBACKS = {"AdamW8bit": "AdamW", "PagedAdamW8bit": "AdamW", "SGDNesterov8bit": "SGDNesterov"}


# How an optimizer's constructor refuses arguments: a key it does not take (TypeError), a value out
# of range (ValueError), a sequence too short (IndexError: betas = [0.9] reads betas[1]).
REFUSALS = (TypeError, ValueError, IndexError)


class OptimizerError(InputError):
    """An optimizer that cannot be made here: the job fails with this line, not a traceback."""


def _kwargs(args: dict[str, Any]) -> dict[str, Any]:
    # TOML has no tuples; torch wants betas as one.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


def _bitsandbytes(name: str):
    import bitsandbytes.optim as bnb_optim

    cls = {
        "AdamW8bit": bnb_optim.AdamW8bit,
        "PagedAdamW8bit": bnb_optim.PagedAdamW8bit,
        "Lion8bit": bnb_optim.Lion8bit,
        "PagedLion8bit": bnb_optim.PagedLion8bit,
        "SGDNesterov8bit": bnb_optim.SGD8bit,
    }[name]
    return without_per_tensor_sync(cls)


def _no_sync(_tensor) -> None:
    return None


def without_per_tensor_sync(cls):
    """``cls`` (a bitsandbytes optimizer) minus its device synchronisation after every tensor.

    bitsandbytes' ``Optimizer8bit.step`` calls ``sync_gpu(p)`` after each parameter's update. A
    LoRA has hundreds of small tensors (384 for rank-8 SD1.5), so a step waited for the GPU 384
    times and the GPU idled while the host launched the next kernel: on an H100 at 600x900 fp16,
    4.5 it/s with the GPU 12 % busy (bench/gpu_acceptance.py, docs/BENCHMARKS.md). The updates of
    a non-paged optimizer are kernels on one CUDA stream, which run in launch order anyway, so
    the wait changes no number (tests/test_optim_sync.py compares the weights bit for bit on a GPU). Paged
    optimizers move state between host and device asynchronously and keep the sync.
    """
    try:
        import bitsandbytes.optim.optimizer as bnb_module
    except ImportError:
        return cls
    if not hasattr(bnb_module, "sync_gpu"):
        return cls  # a bitsandbytes without the per-tensor sync: nothing to remove

    class Unsynced(cls):
        def step(self, closure=None):
            if getattr(self, "is_paged", False):
                return super().step(closure)
            saved = bnb_module.sync_gpu
            bnb_module.sync_gpu = _no_sync
            try:
                return super().step(closure)
            finally:
                bnb_module.sync_gpu = saved

    # What logs, metadata and state dicts name is bitsandbytes' own class.
    Unsynced.__name__, Unsynced.__qualname__, Unsynced.__module__ = cls.__name__, cls.__qualname__, cls.__module__
    return Unsynced


def _refusal_of_user_args(cls, lr: float, kwargs: dict[str, Any], args: dict[str, Any]) -> Exception | None:
    """What ``cls`` raises for the project's ``optimizer_args`` (None where it takes them); where it
    refuses even the call without them, that error propagates: bitsandbytes itself is at fault.

    Asked on a one-element stand-in (bitsandbytes makes no state before the first step), so a
    refused key is told apart from a broken bitsandbytes: without it, the refusal read as
    "AdamW8bit unavailable (bitsandbytes failed: TypeError ...); using torch AdamW instead" and then
    torch refused the same key, two lines for one typo and the first one wrong.
    """
    import torch

    if not args:
        return None
    try:
        cls([torch.nn.Parameter(torch.zeros(1))], lr=lr, **kwargs)
    except REFUSALS as exc:
        defaults = {k: v for k, v in kwargs.items() if k not in args}
        cls([torch.nn.Parameter(torch.zeros(1))], lr=lr, **defaults)  # raises too: bitsandbytes itself is at fault
        return exc
    return None


def optimizer_identity(optimizer) -> str:
    """Which implementation's state ``optimizer.state_dict()`` holds: a checkpoint records it, and a
    resume with another one (a GPU run's bitsandbytes moments on a machine that falls back to
    torch's AdamW) starts the moments afresh instead of failing at its first step."""
    cls = getattr(optimizer, "cls", None) or type(optimizer)  # FlatOptimizer: the bitsandbytes class it steps with
    return f"{cls.__module__}.{cls.__qualname__}"


def foreign_state(optimizer, state_dict: dict[str, Any], saved_identity: str | None) -> str | None:
    """Why ``state_dict`` cannot be ``optimizer``'s (None where it may be).

    ``saved_identity`` is what the checkpoint recorded (:func:`optimizer_identity`); checkpoints
    written before it was recorded are judged by their per-tensor keys: bitsandbytes' ``state1``
    in torch's optimizer loaded without complaint and failed at the first step with
    ``KeyError: 'exp_avg'``.
    """
    mine = optimizer_identity(optimizer)
    if saved_identity is not None:
        return None if saved_identity == mine else f"written by {saved_identity}, this run steps with {mine}"
    if getattr(optimizer, "cls", None) is not None:
        return None  # FlatOptimizer checks (and converts) what it is given itself
    for state in (state_dict.get("state") or {}).values():
        if not isinstance(state, dict):
            continue
        # bitsandbytes' state_dict wraps its tensors in one dict per parameter (its key differs by version)
        wrapped = [v for v in state.values() if isinstance(v, dict)]
        if "state1" in state or any("state1" in inner for inner in wrapped):
            return f"bitsandbytes' moments, this run steps with {mine}"
    return None


def bitsandbytes_device(device: str) -> bool:
    """Where copylora uses bitsandbytes' optimizers: CUDA (its CPU code is not what users train on)."""
    return str(device).startswith("cuda")


def build_optimizer(param_groups: list[dict], name: str, lr: float, args: dict[str, Any], device: str, log: Callable[[str], None] = print):
    """Return ``(optimizer, name_actually_used)``. An ``optimizer_args`` key the optimizer does
    not take, or a value it refuses, fails here in one line naming the project's key (the
    optimizer's own TypeError named neither; ``check`` reads settings without torch and cannot
    ask the optimizer)."""
    from engine.project.optimizer_args import optimizer_arg_problem

    for key, value in args.items():
        problem = optimizer_arg_problem(key, value)
        if problem:
            raise OptimizerError(f"[train] optimizer_args ({key} = {value!r}) do not fit {name}: {problem}")
    try:
        return _build(param_groups, name, lr, args, device, log)
    except REFUSALS as exc:
        if not args:
            raise  # nothing of the user's in the call: a bug, with its traceback
        given = ", ".join(f"{k} = {v!r}" for k, v in args.items())
        raise OptimizerError(f"[train] optimizer_args ({given}) do not fit {name}: {exc}") from exc


def _build(param_groups: list[dict], name: str, lr: float, args: dict[str, Any], device: str, log: Callable[[str], None]):
    import torch

    from engine.train.flat_optim import FlatOptimizer

    kwargs = _kwargs(args)
    used = name
    if name in ("AdamW8bit", "PagedAdamW8bit", "Lion8bit", "PagedLion8bit", "SGDNesterov8bit"):
        reason = None
        if not bitsandbytes_device(device):
            reason = "no CUDA device"
        else:
            try:
                cls = _bitsandbytes(name)
                if name == "SGDNesterov8bit":
                    kwargs = {"momentum": 0.9, "nesterov": True, **kwargs}
                refused = _refusal_of_user_args(cls, lr, kwargs, args)
                if refused is None:
                    # The same update over a few flat buffers instead of one call per LoRA tensor
                    # (engine/train/flat_optim.py: its per-tensor Python was a third of a graphed step).
                    return FlatOptimizer(param_groups, cls, lr, **kwargs), name
            except Exception as exc:  # bitsandbytes missing or built without this GPU
                reason = f"bitsandbytes failed: {type(exc).__name__}: {exc}"
            else:
                raise refused  # the project's keys: build_optimizer names them, and nothing falls back
        if name not in FALLBACKS:
            raise OptimizerError(f"optimizer {name} needs bitsandbytes on a CUDA GPU ({reason}); use AdamW or Adafactor here")
        used = FALLBACKS[name]
        log(f"optimizer {name} unavailable ({reason}); using torch {used} instead")
    if used == "AdamW":
        label = used if used == name else f"{used} (fallback from {name})"
        if "fused" not in kwargs and "foreach" not in kwargs:
            # The fused kernel does one pass over all LoRA tensors instead of ~10 small ops per
            # tensor: measured 1.5 ms vs 10 ms per step for a rank-8 SD1.5-shaped LoRA on one CPU core.
            try:
                return torch.optim.AdamW(param_groups, lr=lr, fused=True, **kwargs), label
            except (RuntimeError, TypeError, ValueError):
                pass
        return torch.optim.AdamW(param_groups, lr=lr, **kwargs), label
    if used == "SGDNesterov":
        kwargs = {"momentum": 0.9, "nesterov": True, **kwargs}
        return torch.optim.SGD(param_groups, lr=lr, **kwargs), used if used == name else f"{used} (fallback from {name})"
    if used == "Adafactor":
        from transformers.optimization import Adafactor

        # With an explicit learning rate (as in a copylora project) Adafactor must not pick its own.
        kwargs = {"scale_parameter": False, "relative_step": False, "warmup_init": False, **kwargs}
        return Adafactor(param_groups, lr=lr, **kwargs), used
    raise OptimizerError(f"unknown optimizer {name}")
