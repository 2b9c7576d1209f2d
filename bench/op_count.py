"""ATen operators a training step dispatches, counted on the CPU.

On a GPU every operator that computes is a kernel launch, and copylora's steps are bound by
launching kernels, not by arithmetic (docs/BENCHMARKS.md, "Twin training"): a CPU cannot time
that, but it can count what a GPU would launch. Two figures per step: all operators (the
host's eager dispatching work) and the kernels (views and allocations left out: they launch
nothing, and a CUDA graph replays only the kernels). CPU only: on CUDA the backward runs on
another thread, which a dispatch mode does not see.
"""

from __future__ import annotations

import statistics
from typing import Callable

# Operators that only describe memory (views, allocations): no kernel on a GPU.
NO_KERNEL = {"_unsafe_view", "new_empty_strided", "new_empty", "empty", "empty_strided", "empty_like", "lift_fresh"}


def ops_per_step(run: Callable) -> tuple[float, float]:
    """(operators, kernels) of the median step of ``run(controls)``, a training call that reports
    every step through ``controls`` (a :class:`engine.train.controls.TrainControls`); the median,
    because a step that also checks the copy or saves counts more."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from engine.train.controls import TrainControls

    class Counter(TorchDispatchMode):
        ops = kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.ops += 1
            if not (func.is_view or func.overloadpacket.__name__ in NO_KERNEL):
                Counter.kernels += 1
            return func(*args, **(kwargs or {}))

    marks: list[tuple[int, int]] = []
    with Counter():
        run(TrainControls(on_progress=lambda _p: marks.append((Counter.ops, Counter.kernels))))
    if len(marks) < 2:
        raise ValueError("counting needs at least two steps reported")
    return (statistics.median(b[0] - a[0] for a, b in zip(marks, marks[1:])),
            statistics.median(b[1] - a[1] for a, b in zip(marks, marks[1:])))
