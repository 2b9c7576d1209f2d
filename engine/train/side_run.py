"""One side's training state and its part of a step (:class:`SideRun`): what the loop in
:mod:`engine.train.trainer` drives, alone or as one of a twin pair."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from engine.models.loading import BaseModel
from engine.project.network_weights import network_weights_path
from engine.project.outputs import SideLora
from engine.project.plan import Plan, SidePlan
from engine.train.checkpoint import list_states, load_latest_state, remove_state, save_state, state_step
from engine.train.lora_facts import training_facts
from engine.train.rescue import rescue_folder, rescue_side, rescue_target
from engine.train.results import Log, TrainingError
from engine.train.start_weights import load_start_weights
from engine.train.training_data import batch_for_step, training_data


def min_snr_weights(timesteps, scheduler, gamma: float, v_prediction: bool):
    """Min-SNR-γ loss weights (Hang et al. 2023), as sd-scripts applies them: min(SNR, γ)/(SNR + 1)
    for v, min(SNR, γ)/SNR = min(1, γ/SNR) for epsilon.

    The SNR is the training schedule's own: with zero-terminal-SNR betas it is 0 at t = 999, where
    v's weight is 0 (that step's v target is -x0 from pure noise, which min-SNR gives no weight;
    kohya computes its SNR table before rescaling the betas, so its weight there is the original
    schedule's ~0.005) and epsilon's is 1 (written as min(1, γ/SNR), which does not divide 0 by 0)."""
    import torch

    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    if v_prediction:
        return torch.clamp(snr, max=gamma) / (snr + 1)
    return torch.clamp(gamma / snr, max=1.0)


def _lora_state(network) -> dict[str, Any]:
    return {name: {"down": w.down.clone(), "up": w.up.clone(), "alpha": w.alpha} for name, w in network.weights().items()}


def _restore_lora(network, state: dict[str, Any]) -> None:
    from engine.lora.weights import LoRAWeights

    network.load_weights({n: LoRAWeights(v["down"], v["up"], float(v["alpha"])) for n, v in state.items()})



def _diverged(at_step: int, value: float, side: str, run_dir: Path) -> TrainingError:
    states = list_states(run_dir)
    kept = (f"the last good checkpoint ({states[0].name}, in {run_dir}) is kept" if states
            else "no checkpoint had been written yet")
    return TrainingError(
        f"loss became {value} at step {at_step} of side {side.upper()}: training diverged "
        f"(try a lower learning_rate or network_alpha, or mixed_precision = \"bf16\"/\"no\"); {kept}, "
        "and nothing else was written"
    )



def _final_save(step: int, write_state, write_lora, lora_path: Path, log: Log, run_dir: Path | None = None,
                project_root: Path | None = None, give_up: Callable[[], bool] | None = None) -> tuple[Path | None, Path]:
    """The checkpoint, then the LoRA, of a finished training. A full disk is waited on
    (engine.train.room: the weights are in memory only). If the output folder fails now
    (removed, full past the wait, unmounted during the run), the trained weights are still not
    lost: the checkpoint is kept where it was written and the LoRA goes to the rescue folder;
    the error says where both are."""
    from engine.train.room import write_with_room

    state_path = None
    folder = run_dir or lora_path.parent
    try:
        state_path = write_with_room(lambda: write_state(step), "the final checkpoint", folder, log, size_hint=_newest_state_size(run_dir),
                                     give_up=give_up)
    except OSError as exc:
        log(f"warning: could not write the final checkpoint ({exc})")
    try:
        return state_path, write_with_room(lambda: write_lora(step, lora_path), f"the LoRA {lora_path.name}", lora_path.parent, log,
                                           give_up=give_up)
    except OSError as exc:
        failure = f"could not write {lora_path} ({exc.strerror or exc})"
    kept = []
    if state_path is not None:
        kept.append(f"the trained state is in {state_path} (fix the folder, then `copylora retry` or `train --resume` writes the LoRA)")
    target = rescue_target(project_root) if project_root is not None else rescue_folder()
    try:
        rescued = write_lora(step, target / lora_path.name)
        kept.append(f"the LoRA was written to {rescued} instead")
    except OSError:
        pass
    if state_path is None:  # the checkpoint too, or `retry` trains it all again
        try:
            rescued_state = write_state(step, target / f"{lora_path.stem}-run")
            kept.append(f"its checkpoint to {rescued_state} (copy it into {run_dir or 'the side’s run folder'}, then `copylora retry`)")
        except (OSError, TypeError):  # (a writer that takes no folder)
            pass
    if not kept:
        raise TrainingError(f"training finished ({step} steps) but {failure}, and no other folder took the weights")
    raise TrainingError(f"training finished ({step} steps) but {failure}; " + "; ".join(kept))


def _newest_state_size(run_dir: Path | None) -> int | None:
    """The bytes the newest checkpoint in ``run_dir`` takes (what the next one will, about)."""
    try:
        states = list_states(run_dir) if run_dir is not None else []
        return states[0].stat().st_size if states else None
    except OSError:
        return None


class SideRun:
    """One side's training state: its cached data and text, its LoRA, optimizer, schedule,
    grad scaler and random stream, its checkpoints and outputs. :func:`train` drives one;
    :func:`engine.train.twin.train_twin` drives A and B as one batch of two. Every random draw
    comes from the side's own generator in one order (:meth:`draw`), so a side trains the same
    whichever loop drives it, and their checkpoints are interchangeable."""

    def __init__(self, plan: Plan, side: str, model: BaseModel, *, device: str, weight_dtype, use_scaler: bool, started: float,
                 log: Log, apply: bool = True) -> None:
        import torch
        from diffusers.optimization import get_scheduler

        from engine.lora.network import LoRANetwork
        from engine.train.conditioning import encode_text
        from engine.train.optim import build_optimizer

        self.plan, self.side, self.model, self.device = plan, side, model, device
        self.weight_dtype, self.started, self.log = weight_dtype, started, log
        self.stop_asked: Callable[[], bool] = lambda: False  # the loop's controls (a wait for disk room ends on a stop)
        self.sp: SidePlan = plan.side(side)
        self.p = p = self.sp.params
        self.run_dir = self.sp.run_dir
        # What a write killed midway left (a partial checkpoint, a LoRA's temporary file): under
        # this side's lock (engine.train.side_lock) no live writer makes them. Left, each crash
        # kept a checkpoint-sized hidden file for good.
        from engine.files import remove_stale_temps

        if gone := remove_stale_temps(self.run_dir) + remove_stale_temps(self.sp.lora_path.parent, self.sp.lora_path.name):
            log(f"removed {gone} partial file(s) that interrupted writes left in {self.run_dir} or beside {self.sp.lora_path.name}")
        # What the LoRA will record of this training, taken now: a picture or A edited during the
        # run leaves the finished file stale, not wrongly current.
        self.record = SideLora(plan, side).record()
        self.fingerprint = self.record.fingerprint
        if plan.outputs.shared:  # checkpoints an earlier copylora kept in the shared folder's runs/A: this training's are moved here
            from engine.train.checkpoint import adopt_earlier_layout

            adopt_earlier_layout(plan.outputs.folder / "runs" / side.upper(), self.run_dir, self.record.accepted, log)
        self.preview_noted = False
        self.labels_noted = False  # a label font note is said at the first preview, not at every one
        # Copy checks (engine.train.copy_check): (step, dB) of each, and (step, why) once the
        # side's stop_when_copied rule is reached (its LoRA is final from that step on).
        self.copy_history: list[tuple[int, float]] = []
        self.stopped: tuple[int, str] | None = None
        self.final: tuple[Path | None, Path] | None = None  # written when it stopped, before the run ends
        # The progress meter's smoothed loss (engine.train.progress), kept in the checkpoint: a
        # resumed run's curve restarted from one raw loss, unlike the run never interrupted.
        self.smooth_loss: float | None = None

        # ---- cached latents (once per image) and text embeddings (once per prompt)
        self.data = training_data(model, plan, side, log)
        self.train_text = not p.network_train_unet_only
        self.text_cache = None if self.train_text else [encode_text(model, prompt, p.clip_skip, max_tokens=p.max_token_length)
                                                          for prompt in self.data.prompts]

        # ---- the LoRA (initialised from the seed, so A and B start identical)
        torch.manual_seed(p.seed)
        self.network = LoRANetwork(
            model.unet,
            model.text_encoders,
            family=model.family,
            rank=p.network_dim,
            alpha=p.network_alpha,
            conv_rank=p.conv_dim,
            conv_alpha=p.conv_alpha,
            text_encoder=self.train_text,
        )
        self.network.to(device=device, dtype=torch.float32)
        start = network_weights_path(plan.project, side)  # [train] network_weights: start from that LoRA, not from the seed's
        if start is not None:
            load_start_weights(self.network, start, side, log)
        if apply:
            self.network.apply_to()
        self.params = [q for g in self.network.param_groups(1.0) for q in g["params"]]
        groups = self.network.param_groups(p.unet_lr or p.learning_rate, p.text_encoder_lr or p.learning_rate)
        self.optimizer, self.optimizer_used = build_optimizer(groups, p.optimizer_type, p.learning_rate, p.optimizer_args, device, log)
        self.lr_schedule = get_scheduler(
            p.lr_scheduler,
            self.optimizer,
            num_warmup_steps=p.lr_warmup_steps,
            num_training_steps=self.sp.total_steps,
            num_cycles=p.lr_scheduler_num_cycles,
            power=p.lr_scheduler_power,
        )
        # Set up once, so the step has no precision branches: a disabled scaler passes through.
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.generator = torch.Generator().manual_seed(p.seed)
        from engine.train.tensorboard_log import open_step_log

        self.step_log = open_step_log(plan, side, started, log)  # [train] log_with = "tensorboard"

    # ---- resume

    def resume_or_reset(self, resume: bool, at_most: int | None = None) -> int:
        """The step to start from: the newest valid state's when resuming (at or before
        ``at_most`` if given, and never past the plan's steps), else 0 with the old states dropped."""
        self.copy_history, self.stopped, self.final = [], None, None
        self.smooth_loss = None
        if not resume:
            for old in list_states(self.run_dir):
                remove_state(old)
            return 0
        total = self.sp.total_steps
        past = [state_step(p) for p in list_states(self.run_dir) if state_step(p) > total]
        if past:
            # A longer training's (a --max_steps run, a plan shortened since): resumed, it ran no
            # step and wrote a LoRA of more steps than the plan's, never current, so `copylora run`
            # queued it again and again; and `train --resume` replaced a current LoRA with it.
            self.log(f"the checkpoint at step {past[0]} is past this plan's {total} steps: not resumed, and removed at this run's "
                     "first checkpoint (`train --max_steps N --resume` continues it before that)")
        state = load_latest_state(self.run_dir, self.record.accepted | {self.fingerprint}, self.log,
                                  at_most=total if at_most is None else min(at_most, total))
        if state is None:
            if list_states(self.run_dir) and at_most is None:  # (a twin's probe for a shared step says its own)
                self.log("no usable training state to resume from: starting from step 0")
            return 0
        _restore_lora(self.network, state["lora"])
        restored = self._restore_optimizer(state["optimizer"], state.get("optimizer_identity"))
        self.lr_schedule.load_state_dict(state["scheduler"])
        if not restored:  # the fresh optimizer's groups hold the schedule's first rate: give them the saved step's
            for group, rate in zip(self.optimizer.param_groups, self.lr_schedule.get_last_lr()):
                group["lr"] = rate
        self.generator.set_state(state["rng"]["generator"])
        if state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.smooth_loss = state.get("smooth_loss")  # the curve goes on where it was (older checkpoints: from the next loss)
        start = self._resume_copy(state.get("copy") or {}, int(state["step"]))
        self.log(f"resuming {self.side.upper()} from step {start} of {self.sp.total_steps}")
        epoch = state.get("steps_per_epoch")
        if epoch is not None and int(epoch) != self.sp.steps_per_epoch:
            self.log(f"the checkpoint's epoch was {int(epoch)} steps, this copylora counts {self.sp.steps_per_epoch} "
                     "(it batches or draws class pictures otherwise): the pictures' order from here follows the new count, "
                     "the steps and the LoRA's settings are unchanged")
        return start

    def _restore_optimizer(self, saved: dict, identity: str | None) -> bool:
        """The checkpoint's moments, where they are this optimizer's; otherwise (a run begun with
        bitsandbytes on a GPU and resumed where it falls back to torch's AdamW, or the reverse) the
        moments start afresh with a line saying so, and the weights and schedule resume as saved."""
        from engine.train.optim import foreign_state

        why = foreign_state(self.optimizer, saved, identity)
        if why is None:
            try:
                self.optimizer.load_state_dict(saved)
                return True
            except (ValueError, KeyError) as exc:  # e.g. other parameters, or a layout of another LoRA
                why = str(exc)
        self.log(f"the checkpoint's optimizer state does not fit {self.optimizer_used} ({why}): its moments start afresh")
        return False

    def _resume_copy(self, saved: dict, start: int) -> int:
        """The copy checks so far, and the stop rule judged again over them (it may have changed
        since the checkpoint); the step to go on from. A twin side that its rule froze at step
        s while the other trained on holds the weights, optimizer and schedule of step s in a
        later checkpoint: if the rule now says it is not copied, it trains on from s (its
        random stream is the later one's, so not bit for bit the run the new rule would have made)."""
        from engine.project.copy_rule import stop_rule

        self.copy_history = [(int(step), float(db)) for step, db in saved.get("history", [])]
        frozen = int(saved["stopped"][0]) if saved.get("stopped") else None
        reason = stop_rule(self.p).first_reached(self.copy_history)
        if reason is not None:
            self.stopped = (frozen if frozen is not None else start, reason)
            self.log(f"{self.side.upper()} was already copied ({reason}): its LoRA is final")
            return start
        if frozen is not None and frozen < start:
            self.log(f"{self.side.upper()} stopped at step {frozen} under the earlier stop_when_copied rule, which the "
                     f"current one has not reached: it trains on from step {frozen}")
            return frozen
        return start

    # ---- one step

    def draw(self, step: int, scheduler, v_prediction: bool) -> "Draw":
        """This step's batch, noise and timesteps, drawn from the side's generator."""
        batch, (x0,), noise = self.draw_latents(step, [self.data])
        timesteps = self.draw_timesteps(x0.shape[0], scheduler)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        target = scheduler.get_velocity(x0, noise, timesteps) if v_prediction else noise
        cond, added, weights = self.conditioning(batch)
        return Draw(step, noisy, timesteps, cond, added, target, weights)

    def draw_latents(self, step: int, datas: list) -> tuple[list, list, Any]:
        """(the step's items, their latents from each of ``datas``, one noise for them all).
        The one-LoRA routes pass A's and B's data: the same items, flips and noise for both."""
        import torch

        p, data, device = self.p, self.data, self.device
        batch = batch_for_step(step, data.items, p.train_batch_size, self.sp.steps_per_epoch, p.seed)
        flips = torch.rand(len(batch), generator=self.generator) < 0.5 if data.flipped is not None else [False] * len(batch)
        x0s = [torch.cat([(d.flipped if flip and d.flipped is not None else d.latents)[s.latent_index] for s, flip in zip(batch, flips)]).to(device)
               for d in datas]
        noise = torch.randn(x0s[0].shape, generator=self.generator)
        if p.noise_offset:
            noise = noise + p.noise_offset * torch.randn((x0s[0].shape[0], x0s[0].shape[1], 1, 1), generator=self.generator)
        return batch, x0s, noise.to(device)

    def draw_timesteps(self, count: int, scheduler):
        """``count`` timesteps from [min_timestep, max_timestep) (kohya's keys; the whole schedule by default)."""
        import torch

        high = min(self.p.max_timestep, scheduler.config.num_train_timesteps)
        return torch.randint(min(self.p.min_timestep, high - 1), high, (count,), generator=self.generator).to(self.device)

    def conditioning(self, batch: list) -> tuple[Any, dict | None, Any]:
        """(text conditioning, SDXL's added conditions, loss weights) of the step's items."""
        import torch

        from engine.train.conditioning import added_conditions, encode_text

        p, data, device = self.p, self.data, self.device
        if self.train_text:
            texts = [encode_text(self.model, data.prompts[s.cond_index], p.clip_skip, grad=True, max_tokens=p.max_token_length) for s in batch]
        else:
            assert self.text_cache is not None  # encoded once when the text encoder is not trained
            texts = [self.text_cache[s.cond_index] for s in batch]
        cond = torch.cat([t.hidden for t in texts])
        added = added_conditions(texts, [data.time_ids[s.latent_index] for s in batch], device=device, dtype=self.weight_dtype)
        return cond, added, torch.tensor([s.weight for s in batch], device=device)

    def loss(self, pred, draw: "Draw", scheduler, v_prediction: bool):
        """The step's loss from the U-Net's prediction for this side's samples."""
        return self.loss_of(pred, draw.target, draw.timesteps, draw.weights, scheduler, v_prediction)

    def loss_of(self, pred, target, timesteps, weights, scheduler, v_prediction: bool):
        """MSE per sample (Min-SNR weighted if asked), weighted, averaged."""
        import torch

        loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.p.min_snr_gamma:
            loss = loss * min_snr_weights(timesteps, scheduler, self.p.min_snr_gamma, v_prediction)
        return (loss * weights.to(loss.device)).mean()

    def optimizer_step(self) -> None:
        """After backward: unscale, clip, step, schedule (each side its own, as a separate run)."""
        import torch

        self.grad_scaler.unscale_(self.optimizer)
        if self.p.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.p.max_grad_norm)
        scale = self.grad_scaler.get_scale() if self.grad_scaler.is_enabled() else None
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        # fp16: a step the scaler skipped (inf gradients; it lowers its scale) is no step of the
        # schedule either, as accelerate's scheduler (so sd-scripts') has it; the rate of a
        # warm-up or a cosine ran ahead by every skipped step. (step() has read the device already.)
        if scale is None or self.grad_scaler.get_scale() >= scale:
            self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.lr_schedule.get_last_lr()[0])

    def diverged(self, at_step: int, value: float) -> TrainingError:
        return _diverged(at_step, value, self.side, self.run_dir)

    # ---- writing

    def write_state(self, step: int, folder: Path | None = None) -> Path:
        from engine.train.optim import optimizer_identity

        return save_state(
            folder or self.run_dir,
            {
                "step": step,
                "total": self.sp.total_steps,
                # the epoch's length the picture order followed: one that counts epochs otherwise
                # (a later copylora's batching, class draws) resumes saying so (resume_or_reset)
                "steps_per_epoch": self.sp.steps_per_epoch,
                "fingerprint": self.fingerprint,
                "lora": _lora_state(self.network),
                "optimizer": self.optimizer.state_dict(),
                "optimizer_identity": optimizer_identity(self.optimizer),
                "scheduler": self.lr_schedule.state_dict(),
                "rng": {"generator": self.generator.get_state()},
                "grad_scaler": self.grad_scaler.state_dict(),
                "copy": {"history": self.copy_history, "stopped": self.stopped},
                "smooth_loss": self.smooth_loss,
            },
        )

    def write_lora(self, step: int, path: Path) -> Path:
        from engine.lora.files import save_lora_file
        from engine.lora.metadata import lora_metadata

        facts = training_facts(self.plan, self.side, self.model, step=step, optimizer=self.optimizer_used, started=self.started,
                               seed=self.p.seed)
        metadata = lora_metadata(facts, self.model.family)
        metadata.update(self.record.metadata(step))  # what `copylora run` compares to decide that it is up to date
        metadata.update(self.copy_metadata(step))
        from engine.project.pair_route import PAIR

        if self.side == PAIR:  # the one-LoRA routes' file: which route, and the multiplier its +/- states were trained at
            import json

            metadata["copylora_route"] = json.dumps({"method": self.plan.project.info.method, "multiplier": self.p.pair_multiplier,
                                                     "timesteps": [self.p.min_timestep, self.p.max_timestep]})
        return save_lora_file(path, self.network.weights(), metadata, self.p.save_precision)

    def copy_metadata(self, step: int) -> dict[str, str]:
        """The newest copy check at or before ``step``; the stop rule and why, if it ended the side."""
        from engine.project.copy_rule import stop_rule

        meta = {}
        checks = [(at, db) for at, db in self.copy_history if at <= step]
        if checks:
            meta["copylora_copy_psnr"] = f"{checks[-1][1]:.2f}"
            meta["copylora_copy_step"] = str(checks[-1][0])
        if self.stopped is not None:
            meta["copylora_stopped"] = self.stopped[1]
            meta["copylora_stop_rule"] = stop_rule(self.p).text()
        return meta

    def write_snapshot(self, step: int) -> Path:
        """A LoRA beside the checkpoints (save-now); the final path is only written when done."""
        return self.write_lora(step, self.plan.outputs.step_snapshot(self.side, step))

    def write_preview(self, step: int) -> Path:
        """The LoRA so far at strength 1.0. Sampling forks the RNG and restores the modes, so the
        training that follows is exactly what it would have been without it (tested)."""
        from engine.train.sample import preview_settings, sample_with_network

        project = self.plan.project
        settings, note = preview_settings(project.sample, self.device, self.p.clip_skip)
        if note and not self.preview_noted:
            self.log(note)
            self.preview_noted = True
        from engine.project.pair_route import PAIR

        # the one-LoRA routes' LoRA trains at ±pair_multiplier: its preview is the +m state (what the result's 1 is)
        settings = replace(settings, strengths=[self.p.pair_multiplier if self.side == PAIR else 1.0])
        out = self.plan.outputs.step_preview(self.side, step)
        return sample_with_network(self.model, self.network, settings, out, model_name=Path(project.info.base_model).name,
                                   title=f"{self.sp.lora_path.stem} at step {step}", extra={"step": step, "side": self.side},
                                   log=None if self.labels_noted else self._note_labels)

    def _note_labels(self, note: str) -> None:
        self.log(note)
        self.labels_noted = True

    def final_save(self, step: int) -> tuple[Path | None, Path]:
        """State and LoRA at the end (a side stopped by its copy rule: its LoRA as of that step,
        and the state where the run is, which carries the stop)."""
        if self.final is not None:  # stopped earlier in a twin run: its LoRA is written; its state joins the other side's step
            try:
                self.final = (self.write_state(step), self.final[1])
            except OSError as exc:
                self.log(f"warning: could not write the final checkpoint of {self.side.upper()} ({exc})")
            return self.final
        lora_step = self.stopped[0] if self.stopped is not None else step
        self.final = _final_save(step, self.write_state, lambda _step, path: self.write_lora(lora_step, path), self.sp.lora_path,
                                 self.log, self.run_dir, self.plan.project.root, self.stop_asked)
        return self.final

    def rescue(self, step: int) -> str:
        """Checkpoint and LoRA to the rescue folder (this side's own folder was removed)."""
        lora_step = self.stopped[0] if self.stopped is not None else step
        kept = rescue_side(step, self.write_state, lambda _step, path: self.write_lora(lora_step, path), self.sp.lora_path,
                           self.run_dir, self.plan.project.root)
        return f"{self.side.upper()}: {kept}"


@dataclass
class Draw:
    """One step's inputs of one side, on the device."""

    step: int  # the step they are drawn for (0-based)
    noisy: Any
    timesteps: Any
    cond: Any
    added: dict | None  # SDXL's text_embeds and time_ids
    target: Any
    weights: Any

