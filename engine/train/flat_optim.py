"""A bitsandbytes optimizer stepping a few flat tensors instead of a LoRA's hundreds.

bitsandbytes updates one tensor per call, with Python checks and lookups around each kernel: a
rank-8 SD1.5 LoRA has 384 tensors, and on an H200 the 8-bit AdamW step took ~25 ms of a ~71 ms
graph-replayed step (docs/BENCHMARKS.md, "where the step's time goes"). Here each parameter group's
tensors live in one flat buffer per kind (the LoRA's parameters become views into it), their
gradients are gathered into the buffer's gradient with one multi-tensor copy, and bitsandbytes
steps the buffers: a handful of calls a step.

The same update, element for element, as bitsandbytes per tensor:

- tensors under ``min_8bit_size`` elements (4096 by default: rank-8 SD1.5 has many) keep 32-bit
  state, in a buffer of their own, whatever its total size;
- the 8-bit state is quantized per block of 256 elements (its absolute maximum per block), so
  each tensor starts at a multiple of 256 in its buffer and the gap after it stays zero (a zero
  gradient; its moments are reset to the codes of 0 after each step, so its update is zero and
  the block's maximum is its tensor's own).

``param_groups`` (what the LR schedule, the grad scaler and gradient clipping see) still holds
the LoRA's own parameters; the schedule's learning rate reaches the buffers at each step. The
state dict is the buffers' (with their layout); a per-tensor state dict (a checkpoint written
before this existed) is converted on load, exactly.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCK = 256  # bitsandbytes' block for 8-bit optimizer state (Optimizer2State/1State.init_state)
MIN_8BIT_SIZE = 4096  # bitsandbytes' default min_8bit_size


class _Pool:
    """One flat buffer: the tensors of one parameter group of one kind (8-bit or 32-bit state)."""

    def __init__(self, params: list[torch.Tensor], align: int) -> None:
        self.params = params
        self.offsets: list[int] = []
        end = 0
        for p in params:
            self.offsets.append(end)
            end += -(-p.numel() // align) * align
        first = params[0]
        flat = torch.zeros(end, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for p, offset in zip(params, self.offsets):
                flat[offset:offset + p.numel()].copy_(p.detach().reshape(-1))
                p.data = flat[offset:offset + p.numel()].view_as(p)  # the parameter now lives in the buffer
        self.flat = torch.nn.Parameter(flat)
        self.flat.grad = torch.zeros_like(flat)
        self.grads = [self.flat.grad[offset:offset + p.numel()].view_as(p) for p, offset in zip(params, self.offsets)]
        covered = torch.zeros(end, dtype=torch.bool)
        for p, offset in zip(params, self.offsets):
            covered[offset:offset + p.numel()] = True
        # The padding after each tensor whose size is not a multiple of the block (none for the
        # usual ranks: rank × a multiple of 64 is one, for ranks divisible by 4).
        self.gaps = (~covered).nonzero().flatten().to(first.device) if not covered.all() else None
        self.zero_codes: dict[str, int] = {}  # per quantization map: the code of 0 (neutral_gaps)

    def neutral_gaps(self, state: dict) -> None:
        """Set the padding's 8-bit moments to the codes of 0. bitsandbytes' quantizer may store a 0
        as a code next to it (its CPU code does: 131 of the signed map, ~1e-5 of the block's
        maximum); left so, the padding would carry tiny moments into the block's next maximum."""
        if self.gaps is None:
            return
        for key, qmap in (("state1", "qmap1"), ("state2", "qmap2")):
            codes = state.get(key)
            if codes is not None and codes.dtype == torch.uint8:
                if qmap not in self.zero_codes:  # once: reading it back is a device sync, and the map never changes
                    self.zero_codes[qmap] = int(state[qmap].abs().argmin())
                codes.index_fill_(0, self.gaps, self.zero_codes[qmap])
        self.flat.data.index_fill_(0, self.gaps, 0)

    def gather(self) -> None:
        """The parameters' gradients into the buffer's (one multi-tensor copy where all have one)."""
        given = [p.grad for p in self.params]
        present = [g for g in given if g is not None]
        if len(present) == len(given):
            torch._foreach_copy_(self.grads, present)
            return
        for view, grad in zip(self.grads, given):  # a tensor without a gradient this step: a zero one
            view.copy_(grad) if grad is not None else view.zero_()

    def layout(self) -> list[list[int]]:
        return [[offset, *p.shape] for p, offset in zip(self.params, self.offsets)]


