"""The one-LoRA routes' training (``[project] method = "addift"`` or ``"slider"``,
:mod:`engine.project.pair_route`): one LoRA, one run, A's and B's pictures both.

The loop, checkpoints, resume, previews and the final save are :mod:`engine.train.trainer`'s and
:class:`engine.train.side_run.SideRun`'s, for a side named ``pair`` (``NAME_PAIR.safetensors``,
``runs/PAIR``): its data are A's; :class:`PairSides` adds B's, item for item. Each route is
only its step (:mod:`engine.train.addift_step`, :mod:`engine.train.slider_step`), drawing both
pictures' latents with one noise from the run's generator (``SideRun.draw_latents``), so a
resumed run is bit for bit the uninterrupted one, as for the copier routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.project.pair_route import PAIR, PAIR_METHODS, ROUTE_NAMES
from engine.project.plan import Plan
from engine.train.controls import NO_CONTROLS, TrainControls
from engine.train.results import Log, TrainingError, TrainResult
from engine.train.side_run import SideRun
from engine.train.trainer import OneSide, run_training
from engine.train.training_data import training_data

if TYPE_CHECKING:
    from engine.models.loading import BaseModel


class PairSides(OneSide):
    """The pair's one LoRA, applied to the U-Net, with B's data beside its own (A's)."""

    copy_checks = False  # a copy check scores a copier LoRA against its teacher: these routes train none

    def __init__(self, runs: list[SideRun], log: Log) -> None:
        super().__init__(runs, log)
        method = self.run.plan.project.info.method
        self.label = f"one LoRA on A and B ({ROUTE_NAMES[method]})"
        self.data_b = training_data(self.run.model, self.run.plan, "b", log)
        if len(self.data_b.items) != len(self.run.data.items):
            raise TrainingError(f"A has {len(self.run.data.items)} training items and B {len(self.data_b.items)}: "
                                f"the {method} route trains them in pairs")
        if self.run.p.copy_check_every_n_steps:
            log(f"copy checks are off: the {method} route trains no copier LoRA to score")


def step_type(method: str) -> type:
    if method == "addift":
        from engine.train.addift_step import AddiftStep

        return AddiftStep
    if method == "slider":
        from engine.train.slider_step import SliderStep

        return SliderStep
    raise TrainingError(f"{method!r} is not a one-LoRA route ({', '.join(PAIR_METHODS)})")


def train_pair(plan: Plan, *, resume: bool = False, device: str | None = None, model: BaseModel | None = None,
               controls: TrainControls = NO_CONTROLS, log: Log = print) -> TrainResult:
    """Train the one-LoRA route's LoRA; the arguments are :func:`engine.train.trainer.train`'s."""
    method = plan.project.info.method
    return run_training(plan, [PAIR], PairSides, resume=resume, device=device, model=model, controls=controls, log=log,
                        step_type=step_type(method))[PAIR]


class PairStep:
    """What both routes' steps share: the run, B's data, the U-Net call, the loss read."""

    def __init__(self, driver: PairSides, model: BaseModel, forward, amp, weight_dtype, *, defer: bool) -> None:
        self.driver, self.run, self.data_b = driver, driver.run, driver.data_b
        self.forward, self.amp, self.weight_dtype, self.defer = forward, amp, weight_dtype, defer
        self.scheduler = model.noise_scheduler
        self.v_prediction = model.prediction_type == "v_prediction"
        self.multiplier = float(self.run.p.pair_multiplier)

    def unet(self, noisy, timesteps, cond, added, multiplier: float):
        """The U-Net with the LoRA at ``multiplier`` (0: the frozen base: the LoRA adds nothing)."""
        self.run.network.set_multiplier(multiplier)
        with self.amp:
            return self.forward(noisy.to(self.weight_dtype), timesteps, cond.to(self.weight_dtype), added_cond_kwargs=added).sample

    def checked(self, step: int, loss):
        """Raise before the update when a loss is not finite (where reading it is free: the CPU)."""
        import math

        if not self.defer:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise self.run.diverged(step + 1, value)
        return loss
