"""Twin training: sides A and B in one process, as one batch of two.

Training is bound by launching kernels, not by the GPU's arithmetic: on an H100 at 600×900 a
step kept the GPU busy ~48 ms of ~220 (docs/BENCHMARKS.md). Two separate runs pay every
launch twice; a batch of two pays it once. Sample 0 (A's picture) goes through A's LoRA and
sample 1 (B's) through B's: per LoRA target, both LoRAs as one batched pair of matmuls over
their stacked weights — inside the Linear's own function (:mod:`engine.lora.fused`) or, for a
1×1 convolution, in a forward hook (:func:`batched_pair`); 0.60 of two sides' kernels a step on
tiny — or each side's module on its half (:class:`TwinHooks`). Each side keeps
everything else of its own — its random stream (so the noise and timesteps are those of a
separate run), optimizer, schedule, grad scaler, gradient clipping, checkpoints and LoRA
file — so a twin run and two separate runs give the same LoRAs
(to float rounding: a batch of two is summed in another order; tested within 1e-4), and a side
can resume from a twin run's checkpoint alone, or the other way round.

It applies when A and B train the same way (the copy-machine route): the same settings, the
same picture sizes, the U-Net only, no class pictures or further concepts ([reg] folder "" —
each picture under its own caption — is fine). :func:`engine.project.plan.twin_problem` says why
not otherwise (it imports no torch: the queue asks it when it plans the jobs).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from engine.project.plan import Plan, twin_problem
from engine.train.controls import NO_CONTROLS, TrainControls
from engine.train.progress import Progress
from engine.train.results import Log, TrainingError, TrainResult
from engine.train.side_run import Draw, SideRun
from engine.train.trainer import run_training

if TYPE_CHECKING:
    from engine.models.loading import BaseModel

SIDES = ("a", "b")


class TwinNotPossible(TrainingError):
    """A and B cannot train as one batch (settings or resumable steps differ): train them apart."""


class TwinHooks:
    """Per LoRA target, the first half of the batch through A's LoRA, the second half through
    B's: a Linear's forward replaced by one function of the base and both LoRAs, a forward hook
    elsewhere."""

    def __init__(self, network_a, network_b) -> None:
        by_name = {lora.name: lora for lora in network_b.loras()}
        self.pairs = [(lora, by_name[lora.name]) for lora in network_a.loras()]
        self.handles: list = []

    def apply(self) -> None:
        from torch import nn

        from engine.lora import fused

        for lora_a, lora_b in self.pairs:
            add_both = self._hook(lora_a, lora_b)
            if isinstance(lora_a.lora_down, nn.Linear) and fused.fusable(lora_a.base):
                self.handles.append(fused.ForwardReplaced(lora_a.base, self._fused(lora_a, lora_b, add_both)))
            else:
                self.handles.append(lora_a.base.register_forward_hook(add_both))

    @staticmethod
    def _fused(lora_a, lora_b, add_both):
        """The Linear's forward with both LoRAs inside it, A's on the first half of the batch and
        B's on the second (:mod:`engine.lora.fused`); ``add_both``'s way where that cannot run."""
        import torch

        from engine.lora.fused import linear_with_loras, plain_linear
        from engine.lora.step_weights import KEY

        base = lora_a.base

        def forward(x):
            if same_pair(lora_a, lora_b, x):
                # Stacked once for the whole forward where the step prepared them (engine.lora.step_weights)
                down, up = lora_a.__dict__.get(KEY) or (torch.stack((lora_a.lora_down.weight, lora_b.lora_down.weight)),
                                                        torch.stack((lora_a.lora_up.weight, lora_b.lora_up.weight)))
                output = linear_with_loras(base, x, down, up, lora_a.multiplier * lora_a.scale)
                if output is not None:
                    return output
            return add_both(base, (x,), plain_linear(base, x))

        return forward

    @staticmethod
    def _hook(lora_a, lora_b):
        import torch

        batched = batchable(lora_a) and batchable(lora_b)

        def add_both(module, args, output):
            x = args[0]
            half = x.shape[0] // 2
            if 2 * half != x.shape[0]:
                raise TrainingError(f"twin training needs an even batch at {lora_a.name}, got {x.shape[0]}")
            if batched:
                added = batched_pair(lora_a, lora_b, x, output)
                if added is not None:
                    return added
            return output + torch.cat([lora_a.contribution(x[:half], output.dtype), lora_b.contribution(x[half:], output.dtype)])

        return add_both

    def fused_pairs(self) -> list:
        """The pairs whose Linear runs the twin's fused function (the others are hooks)."""
        from engine.lora.fused import ForwardReplaced

        return [pair for pair, handle in zip(self.pairs, self.handles) if isinstance(handle, ForwardReplaced)]

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


