"""The overfit trainer: one LoRA that copies one teacher picture.

Read :func:`run_training` top to bottom: set-up (device, precision, base model, each side's
cached data, LoRA, optimizer and schedule in :class:`engine.train.side_run.SideRun`), resume,
then :func:`_loop`, one straight loop over steps (stop? → :func:`train_step` → losses read and
progress reported → checkpoint → preview), then the final save. A *driver* says how the sides
share a step: :class:`OneSide` here, :class:`engine.train.twin.TwinSides` for A and B as one
batch of two; the loop and the step are the same for both.

Determinism: everything random comes from each side's CPU ``torch.Generator`` (noise,
timesteps, flips) whose state is checkpointed, and the data order is a pure function of
(seed, epoch). So on CPU, N steps + resume + M steps gives bit-identical LoRA tensors to N+M
steps in one go.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from engine.project.plan import Plan, SidePlan, base_weights_for
from engine.train.base_weights import apply_base_weights, check_base_weights
from engine.train.checkpoint import list_states, state_step
from engine.train.controls import NO_CONTROLS, TrainControls
from engine.train.copy_check import CopyWatch
from engine.train.loss_reads import PendingLosses, defers_loss_reads
from engine.train.progress import Progress, ProgressMeter
from engine.train.rescue import FolderWatch, removed_message
from engine.train.results import Log, TrainingError, TrainResult
from engine.train.room import STOP_WAIT_S, write_with_room
from engine.train.side_run import Draw, SideRun

if TYPE_CHECKING:
    from engine.models.loading import BaseModel

__all__ = ["Log", "TrainingError", "TrainResult", "TrainControls", "train", "run_training", "pick_device"]


def pick_device(requested: str | None = None, model: BaseModel | None = None) -> str:
    """The device to train on (engine/devices.py's rule)."""
    from engine.devices import resolve_device

    return resolve_device(requested, model)



def _precision(requested: str, device: str, log: Log):
    """(weight dtype, autocast dtype or None, use grad scaler)."""
    import torch

    if requested == "no":
        return torch.float32, None, False
    if device == "cpu" and requested == "fp16":
        log("fp16 needs a CUDA GPU; training in fp32 on the CPU")
        return torch.float32, None, False
    if requested == "bf16":
        return (torch.bfloat16 if device != "cpu" else torch.float32), torch.bfloat16, False
    return torch.float16, torch.float16, True



def prepare_model(plan: Plan, side: str, device: str, weight_dtype, log: Log, model: BaseModel | None = None) -> BaseModel:
    """The base model, loaded unless given, frozen, in training mode."""
    from engine.models.loading import load_base_model

    p, project = plan.side(side).params, plan.project
    if model is None:
        log(f"loading base model {project.info.base_model}")
        model = load_base_model(project.base_model_path(), project.info.model_family, dtype=weight_dtype, device=device)
    for part in (model.unet, model.vae, *model.text_encoders):
        part.requires_grad_(False)
    if p.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.unet.train()
    return model


def unet_forward(unet, wanted: bool, device: str, log: Log):
    """The U-Net as the training step calls it: through torch.compile when ``[train] compile``
    asks for it on CUDA, where a step is bound by launching thousands of small kernels
    (docs/BENCHMARKS.md), else the module itself. Not on the CPU: inductor's CPU code gave
    gradients 10 % off on the tiny U-Net, with or without a LoRA (bench/compile_check.py). The
    LoRA hooks are in place before the first call, so the compiled graph includes them."""
    if not wanted:
        return unet
    if not device.startswith("cuda"):
        log("compile = true is ignored on the CPU (torch.compile's CPU code gave wrong gradients here); training uncompiled")
        return unet
    import torch

    log("compiling the U-Net (torch.compile): the first steps wait for the compiler, a minute or more")
    return torch.compile(unet)


def free_vae(model: BaseModel, device: str) -> None:
    """The VAE is not needed once the latents are cached: give its memory to training."""
    import torch

    model.vae.to("cpu")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def autocast_for(device: str, autocast_dtype):
    import torch

    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=autocast_dtype or torch.float32,
                          enabled=autocast_dtype is not None)



