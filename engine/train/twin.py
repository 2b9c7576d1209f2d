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

import math
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterator

from engine.project.plan import Plan, twin_problem
from engine.train.progress import Progress, ProgressMeter
from engine.train.trainer import (
    Log,
    PendingLosses,
    SideRun,
    TrainingError,
    TrainResult,
    _defers_loss_reads,
    _loss_hook,
    _precision,
    autocast_for,
    free_vae,
    pick_device,
    prepare_model,
)

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
    import torch

    problem = twin_problem(plan)
    if problem:
        raise TwinNotPossible(f"A and B cannot train as one batch: {problem}")
    sp = plan.side("a")
    p = sp.params
    started = time.time()
    device = pick_device(device)
    weight_dtype, autocast_dtype, use_scaler = _precision(p.mixed_precision, device, log)
    model = prepare_model(plan, "a", device, weight_dtype, log, model)
    v_prediction = model.prediction_type == "v_prediction"
    scheduler = model.noise_scheduler
    runs = [SideRun(plan, side, model, device=device, weight_dtype=weight_dtype, use_scaler=use_scaler, started=started,
                    log=log, apply=False) for side in SIDES]
    free_vae(model, device)
    amp = autocast_for(device, autocast_dtype)
    starts = [run.resume_or_reset(resume) for run in runs]
    if starts[0] != starts[1]:
        raise TwinNotPossible(f"A's checkpoint is at step {starts[0]} and B's at step {starts[1]}: they resume apart")
    hooks = TwinHooks(runs[0].network, runs[1].network)
    hooks.apply()
    total = sp.total_steps
    try:
        log(f"training A and B together: {total} steps, bucket {sp.buckets[0][0]}x{sp.buckets[0][1]}, rank {p.network_dim}, "
            f"{runs[0].optimizer_used} lr {p.learning_rate:g}, {device}")
        step = starts[0]
        meters = [ProgressMeter(total, start_step=step), ProgressMeter(total, start_step=step)]
        if on_start is not None:
            on_start(step, total)
        values: list[float | None] = [None, None]
        states: list = [None, None]
        pending = PendingLosses(_defers_loss_reads(device))

        def read_losses() -> None:
            read = pending.read()
            for at, row, _ in read:
                for run, value in zip(runs, row):
                    if not math.isfinite(value):
                        raise run.diverged(at, value)
            for at, row, lr in read[:-1]:
                for meter, value in zip(meters, row):
                    meter.update(at, value, lr)
            values[:] = read[-1][1]

        def report() -> None:
            if on_progress is None:
                return
            vram = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
            progress_a = meters[0].update(step, values[0], runs[0].lr(), vram)
            progress_b = meters[1].update(step, values[1], runs[1].lr(), vram)
            on_progress(replace(progress_a, loss_b=progress_b.loss, smooth_loss_b=progress_b.smooth_loss))

        def results(status: str, with_files: bool) -> dict[str, TrainResult]:
            seconds = time.time() - started
            vram = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
            return {run.side: TrainResult(status, step, total, lora if with_files else None, state, seconds, run.optimizer_used, value, vram)
                    for run, (state, lora), value in zip(runs, states, values)}

        while step < total:
            if should_stop is not None and should_stop():
                if pending.items:
                    read_losses()
                try:
                    states[:] = [(run.write_state(step), None) for run in runs]
                except OSError as exc:
                    raise TrainingError(f"stopped at step {step}, but a checkpoint could not be written ({exc})") from None
                log(f"stopped at step {step}; states saved to {states[0][0].name} (A) and {states[1][0].name} (B)")
                return results("stopped", with_files=False)

            draws = [run.draw(step, scheduler, v_prediction) for run in runs]
            half = draws[0].noisy.shape[0]
            added = None if draws[0].added is None else {k: torch.cat([d.added[k] for d in draws]) for k in draws[0].added}
            with amp:
                pred = model.unet(torch.cat([d.noisy for d in draws]).to(weight_dtype), torch.cat([d.timesteps for d in draws]),
                                  torch.cat([d.cond for d in draws]).to(weight_dtype), added_cond_kwargs=added).sample
            losses = [_loss_hook(step, run.loss(pred[i * half:(i + 1) * half], draw, scheduler, v_prediction))
                      for i, (run, draw) in enumerate(zip(runs, draws))]
            if not pending.defer:  # reading is free here: a diverged step stops before its update
                for run, loss in zip(runs, losses):
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise run.diverged(step + 1, value)
            # One backward for both: A's LoRA only sees A's loss, B's only B's (their samples
            # meet nowhere: every layer works per sample). Each side scales its own loss.
            sum(run.grad_scaler.scale(loss) for run, loss in zip(runs, losses)).backward()
            for run in runs:
                run.optimizer_step()
            step += 1

            pending.add(step, torch.stack([loss.detach() for loss in losses]), runs[0].lr())
            if pending.due(force=step == total):
                read_losses()
            if not pending.items:
                report()
            asked = save_requested is not None and save_requested()
            checkpoint_due = asked or (p.save_every_n_steps and step % p.save_every_n_steps == 0 and step < total)
            preview_due = (sample_requested is not None and sample_requested()) or (
                p.sample_every_n_steps and step % p.sample_every_n_steps == 0
            )
            if pending.items and (checkpoint_due or preview_due):  # never write the weights of an unread step
                read_losses()
                report()
            if checkpoint_due:
                for i, run in enumerate(runs):
                    try:
                        states[i] = (run.write_state(step), None)
                    except OSError as exc:
                        log(f"warning: could not write {run.side.upper()}'s checkpoint of step {step} ({exc}); training goes on")
            if asked:
                for run in runs:
                    log(f"saved {run.write_snapshot(step).name} at step {step}")
            if preview_due:
                with hooks.suspended():
                    for run in runs:
                        log(f"preview {run.write_preview(step).name} at step {step}")

        failures = []
        for i, run in enumerate(runs):  # both sides are saved (or rescued) before any failure is raised
            try:
                states[i] = run.final_save(step)
            except TrainingError as exc:
                failures.append(f"{run.side.upper()}: {exc}")
        if failures:
            raise TrainingError("; ".join(failures))
        log(f"done: {states[0][1]} and {states[1][1]} ({step} steps in {time.time() - started:.1f} s)")
        return results("done", with_files=True)
    finally:
        hooks.remove()
