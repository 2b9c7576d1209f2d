"""Twin training: sides A and B in one process, as one batch of two.

Training is bound by launching kernels, not by the GPU's arithmetic: on an H100 at 600×900 a
step kept the GPU busy ~48 ms of ~220 (docs/BENCHMARKS.md). Two separate runs pay every
launch twice; a batch of two pays it once. Sample 0 (A's picture) goes through A's LoRA and
sample 1 (B's) through B's: one forward hook per LoRA target splits the batch
(:class:`TwinHooks`). Each side keeps everything else of its own — its random stream (so the
noise and timesteps are those of a separate run), optimizer, schedule, grad scaler, gradient
clipping, checkpoints and LoRA file — so a twin run and two separate runs give the same LoRAs
(to float rounding: a batch of two is summed in another order; tested within 1e-4), and a side
can resume from a twin run's checkpoint alone, or the other way round.

It applies when A and B train the same way (the copy-machine route): the same settings, the
same picture sizes, the U-Net only, no [reg]. :func:`engine.project.plan.twin_problem` says why
not otherwise (it imports no torch: the queue asks it when it plans the jobs).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from engine.project.plan import Plan, twin_problem
from engine.train.progress import Progress
from engine.train.trainer import Log, TrainingError, TrainResult, train_sides

SIDES = ("a", "b")


class TwinNotPossible(TrainingError):
    """A and B cannot train as one batch (settings or resumable steps differ): train them apart."""


class TwinHooks:
    """Per LoRA target, one forward hook: the first half of the batch through A's module, the
    second half through B's."""

    def __init__(self, network_a, network_b) -> None:
        by_name = {lora.name: lora for lora in network_b.loras()}
        self.pairs = [(lora, by_name[lora.name]) for lora in network_a.loras()]
        self.handles: list = []

    def apply(self) -> None:
        for lora_a, lora_b in self.pairs:
            self.handles.append(lora_a.base.register_forward_hook(self._hook(lora_a, lora_b)))

    @staticmethod
    def _hook(lora_a, lora_b):
        import torch

        def add_both(module, args, output):
            x = args[0]
            half = x.shape[0] // 2
            if 2 * half != x.shape[0]:
                raise TrainingError(f"twin training needs an even batch at {lora_a.name}, got {x.shape[0]}")
            return output + torch.cat([lora_a.contribution(x[:half], output.dtype), lora_b.contribution(x[half:], output.dtype)])

        return add_both

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Without the twin hooks (a preview applies one side's own network)."""
        self.remove()
        try:
            yield
        finally:
            self.apply()


def train_twin(
    plan: Plan,
    *,
    resume: bool = False,
    device: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    save_requested: Callable[[], bool] | None = None,
    sample_requested: Callable[[], bool] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    log: Log = print,
    model=None,
) -> dict[str, TrainResult]:
    """Train A and B together; the arguments are :func:`engine.train.trainer.train`'s, for the
    pair (progress carries A's loss in ``loss`` and B's in ``loss_b``). Raises
    :class:`TwinNotPossible` before training when they cannot go together."""
    problem = twin_problem(plan)
    if problem:
        raise TwinNotPossible(f"A and B cannot train as one batch: {problem}")
    return train_sides(plan, list(SIDES), resume=resume, device=device, on_progress=on_progress, should_stop=should_stop,
                       save_requested=save_requested, sample_requested=sample_requested, on_start=on_start, log=log,
                       model=model)