class SidesDriver(Protocol):
    """How the sides of one run share a step (:class:`OneSide`, :class:`engine.train.twin.TwinSides`)."""

    applies_networks: bool  # each side's LoRA hooked into the U-Net itself (else the driver routes the batch)
    runs: list[SideRun]
    label: str

    def __init__(self, runs: list[SideRun], log: Log) -> None: ...
    def start_step(self, resume: bool) -> int: ...
    def inputs(self, draws: list[Draw]) -> tuple[Any, Any, Any, dict | None]: ...
    def progress(self, progress: list[Progress]) -> Progress: ...
    def previewing(self) -> AbstractContextManager: ...
    def weights_once(self, device_type: str) -> AbstractContextManager: ...
    def named(self, run: SideRun, what: str) -> str: ...
    def final_save(self, step: int) -> list[tuple[Path | None, Path]]: ...
    def close(self) -> None: ...


class OneSide:
    """One side: its LoRA applied to the U-Net, its batch as drawn."""

    applies_networks = True

    def __init__(self, runs: list[SideRun], log: Log) -> None:
        (self.run,) = self.runs = runs
        self.label = self.run.side.upper()

    def start_step(self, resume: bool) -> int:
        return self.run.resume_or_reset(resume)

    def inputs(self, draws: list[Draw]) -> tuple[Any, Any, Any, dict | None]:
        (draw,) = draws
        return draw.noisy, draw.timesteps, draw.cond, draw.added

    def weights_once(self, device_type: str) -> AbstractContextManager:
        """The LoRA's weights cast to the step's precision once for the forward (engine.lora.step_weights)."""
        from engine.lora.step_weights import prepared

        return prepared(device_type, singles=self.run.network.loras())

    def progress(self, progress: list[Progress]) -> Progress:
        return progress[0]

    def previewing(self) -> AbstractContextManager:
        return nullcontext()

    def named(self, run: SideRun, what: str) -> str:
        """``what`` (a checkpoint's name, "checkpoint") as the log says it of this side."""
        return what

    def final_save(self, step: int) -> list[tuple[Path | None, Path]]:
        return [self.run.final_save(step)]

    def close(self) -> None:
        pass


def train(plan: Plan, side: str, *, resume: bool = False, device: str | None = None, model: BaseModel | None = None,
          controls: TrainControls = NO_CONTROLS, log: Log = print) -> TrainResult:
    """Train one side's LoRA. ``resume``: continue from the newest valid state in the run
    folder (else start fresh and drop old states). ``controls``: how the caller steers the run
    and hears its progress (:class:`engine.train.controls.TrainControls`). ``model`` reuses an
    already loaded base model (left as it was found)."""
    side = side.lower()
    from engine.project.pair_route import PAIR

    if side == PAIR:  # the one-LoRA routes' side trains by its route's step, never as a copier
        from engine.train.pair_training import train_pair

        return train_pair(plan, resume=resume, device=device, model=model, controls=controls, log=log)
    return run_training(plan, [side], OneSide, resume=resume, device=device, model=model, controls=controls, log=log)[side]


def run_training(plan: Plan, sides: list[str], driver_type: type[SidesDriver], *, resume: bool,
                 device: str | None, model: BaseModel | None, controls: TrainControls, log: Log,
                 step_type: type | None = None) -> dict[str, TrainResult]:
    """Set up ``sides`` (one, or A and B for a twin driver), then run the loop. ``step_type``:
    the step of another objective (the one-LoRA routes' :mod:`engine.train.addift_step`,
    :mod:`engine.train.slider_step`), called like :class:`StepFunction`."""
    from engine.train.side_lock import side_locks

    if plan.outputs.shared:  # an output folder other projects may use: not one of another project of this name
        from engine.project.output_owner import claim

        if problem := claim(plan.project.root, plan.project.name, plan.outputs.runs):
            raise TrainingError(problem)
    learns_on = "a" if base_weights_for(plan, sides[0]) is not None else None  # the differential route's B: A stays as B learns on it
    with side_locks(plan, sides, learns_on):  # before minutes of loading: a side another process trains is said at once
        return _run_training(plan, sides, driver_type, resume=resume, device=device, model=model, controls=controls, log=log,
                             step_type=step_type)