def batchable(lora) -> bool:
    """Whether :func:`batched_pair` can take this LoRA: a Linear target, or a 1×1 convolution
    (SD1.5's ``proj_in`` / ``proj_out``), which is a matmul over the channels."""
    from torch import nn

    down = lora.lora_down
    if isinstance(down, nn.Linear):
        return True
    return (isinstance(down, nn.Conv2d) and down.kernel_size == (1, 1) and down.stride == (1, 1) and down.padding == (0, 0)
            and down.dilation == (1, 1) and down.groups == 1)


def batched_pair(lora_a, lora_b, x, output):
    """``output`` plus A's LoRA on the first half of the batch and B's on the second, as two
    batched matmuls over the stacked weights; None where that does not apply (the caller then runs
    each side's module on its half). Both LoRAs must be :func:`batchable`.

    Why: per LoRA target the module-per-half way is ~10 operators forward (two slices, four
    matmuls, two scalings, a concatenation, the sum) and more backward (the slices' gradients are
    zero-filled and copied back); here it is two stacks, a ``bmm`` and a ``baddbmm`` (which scales
    and adds in the matmul). A LoRA's operators are most of a step's (docs/BENCHMARKS.md, "Twin
    training"), and on a GPU each is a kernel launch. The arithmetic is the same up to rounding
    (the scaling and the sum happen inside the matmul), within the twin/separate tolerance the
    tests hold."""
    import torch

    if not pair_batches(lora_a, lora_b, x, output):
        return None
    scale = lora_a.multiplier * lora_a.scale
    conv = not isinstance(lora_a.lora_down, torch.nn.Linear)  # a 1×1 convolution on (2, channels, height, width)
    # (2, rank, in) and (2, out, rank); a 1×1 convolution's (rank, in, 1, 1) weights as matrices
    down = torch.stack((lora_a.lora_down.weight.flatten(1), lora_b.lora_down.weight.flatten(1)))
    up = torch.stack((lora_a.lora_up.weight.flatten(1), lora_b.lora_up.weight.flatten(1)))
    if not torch.is_autocast_enabled(x.device.type):
        x = x.to(down.dtype)
    # Each side's features as a matrix of (channels, positions), so that the weights are the
    # first operand of both matmuls: their gradients then come out in the parameters' own layout
    # (features first, they came out transposed and were copied into it: four copies per target
    # and step). A Linear's (..., features) halves are transposed views; its result is copied
    # back to the output's layout once.
    if conv:
        pairs, outputs = x.reshape(2, x.shape[1], -1), output.reshape(2, output.shape[1], -1)
    else:
        pairs, outputs = x.reshape(2, -1, x.shape[-1]).transpose(1, 2), output.reshape(2, -1, output.shape[-1]).transpose(1, 2)
    added = torch.baddbmm(outputs, up, torch.bmm(down, pairs), alpha=scale)  # (2, out, positions)
    return (added if conv else added.transpose(1, 2)).reshape(output.shape)


def pair_batches(lora_a, lora_b, x, output) -> bool:
    """Whether :func:`batched_pair` applies to these two (:func:`batchable`) LoRAs at this call."""
    import torch

    # A base in another precision than the LoRA, without autocast: each side casts.
    dtype_ok = torch.is_autocast_enabled(x.device.type) or output.dtype == lora_a.lora_down.weight.dtype
    return dtype_ok and same_pair(lora_a, lora_b, x)


def same_pair(lora_a, lora_b, x) -> bool:
    """Whether the two LoRAs can run as one stack on this input (precisions aside): both on, at one
    scale, of one shape and precision."""
    import torch

    if lora_a.full_precision or lora_b.full_precision or lora_a.multiplier == 0 or lora_b.multiplier == 0:
        return False
    down_a, down_b = lora_a.lora_down.weight, lora_b.lora_down.weight
    if down_a.shape != down_b.shape or down_a.dtype != down_b.dtype:
        return False  # ranks or precisions apart (e.g. started from files of their own): no one stack
    conv = not isinstance(lora_a.lora_down, torch.nn.Linear)
    if lora_a.multiplier * lora_a.scale != lora_b.multiplier * lora_b.scale or (conv and (x.dim() != 4 or x.shape[0] != 2)):
        return False  # sides scaled apart, or several pictures a side (their channels are no one matrix without a copy)
    return True