class FlatOptimizer(torch.optim.Optimizer):
    """``cls`` (a bitsandbytes optimizer class) over flat buffers of ``param_groups``' tensors."""

    def __init__(self, param_groups: list[dict], cls: type, lr: float, **kwargs: Any) -> None:
        super().__init__(param_groups, {"lr": lr})
        self.cls = cls  # what its state is (engine.train.optim.optimizer_identity)
        # (bitsandbytes' 8-bit classes fix optim_bits at 8 whatever is passed: only the size decides.)
        small_below = MIN_8BIT_SIZE if kwargs.get("min_8bit_size") is None else int(kwargs["min_8bit_size"])
        # kinds: "8bit" pools (block-aligned) go to one inner optimizer, "32bit" pools to another
        # whose min_8bit_size no buffer reaches: each keeps the state bitsandbytes gives its tensors.
        self.pools: dict[str, list[tuple[int, _Pool]]] = {"8bit": [], "32bit": []}
        for index, group in enumerate(self.param_groups):
            by_kind: dict[tuple[str, torch.dtype, torch.device], list[torch.Tensor]] = {}
            for p in group["params"]:
                kind = "32bit" if p.numel() < small_below else "8bit"
                by_kind.setdefault((kind, p.dtype, p.device), []).append(p)
            for (kind, _, _), params in by_kind.items():
                self.pools[kind].append((index, _Pool(params, BLOCK if kind == "8bit" else 1)))
        self.inner: dict[str, torch.optim.Optimizer] = {}
        for kind, pools in self.pools.items():
            if pools:
                groups = [{**_hyper(self.param_groups[index]), "params": [pool.flat]} for index, pool in pools]
                extra = {"min_8bit_size": 2**62} if kind == "32bit" else {}
                self.inner[kind] = cls(groups, lr=lr, **{**kwargs, **extra})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for kind, optimizer in self.inner.items():
            for (index, pool), inner_group in zip(self.pools[kind], optimizer.param_groups):
                inner_group.update(_hyper(self.param_groups[index]))  # the schedule's learning rate
                pool.gather()
            optimizer.step()
            for _, pool in self.pools[kind]:
                pool.neutral_gaps(optimizer.state[pool.flat])
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"flat": {kind: optimizer.state_dict() for kind, optimizer in self.inner.items()},
                "layout": self._layout(), "param_groups": [_hyper(g) for g in self.param_groups]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "flat" not in state_dict:
            state_dict = self._from_per_tensor(state_dict)
        if state_dict.get("layout") != self._layout():
            raise ValueError("the saved optimizer state is laid out for other parameters")
        for kind, optimizer in self.inner.items():
            optimizer.load_state_dict(state_dict["flat"][kind])
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            group.update(saved)

    def _layout(self) -> dict[str, list]:
        return {kind: [[index, pool.layout()] for index, pool in pools] for kind, pools in self.pools.items()}

    def _from_per_tensor(self, saved: dict[str, Any]) -> dict[str, Any]:
        """A state dict of the same bitsandbytes optimizer stepping each tensor, as the buffers'."""
        order = [p for g in self.param_groups for p in g["params"]]
        if len(saved["param_groups"]) != len(self.param_groups) or sum(len(g["params"]) for g in saved["param_groups"]) != len(order):
            raise ValueError("the saved optimizer state is for other parameters")
        ids = [i for g in saved["param_groups"] for i in g["params"]]
        per_param = {id(p): _unwrapped(saved["state"].get(i)) for p, i in zip(order, ids)}
        if any(state and "state1" not in state for state in per_param.values()):
            raise ValueError("the saved optimizer state is another optimizer's (not bitsandbytes')")
        flat: dict[str, Any] = {}
        for kind, optimizer in self.inner.items():
            mine = optimizer.state_dict()
            states: dict[int, dict] = {}
            for slot, (_, pool) in enumerate(self.pools[kind]):
                got = [per_param[id(p)] for p in pool.params]
                if all(not s for s in got):
                    continue  # no step taken yet
                if any(not s for s in got):
                    raise ValueError("the saved optimizer state covers only some of the parameters")
                states[slot] = _joined(pool, got, kind)
            mine["state"] = states
            mine["param_groups"] = [{**g, "params": [slot]} for slot, g in enumerate(mine["param_groups"])]
            flat[kind] = mine
        return {"flat": flat, "layout": self._layout(), "param_groups": [_hyper(g) for g in saved["param_groups"]]}


def _hyper(group: dict) -> dict:
    """A parameter group's settings without its parameters."""
    return {k: v for k, v in group.items() if k != "params"}


def _unwrapped(state: dict | None) -> dict:
    """bitsandbytes' per-tensor state with its quantization tensors unwrapped (its state_dict wraps them)."""
    if not state:
        return {}
    state = dict(state)
    for key in [k for k, v in state.items() if isinstance(v, dict)]:
        state.update(state.pop(key))
    return state


def _joined(pool: _Pool, states: list[dict], kind: str) -> dict:
    """The per-tensor states of ``pool``'s tensors as the buffer's one state."""
    steps = {int(s["step"]) for s in states}
    if len(steps) != 1:
        raise ValueError("the saved optimizer state has tensors at different steps")
    size = pool.flat.numel()
    joined: dict[str, Any] = {"step": steps.pop()}
    for key in ("state1", "state2"):
        if key not in states[0]:
            continue
        sample = states[0][key]
        if sample.dtype == torch.uint8:
            qmap = states[0]["qmap1" if key == "state1" else "qmap2"]
            zero = int(qmap.abs().argmin())  # the gap's code must decode to 0 whatever its block's maximum
            buffer = torch.full((size,), zero, dtype=torch.uint8, device=sample.device)
        else:
            buffer = torch.zeros(size, dtype=sample.dtype, device=sample.device)
        for s, p, offset in zip(states, pool.params, pool.offsets):
            buffer[offset:offset + p.numel()] = s[key].reshape(-1)
        joined[key] = buffer
    for key in ("absmax1", "absmax2"):
        if key in states[0]:
            joined[key] = torch.cat([s[key] for s in states])  # each tensor's blocks, in order (they are aligned)
    for key in ("qmap1", "qmap2", "unorm_vec"):
        if key in states[0]:
            joined[key] = states[0][key]
    if kind == "8bit" and joined.get("state1") is not None and joined["state1"].dtype != torch.uint8:
        raise ValueError("the saved optimizer state kept 32-bit state where 8-bit is expected")
    return joined