def _run_training(plan: Plan, sides: list[str], driver_type: type[SidesDriver], *, resume: bool,
                  device: str | None, model: BaseModel | None, controls: TrainControls, log: Log,
                  step_type: type | None) -> dict[str, TrainResult]:
    sp: SidePlan = plan.side(sides[0])
    p = sp.params
    started = time.time()
    device = pick_device(device, model)
    weight_dtype, autocast_dtype, use_scaler = _precision(p.mixed_precision, device, log)
    base_weights = base_weights_for(plan, sides[0])  # the differential route's B (never a twin: twin_problem says why)
    if base_weights is not None:
        check_base_weights(base_weights)  # before minutes of loading a model
    from engine.project.images import pair_warnings

    for warning in pair_warnings(plan.side("a").images, plan.side("b").images):  # A = B, or sizes apart: said as check says it
        log(f"warning: {warning}")
    checkpointing = model is not None and model.unet.is_gradient_checkpointing  # as it was found (a shared model)
    model = prepare_model(plan, sides[0], device, weight_dtype, log, model)
    # The differential route's B trains on the base with A applied (before B's text is encoded).
    applied = apply_base_weights(model, base_weights, device, log) if base_weights is not None else None
    runs: list[SideRun] = []
    driver: SidesDriver | None = None
    try:
        for side in sides:  # one by one: if B's set-up fails (its start file), A's is still undone below
            runs.append(SideRun(plan, side, model, device=device, weight_dtype=weight_dtype, use_scaler=use_scaler, started=started,
                                log=log, apply=driver_type.applies_networks))
        if applied is not None and driver_type.applies_networks:
            applied.fold_into(runs[0].network, log)  # A's rows in B's matmuls: one LoRA's kernels a step
        free_vae(model, device)
        driver = driver_type(runs, log)
        step = driver.start_step(resume)
        from engine.lora.fused import fused_count

        inside, targets = fused_count(model.unet, *model.text_encoders), len(runs[0].network.loras())
        # One line that shows which way the LoRAs run (a GPU run that did not get faster says why here).
        log(f"LoRA targets: {inside} of {targets} computed inside their Linear's function, "
            f"{targets - inside} by forward hooks (convolutions, other layers)")
        log(f"training {driver.label}: {sp.total_steps} steps, bucket {sp.buckets[0][0]}x{sp.buckets[0][1]}, "
            f"rank {p.network_dim}, {runs[0].optimizer_used} lr {p.learning_rate:g}, {device}")
        amp = autocast_for(device, autocast_dtype)
        step_fn = (step_type or StepFunction)(driver, model, unet_forward(model.unet, p.compile, device, log), amp, weight_dtype,
                                              defer=defers_loss_reads(device))
        from engine.project.graph_rule import side_graph_problem
        from engine.train.cuda_graph import graphed

        step_fn = graphed(step_fn, p.cuda_graphs, device, side_graph_problem(plan, sides[0]), log)  # check warns of it too
        copies = CopyWatch(driver, model, amp, weight_dtype, log)
        return _loop(plan, driver, step_fn, copies, step, sp.total_steps, started, device, controls, log)
    finally:
        # The base model may be reused (tests, the sampler): leave it as it was found.
        if driver is not None:
            driver.close()
        for run in runs:
            run.network.remove()
            if run.step_log is not None:
                run.step_log.close()
        if applied is not None:
            applied.remove()
        if p.gradient_checkpointing and not checkpointing:
            model.unet.disable_gradient_checkpointing()