class TwinSides:
    """A and B as one batch of two: sample 0 through A's LoRA, sample 1 through B's
    (:class:`TwinHooks`); the loop and the step are :mod:`engine.train.trainer`'s."""

    applies_networks = False  # the hooks route each half of the batch to its side's LoRA

    def __init__(self, runs: list[SideRun], log: Log) -> None:
        self.runs, self.log = runs, log
        self.label = "A and B together"
        self.hooks: TwinHooks | None = None

    def start_step(self, resume: bool) -> int:
        """The step both sides resume from (they must share it), then the hooks go in."""
        from engine.train.checkpoint import list_states, state_step

        newest = [max((state_step(p) for p in list_states(run.run_dir)), default=0) for run in self.runs]
        if resume and min(newest) == 0 < max(newest) == self.runs[0].p.save_every_n_steps:
            # Killed between the two sides' first checkpoint writes: one side's first periodic
            # checkpoint is all there is, and no step is shared. Trained apart from there, the
            # run took half again as long and was no longer the uninterrupted one; both start
            # again as one twin run, which it is (decided before anything is loaded: a side
            # restored is not reset). A side trained or stopped alone before, at another step,
            # keeps its checkpoint: it resumes apart, as it did.
            has, none = ("A", "B") if newest[0] else ("B", "A")
            self.log(f"{has} has its first checkpoint (step {max(newest)}) and {none} none: both start again from step 0, "
                     "as one twin run")
            resume = False
        starts = [run.resume_or_reset(resume) for run in self.runs]
        if resume and len(set(starts)) > 1 and min(starts) > 0:
            # Killed between A's and B's checkpoint writes: the newer side still holds the
            # previous checkpoint (two are kept), so both resume from the step they share and
            # the run stays one twin run (bit for bit the run that was never interrupted).
            shared = [run.resume_or_reset(True, at_most=min(starts)) for run in self.runs]
            if len(set(shared)) == 1 and shared[0] > 0:
                self.log(f"A's newest checkpoint is at step {starts[0]} and B's at step {starts[1]}: both resume from step {shared[0]}")
                starts = shared
        if len(set(starts)) > 1:
            raise TwinNotPossible(f"A's checkpoint is at step {starts[0]} and B's at step {starts[1]}: they resume apart")
        self.hooks = TwinHooks(self.runs[0].network, self.runs[1].network)
        self.hooks.apply()
        return starts[0]

    def inputs(self, draws: list[Draw]) -> tuple[Any, Any, Any, dict | None]:
        import torch

        noisy, timesteps, cond = (torch.cat([getattr(d, k) for d in draws]) for k in ("noisy", "timesteps", "cond"))
        first = draws[0].added
        added = None if first is None else {k: torch.cat([d.added[k] for d in draws if d.added is not None]) for k in first}
        return noisy, timesteps, cond, added

    def weights_once(self, device_type: str) -> AbstractContextManager:
        """The pairs' stacks (cast to the step's precision) made once for the forward."""
        from engine.lora.step_weights import prepared

        return prepared(device_type, pairs=self.hooks.fused_pairs() if self.hooks is not None else ())

    def progress(self, progress: list[Progress]) -> Progress:
        """A's progress, carrying B's loss."""
        return replace(progress[0], loss_b=progress[1].loss, smooth_loss_b=progress[1].smooth_loss)

    def previewing(self) -> AbstractContextManager:
        assert self.hooks is not None
        return self.hooks.suspended()  # a preview applies one side's own network

    def named(self, run: SideRun, what: str) -> str:
        return f"{what} ({run.side.upper()})"

    def final_save(self, step: int) -> list[tuple[Path | None, Path]]:
        """Every side is saved (or rescued) before a failure is raised."""
        states: list[tuple[Path | None, Path]] = []
        failures = []
        for run in self.runs:
            try:
                states.append(run.final_save(step))
            except TrainingError as exc:
                failures.append(f"{run.side.upper()}: {exc}")
        if failures:
            raise TrainingError("; ".join(failures))
        return states

    def close(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()


def train_twin(plan: Plan, *, resume: bool = False, device: str | None = None, model: BaseModel | None = None,
               controls: TrainControls = NO_CONTROLS, log: Log = print) -> dict[str, TrainResult]:
    """Train A and B together; the arguments are :func:`engine.train.trainer.train`'s, for the
    pair (progress carries A's loss in ``loss`` and B's in ``loss_b``). Raises
    :class:`TwinNotPossible` before training when they cannot go together."""
    problem = twin_problem(plan)
    if problem:
        raise TwinNotPossible(f"A and B cannot train as one batch: {problem}")
    return run_training(plan, list(SIDES), TwinSides, resume=resume, device=device, model=model, controls=controls, log=log)