class StepFunction:
    """One training step of every side: draw → U-Net → loss → backward → optimizer step.

    In three parts, so that :class:`engine.train.cuda_graph.GraphedStep` can capture the middle
    one: :meth:`prepare` draws on the CPU (the random streams) and moves the inputs to the device,
    :meth:`compute` is the device's work (forward, losses, backward), :meth:`update` the
    optimizer steps (eager: the fp16 grad scaler's inf check and bitsandbytes' 8-bit step are not
    capturable)."""

    def __init__(self, driver: SidesDriver, model: BaseModel, forward, amp, weight_dtype, *, defer: bool) -> None:
        self.driver, self.runs, self.forward, self.amp, self.weight_dtype = driver, driver.runs, forward, amp, weight_dtype
        self.scheduler = model.noise_scheduler
        self.v_prediction = model.prediction_type == "v_prediction"
        self.defer = defer  # CUDA: the losses stay on the device (engine.train.loss_reads)
        # The LoRAs' weights cast once a forward (engine.lora.step_weights), except through
        # torch.compile: its graph was checked on the H100 with the per-target casts, and each
        # step's prepared weights would be new inputs to its guards.
        self.weights_once = nullcontext if hasattr(forward, "_orig_mod") else driver.weights_once

    def __call__(self, step: int):
        """Train ``step`` (0-based); the sides' losses, on the device."""
        losses = self.compute(self.prepare(step), self.training())
        self.check(step, losses)
        self.update()
        return losses

    def prepare(self, step: int) -> list[Draw]:
        return [run.draw(step, self.scheduler, self.v_prediction) for run in self.runs]

    def training(self) -> tuple[bool, ...]:
        """Which sides train this step: a twin side that its copy rule stopped is frozen (no loss
        of it in the backward, no optimizer step)."""
        return tuple(run.stopped is None for run in self.runs)

    def compute(self, draws: list[Draw], training: tuple[bool, ...]):
        """Forward, losses, one backward for all training sides; the losses, stacked, on the
        device. Side i's LoRA only sees sample i's loss (every layer works per sample); each
        side scales its own loss."""
        import torch

        half = draws[0].noisy.shape[0]
        noisy, timesteps, cond, added = self.driver.inputs(draws)
        with self.amp, self.weights_once(noisy.device.type):
            pred = self.forward(noisy.to(self.weight_dtype), timesteps, cond.to(self.weight_dtype), added_cond_kwargs=added).sample
        losses = [run.loss(pred[i * half:(i + 1) * half], draw, self.scheduler, self.v_prediction)
                  for i, (run, draw) in enumerate(zip(self.runs, draws))]
        sum(run.grad_scaler.scale(loss) for run, loss, on in zip(self.runs, losses, training) if on).backward()
        return torch.stack([loss.detach() for loss in losses])

    def check(self, step: int, losses) -> None:
        """CPU: reading is free, so a diverged step stops before its update."""
        if self.defer:
            return
        for run, value in zip(self.runs, losses.tolist()):
            if not math.isfinite(value):
                raise run.diverged(step + 1, value)

    def update(self) -> None:
        for run in self.runs:
            if run.stopped is None:
                run.optimizer_step()


class LossBook:
    """The sides' losses as the loop reads them: kept on the device until read together
    (:class:`engine.train.loss_reads.PendingLosses`), checked for divergence, fed to the
    progress meters and TensorBoard, and reported to the caller."""

    def __init__(self, driver: SidesDriver, step: int, total: int, device: str, on_progress: Callable[[Progress], None] | None,
                 copies: CopyWatch, *, defer: bool) -> None:
        self.driver, self.runs, self.device, self.on_progress, self.copies = driver, driver.runs, device, on_progress, copies
        self.pending = PendingLosses(defer)
        self.meters = [ProgressMeter(total, start_step=step) for _ in self.runs]
        for meter, run in zip(self.meters, self.runs):  # a resumed run's curve goes on from its checkpoint's
            meter.smooth = run.smooth_loss
        self.values: list[float | None] = [None] * len(self.runs)  # the newest read loss of each side

    def read(self) -> None:
        """Read what is pending; feed the meters all but the newest (:meth:`report` takes that
        one); raise if any diverged."""
        read = self.pending.read()
        for at, row, _ in read:
            for run, value in zip(self.runs, row):
                if not math.isfinite(value):
                    raise run.diverged(at, value)
        for at, row, lr in read:  # TensorBoard gets every step, as read
            for run, value in zip(self.runs, row):
                if run.step_log is not None:
                    run.step_log.step(at, value, lr)
        for at, row, lr in read[:-1]:
            for meter, value in zip(self.meters, row):
                meter.update(at, value, lr)
        self._keep_smooth()
        self.values[:] = read[-1][1]

    def read_all(self) -> None:
        """Before anything is written: never the weights of an unread (maybe diverged) step."""
        if self.pending.items:
            self.read()

    def _keep_smooth(self) -> None:
        for meter, run in zip(self.meters, self.runs):  # what the next checkpoint keeps
            run.smooth_loss = meter.smooth

    def report(self, step: int) -> None:
        """The newest step's progress to the listener (its losses have been read)."""
        vram = _vram_peak_mb(self.device) if self.on_progress is not None else None
        progress = [meter.update(step, math.nan if value is None else value, run.lr(), vram)  # read before any report
                    for meter, value, run in zip(self.meters, self.values, self.runs)]
        self._keep_smooth()  # (with no listener too: the checkpoints keep it)
        if self.on_progress is None:
            return
        copy = self.copies.latest()
        checked = [run.copy_history[-1][0] for run in self.runs if run.copy_history]
        self.on_progress(replace(self.driver.progress(progress), copy_db=copy[0], copy_db_b=copy[1] if len(copy) > 1 else None,
                                 copy_step=max(checked) if checked else None))


def _vram_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def _stop_copied(copies: CopyWatch, losses: LossBook, driver: SidesDriver, step: int, total: int, log: Log) -> bool:
    """Stop the sides whose copy rule the newest check reached; True when none trains on.
    A twin side that stops writes its LoRA now and stays frozen while the other trains."""
    copied = copies.newly_copied()
    if not copied:
        return False
    losses.read_all()  # never finish on the weights of an unread (maybe diverged) step
    for run, reason in copied:
        run.stopped = (step, reason)
        log(f"{run.side.upper()} is copied: {reason} (stop_when_copied), {total - step} of {total} steps "
            "left untrained; its LoRA is final")
    if all(run.stopped for run in driver.runs):
        return True
    for run, _ in copied:
        _, lora = run.final_save(step)
        log(f"{run.side.upper()}: {lora} written; the other side trains on")
    return False


def _loop(plan: Plan, driver: SidesDriver, train_step: Any, copies: CopyWatch, step: int, total: int, started: float,
          device: str, controls: TrainControls, log: Log) -> dict[str, TrainResult]:
    runs = driver.runs
    p = runs[0].p
    if controls.on_start is not None:
        controls.on_start(step, total)
    losses = LossBook(driver, step, total, device, controls.on_progress, copies, defer=train_step.defer)
    for run in runs:  # a final save waiting for room on a full disk stops waiting on a cancel (engine.train.room)
        run.stop_asked = controls.stop_asked
    states: list[tuple[Path | None, Path | None]] = [(None, None)] * len(runs)  # (checkpoint, LoRA) of each side
    # A project folder removed during the run is not re-created by the next write: stop, rescue.
    watch = FolderWatch(plan.project.root, [plan.project.output_dir(), *(run.run_dir for run in runs)])

    def removed(gone: str, finished: bool = False) -> TrainingError:
        losses.read_all()  # never rescue the weights of a diverged step
        return TrainingError(removed_message(gone, step, total, [run.rescue(step) for run in runs], finished))

    def results(status: str) -> dict[str, TrainResult]:
        vram = _vram_peak_mb(device) if status == "done" else None
        return {run.side: TrainResult(status, step, total, lora, state, time.time() - started, run.optimizer_used, value, vram,
                                      run.stopped[0] if run.stopped else None)
                for run, (state, lora), value in zip(runs, states, losses.values)}

    if step == 0 and copies.every:
        copies.check(0)  # the base's own figure: what training gains is read against it
    while step < total and not all(run.stopped for run in runs):  # a resumed side may be copied already
        if controls.stop_asked():
            if (gone := watch.gone(force=True)) is not None:
                raise removed(gone)
            if losses.pending.items:  # the newest step's loss too: its smoothed curve goes into the checkpoint
                losses.read()
                losses.report(step)
            for i, run in enumerate(runs):
                try:  # the steps since the last checkpoint are in memory only: a full disk is waited on (within the worker's grace)
                    states[i] = (write_with_room(lambda: run.write_state(step), driver.named(run, "the checkpoint to stop on"),
                                                 run.run_dir, log, limit_s=STOP_WAIT_S), None)
                except OSError as exc:
                    older = list_states(run.run_dir)
                    back = (f"`copylora retry` resumes from the checkpoint of step {state_step(older[0])}" if older
                            else "no earlier checkpoint was written: `copylora retry` starts it again")
                    kept = "; ".join(r.rescue(step) for r in runs)  # the rescue folder may be on a disk with room
                    raise TrainingError(f"stopped at step {step}, but its checkpoint could not be written to {run.run_dir} ({exc}); "
                                        f"{back}; {kept}") from None
            names = " and ".join(driver.named(run, state.name) for run, (state, _) in zip(runs, states) if state is not None)
            log(f"stopped at step {step}; state saved to {names}")
            return results("stopped")

        losses.pending.add(step + 1, train_step(step), runs[0].lr())
        step += 1
        if losses.pending.due(force=step == total):
            losses.read()
        copied = False
        if copies.due(step, total):
            copies.check(step)
            copied = _stop_copied(copies, losses, driver, step, total, log)
        if not losses.pending.items:
            losses.report(step)  # with a check's new figure (the queue keeps a check's step as a point)
        if copied:
            break
        asked = controls.save_asked()
        checkpoint_due = asked or bool(p.save_every_n_steps and step % p.save_every_n_steps == 0 and step < total)
        preview_due = controls.sample_asked() or bool(p.sample_every_n_steps and step % p.sample_every_n_steps == 0)
        if losses.pending.items and (checkpoint_due or preview_due):  # never write the weights of an unread (maybe diverged) step
            losses.read()
            losses.report(step)
        if (gone := watch.gone(force=checkpoint_due or preview_due)) is not None:
            raise removed(gone)
        # The snapshot and the preview before the checkpoint: a kill between them lost them for
        # good (the run resumed after their step); this way a kill before the checkpoint resumes
        # from the one before, and its step, with them, is made again.
        # A snapshot or a preview that cannot be written (a full disk) is said and passed over:
        # it ended the training, steps since the last checkpoint lost, where a checkpoint's
        # failure let it go on.
        if asked:
            for run in runs:
                try:
                    log(f"saved {run.write_snapshot(step).name} at step {step}")
                except OSError as exc:
                    log(f"warning: could not write {driver.named(run, 'the snapshot')} of step {step} ({exc}); training goes on")
        if preview_due:
            with driver.previewing():  # a preview applies one side's own network
                for run in runs:
                    try:
                        log(f"preview {run.write_preview(step).name} at step {step}")
                    except OSError as exc:
                        log(f"warning: could not write {driver.named(run, 'the preview')} of step {step} ({exc}); training goes on")
        if checkpoint_due:
            for i, run in enumerate(runs):
                try:
                    states[i] = (run.write_state(step), None)
                except OSError as exc:  # a full disk must not end hours of training: the end tries again
                    log(f"warning: could not write {driver.named(run, 'the checkpoint')} of step {step} ({exc}); training goes on")

    if (gone := watch.gone(force=True)) is not None:
        raise removed(gone, finished=True)
    states[:] = driver.final_save(step)
    log(f"done: {' and '.join(str(lora) for _, lora in states)} ({step} steps in {time.time() - started:.1f} s)")
    return results("done")
