"""The overfit trainer: one LoRA that copies one teacher picture.

Read ``train()`` top to bottom: set-up (device, precision, base model, cached latents and
text embedding, LoRA, optimizer, schedule), resume, then one straight loop over steps
(pick batch → noise → U-Net → loss → step → progress → checkpoint), then the final save.

Determinism: everything random comes from one CPU ``torch.Generator`` (noise, timesteps,
flips) whose state is checkpointed, and the data order is a pure function of (seed, epoch).
So on CPU, N steps + resume + M steps gives bit-identical LoRA tensors to N+M steps in one go.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from engine.errors import CopyloraError
from engine.project.concepts import resolve_prompt
from engine.project.network_weights import network_weights_path
from engine.project.plan import Plan, SidePlan, base_weights_for
from engine.train.base_weights import apply_base_weights, base_weights_record, check_base_weights
from engine.train.checkpoint import list_states, load_latest_state, remove_state, save_state
from engine.train.progress import Progress, ProgressMeter
from engine.train.rescue import FolderWatch, removed_message, rescue_folder, rescue_side
from engine.train.start_weights import load_start_weights, start_weights_record

Log = Callable[[str], None]


class TrainingError(CopyloraError):
    pass


@dataclass(frozen=True)
class TrainResult:
    status: str  # "done" or "stopped"
    step: int
    total: int
    lora_path: Path | None
    state_path: Path | None
    seconds: float
    optimizer: str
    final_loss: float | None
    vram_peak_mb: float | None = None  # torch's peak allocation during the loop (CUDA only)


@dataclass(frozen=True)
class TrainingItem:
    """One entry of an epoch's list of what is trained on: a cached latent and its
    conditioning. (Not a preview "sample": those are engine.train.sample's.)"""

    latent_index: int  # into the latents list
    cond_index: int  # into TrainingData.prompts: the picture's instance prompt (or caption), or its class prompt
    weight: float  # loss weight (prior_loss_weight for regularisation images)
    bucket: tuple[int, int]


def pick_device(requested: str | None = None, model=None) -> str:
    """The device to train on (engine/devices.py's rule)."""
    from engine.devices import resolve_device

    return resolve_device(requested, model)


def training_fingerprint(plan: Plan, side: str) -> str:
    """Identity of a training run: what must match for a checkpoint to be resumed.

    Everything that changes the result except the total length (``max_train_steps`` may grow
    to train longer) and bookkeeping (checkpoint and preview intervals).
    """
    sp = plan.side(side)
    params = asdict(sp.params)
    # compile changes how a step runs, not what it computes: a checkpoint resumes either way.
    # Nor do TensorBoard logs; a start file counts by its content (below), not by its path.
    for key in ("max_train_epochs", "max_train_steps", "save_every_n_steps", "sample_every_n_steps", "compile", "network_weights",
                "log_with", "logging_dir"):
        params.pop(key, None)
    if not params.get("caption"):  # checkpoints made before the key existed trained caption-free: they stay valid
        params.pop("caption", None)
    images = [hashlib.sha256(i.path.read_bytes()).hexdigest() for i in sp.images]
    payload = {"params": params, "images": images, "base": plan.project.base_model_path(), "family": plan.project.info.model_family}
    if plan.project.reg is not None:  # the DreamBooth flow: what each picture trains on is part of the run
        payload["dreambooth"] = dreambooth_record(plan, side)
    base_weights = base_weights_for(plan, side)
    if base_weights is not None:  # the differential route's B is trained on base + A: a new A makes it stale
        payload["base_weights"] = base_weights_record(base_weights)
    start = network_weights_path(plan.project, side)
    if start is not None:  # [train] network_weights: a changed start file makes the side stale
        payload["network_weights"] = start_weights_record(start)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dreambooth_record(plan: Plan, side: str) -> dict[str, Any]:
    """A [reg] run's prompts and pictures beyond the side's own: each picture's resolved prompt
    (a changed caption file makes the checkpoints stale), each concept's pictures and repeats,
    the class folders and prompts."""
    from engine.project.concepts import class_sets

    sp = plan.side(side)
    reg = plan.project.reg
    extension = reg.caption_extension
    concepts = [{"images": [hashlib.sha256(i.path.read_bytes()).hexdigest() for i in c.images], "repeats": c.repeats,
                 "prompts": [resolve_prompt(c.instance_prompt, i.path, extension) for i in c.images]} for c in sp.concepts]
    return {
        "prompts": [resolve_prompt(reg.instance_prompt, i.path, extension) for i in sp.images],
        "concepts": concepts,
        "classes": [{"folder": str(c.folder), "prompt": c.prompt, "repeats": c.repeats} for c in class_sets(plan.project)],
        "prior_loss_weight": reg.prior_loss_weight,
    }


def epoch_order(seed: int, epoch: int, count: int) -> list[int]:
    """The shuffled sample order of one epoch: a pure function, so resuming needs no state."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(count).tolist()


def batch_for_step(step: int, samples: list[TrainingItem], batch_size: int, steps_per_epoch: int, seed: int) -> list[TrainingItem]:
    """The items of one step. A batch holds one bucket size only (latents must stack): if a
    shuffled batch mixes buckets, the items of the first one's bucket are used."""
    epoch, index = divmod(step, steps_per_epoch)
    order = epoch_order(seed, epoch, len(samples))
    chosen = [samples[i] for i in order[index * batch_size : (index + 1) * batch_size]]
    if not chosen:  # the plan rounds up; wrap around rather than train on nothing
        chosen = [samples[order[(index * batch_size) % len(samples)]]]
    return [s for s in chosen if s.bucket == chosen[0].bucket]


def min_snr_weights(timesteps, scheduler, gamma: float, v_prediction: bool):
    """Min-SNR-γ loss weights (Hang et al. 2023), as sd-scripts applies them."""
    import torch

    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if v_prediction else clipped / snr


def evaluation_loss(model, latents, cond, *, count: int = 8, seed: int = 0, added_cond: dict | None = None) -> float:
    """Mean denoising loss on ``latents`` at fixed noise and evenly spread timesteps.

    A fixed yardstick (unlike the training loss, which jumps with the random timestep): it
    falls as the LoRA learns to copy the teacher picture. ``added_cond``: SDXL's
    ``added_cond_kwargs`` (see :func:`engine.train.conditioning.added_conditions`).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    scheduler = model.noise_scheduler
    device = model.unet.device
    total = 0.0
    with torch.no_grad():
        for i in range(count):
            t = torch.tensor([int((i + 0.5) * scheduler.config.num_train_timesteps / count)])
            noise = torch.randn(latents.shape, generator=generator)
            noisy = scheduler.add_noise(latents.cpu(), noise, t)
            target = noise if model.prediction_type == "epsilon" else scheduler.get_velocity(latents.cpu(), noise, t)
            pred = model.unet(noisy.to(device, model.unet.dtype), t.to(device), cond.to(device, model.unet.dtype),
                              added_cond_kwargs=added_cond).sample
            total += float(torch.nn.functional.mse_loss(pred.float().cpu(), target))
    return total / count


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


def _lora_state(network) -> dict[str, Any]:
    return {name: {"down": w.down.clone(), "up": w.up.clone(), "alpha": w.alpha} for name, w in network.weights().items()}


def _restore_lora(network, state: dict[str, Any]) -> None:
    from engine.lora.weights import LoRAWeights

    network.load_weights({n: LoRAWeights(v["down"], v["up"], float(v["alpha"])) for n, v in state.items()})


def training_facts(plan: Plan, side: str, model, *, step: int, optimizer: str, started: float, seed: int) -> dict[str, Any]:
    """Plain facts for the LoRA's kohya/modelspec metadata."""
    sp = plan.side(side)
    p = sp.params
    return {
        "network_dim": p.network_dim,
        "network_alpha": p.network_alpha,
        "conv_dim": p.conv_dim or None,
        "conv_alpha": p.conv_alpha if p.conv_dim else None,
        "learning_rate": p.learning_rate,
        "unet_lr": p.unet_lr or p.learning_rate,
        "text_encoder_lr": None if p.network_train_unet_only else (p.text_encoder_lr or p.learning_rate),
        "optimizer": optimizer,
        "lr_scheduler": p.lr_scheduler,
        "lr_warmup_steps": p.lr_warmup_steps,
        "steps": step,
        "epoch": math.ceil(step / sp.steps_per_epoch),
        "num_epochs": sp.epochs,
        "max_train_steps": sp.total_steps,
        "batch_size": p.train_batch_size,
        "num_batches_per_epoch": sp.steps_per_epoch,
        "resolution": list(sp.buckets[0]) if sp.buckets else p.resolution,
        "seed": seed,
        "mixed_precision": p.mixed_precision,
        "clip_skip": p.clip_skip,
        "noise_offset": p.noise_offset or None,
        "min_snr_gamma": p.min_snr_gamma,
        "max_grad_norm": p.max_grad_norm,
        "gradient_checkpointing": p.gradient_checkpointing,
        "cache_latents": True,
        "network_train_unet_only": p.network_train_unet_only,
        "datasets": training_datasets(plan, side),
        "flip_aug": p.flip_aug,
        "random_crop": p.random_crop,
        "model_name": Path(plan.project.info.base_model).name,
        "model_hash": model.model_hash,
        "output_name": sp.lora_path.stem,
        "title": sp.lora_path.stem,
        "training_started_at": started,
        "training_finished_at": time.time(),
        "comment": f"copylora side {side.upper()} of project {plan.project.name}",
    }


def training_datasets(plan: Plan, side: str) -> list[dict[str, Any]]:
    """The folders a side trains on, as the metadata lists them (kohya's subsets): the side's
    own, each concept's, each class folder; ``tags`` is kohya's tag frequency of the prompts
    the pictures trained on (none for the caption-free route), ``prompt`` its class_tokens."""
    from engine.project.concepts import class_sets, tag_frequency
    from engine.project.images import image_files

    sp = plan.side(side)
    reg = plan.project.reg
    if reg is None:
        caption = sp.params.caption
        subset = {"dir": str(sp.folder), "repeats": sp.repeats, "images": len(sp.images), "is_reg": False,
                  "tags": tag_frequency([caption] * len(sp.images)) if caption else {}}
        return [{**subset, "prompt": caption} if caption else subset]
    extension = reg.caption_extension
    sets = [(sp.folder, sp.images, sp.repeats, reg.instance_prompt)] + [(c.folder, c.images, c.repeats, c.instance_prompt) for c in sp.concepts]
    out = [{"dir": str(folder), "repeats": repeats, "images": len(images), "is_reg": False, "prompt": template,
            "tags": tag_frequency([resolve_prompt(template, i.path, extension) for i in images])}
           for folder, images, repeats, template in sets]
    for class_set in class_sets(plan.project):
        count = len(image_files(class_set.folder)) if class_set.folder.is_dir() else 0
        out.append({"dir": str(class_set.folder), "repeats": class_set.repeats, "images": count, "is_reg": True,
                    "prompt": class_set.prompt, "tags": tag_frequency([class_set.prompt] * count)})
    return out


def _loss_hook(step: int, loss):
    """The step's loss, as computed. Tests replace this to make a loss diverge at a step."""
    return loss


# Reading the loss on the host waits for the GPU to finish the step, so the host cannot queue
# the next step's kernels meanwhile. On CUDA the losses stay on the device and are read
# together (one wait) at most this often, and always before anything is written, so a
# checkpoint or LoRA never holds the weights of a diverged step.
LOSS_READ_S = 0.25


def _defers_loss_reads(device: str) -> bool:
    """Whether the loop reads losses in batches (CUDA) or every step (CPU: reading is free)."""
    return str(device).startswith("cuda")


def _diverged(at_step: int, value: float, side: str, run_dir: Path) -> TrainingError:
    states = list_states(run_dir)
    kept = (f"the last good checkpoint ({states[0].name}, in {run_dir}) is kept" if states
            else "no checkpoint had been written yet")
    return TrainingError(
        f"loss became {value} at step {at_step} of side {side.upper()}: training diverged "
        f"(try a lower learning_rate or network_alpha, or mixed_precision = \"bf16\"/\"no\"); {kept}, "
        "and nothing else was written"
    )


@dataclass
class TrainingData:
    """What one side trains on, cached once: latents (and flipped copies), SDXL's size
    conditions per latent, the epoch's items and the prompts they are conditioned on."""

    latents: list
    flipped: list | None
    time_ids: list
    items: list[TrainingItem]
    prompts: list[str]


def training_data(model, plan: Plan, side: str, log: Log) -> TrainingData:
    """What ``side`` trains on, encoded once: its teacher pictures, each under its prompt (empty
    in the caption-free copy-machine route; [reg]'s instance prompt, its caption read in for
    ``[filewords]``), each further concept's pictures, and the class pictures, if any."""
    from engine.project.images import picture_warnings

    sp = plan.side(side)
    p = sp.params
    reg = plan.project.reg
    for info, bucket in zip(sp.images, sp.buckets):
        for warning in picture_warnings(info, bucket, f"{side}.folder"):
            log(f"warning: {warning}")
    data = TrainingData(latents=[], flipped=[] if p.flip_aug else None, time_ids=[], items=[], prompts=[])
    extension = reg.caption_extension if reg is not None else ""
    sets = [(sp.images, sp.buckets, sp.repeats, reg.instance_prompt if reg is not None else p.caption, p.seed)]
    sets += [(c.images, c.buckets, c.repeats, c.instance_prompt, p.seed + 1000 * c.number) for c in sp.concepts]
    for images, buckets, repeats, template, seed in sets:
        paths = [i.path for i in images]
        offset = _add_latents(data, model, paths, list(buckets), p, seed)
        for i, path in enumerate(paths):
            cond = _prompt_index(data, resolve_prompt(template, path, extension))
            data.items += [TrainingItem(offset + i, cond, 1.0, buckets[i])] * repeats
    if reg is not None:
        _add_class_items(data, model, plan, side)
        concepts = f", {len(sp.concepts)} further concept(s)" if sp.concepts else ""
        log(f"dreambooth: {len(data.items)} items per epoch ({sp.teacher_samples} teacher{concepts}, "
            f"{len(data.items) - sp.teacher_samples} class), {len(data.prompts)} distinct prompts")
    return data


def _prompt_index(data: TrainingData, prompt: str) -> int:
    """The index of ``prompt`` in the prompts encoded for this side (each distinct one once)."""
    if prompt not in data.prompts:
        data.prompts.append(prompt)
    return data.prompts.index(prompt)


def _add_latents(data: TrainingData, model, paths: list[Path], buckets: list, p, seed: int) -> int:
    """Pictures encoded (and flipped) into ``data``; the index of the first one."""
    from engine.train.teacher import cache_teacher_latents

    cache = cache_teacher_latents(model.vae, paths, buckets, flip=p.flip_aug, random_crop=p.random_crop, seed=seed)
    offset = len(data.latents)
    data.latents += list(cache.latents)
    data.time_ids += _size_conditions(cache, buckets)
    if data.flipped is not None:
        data.flipped += list(cache.flipped)
    return offset


def _size_conditions(cached, buckets) -> list:
    """SDXL's time ids per latent: original (h, w), crop (top, left), bucket (h, w); a flipped
    latent keeps its crop (the default centre crop is symmetric)."""
    from engine.train.conditioning import sdxl_time_ids

    return [sdxl_time_ids(size[::-1], crop[::-1], bucket[::-1]) for size, crop, bucket in zip(cached.sizes, cached.crops, buckets)]


def _add_class_items(data: TrainingData, model, plan: Plan, side: str) -> None:
    """[reg]: the class pictures, encoded, each under its folder's class prompt. As sd-scripts
    does, every class folder is pooled (each picture × [reg].num_repeats) and the pool is cycled
    up to the number of teacher items, so each epoch pairs every teacher item with one class
    item, weighted by ``prior_loss_weight``."""
    from engine.project.concepts import class_sets
    from engine.project.images import image_files, read_image_info
    from engine.project.plan import bucket_size

    project, p = plan.project, plan.side(side).params
    pool: list[tuple[int, int, tuple[int, int]]] = []
    for number, class_set in enumerate(class_sets(project)):
        paths = image_files(class_set.folder)
        if not paths:
            raise TrainingError(f"[{class_set.key}] asks for class images but {class_set.folder} has none")
        buckets = [bucket_size(info.width, info.height, p.resolution) for info in (read_image_info(x, decode=False) for x in paths)]
        offset = _add_latents(data, model, paths, buckets, p, p.seed + 10_000 + 1000 * number)
        cond = _prompt_index(data, class_set.prompt)
        pool += [(offset + j, cond, buckets[j]) for j in range(len(paths)) for _ in range(class_set.repeats)]
    teachers = len(data.items)
    data.items += [TrainingItem(pool[k % len(pool)][0], pool[k % len(pool)][1], project.reg.prior_loss_weight, pool[k % len(pool)][2])
                   for k in range(teachers)]


def _final_save(step: int, write_state, write_lora, lora_path: Path, log: Log) -> tuple[Path | None, Path]:
    """The checkpoint, then the LoRA, of a finished training. If the output folder fails now
    (removed, full, unmounted during the run), the trained weights are still not lost: the
    checkpoint is kept where it was written and the LoRA goes to the rescue folder; the error
    says where both are."""
    state_path = None
    try:
        state_path = write_state(step)
    except OSError as exc:
        log(f"warning: could not write the final checkpoint ({exc})")
    try:
        return state_path, write_lora(step, lora_path)
    except OSError as exc:
        failure = f"could not write {lora_path} ({exc.strerror or exc})"
    kept = []
    if state_path is not None:
        kept.append(f"the trained state is in {state_path} (fix the folder, then `copylora retry` or `train --resume` writes the LoRA)")
    try:
        rescued = write_lora(step, rescue_folder() / lora_path.name)
        kept.append(f"the LoRA was written to {rescued} instead")
    except OSError:
        pass
    if not kept:
        raise TrainingError(f"training finished ({step} steps) but {failure}, and no other folder took the weights")
    raise TrainingError(f"training finished ({step} steps) but {failure}; " + "; ".join(kept))


class SideRun:
    """One side's training state: its cached data and text, its LoRA, optimizer, schedule,
    grad scaler and random stream, its checkpoints and outputs. :func:`train` drives one;
    :func:`engine.train.twin.train_twin` drives A and B as one batch of two. Every random draw
    comes from the side's own generator in one order (:meth:`draw`), so a side trains the same
    whichever loop drives it, and their checkpoints are interchangeable."""

    def __init__(self, plan: Plan, side: str, model, *, device: str, weight_dtype, use_scaler: bool, started: float,
                 log: Log, apply: bool = True) -> None:
        import torch
        from diffusers.optimization import get_scheduler

        from engine.lora.network import LoRANetwork
        from engine.train.conditioning import encode_text
        from engine.train.optim import build_optimizer

        self.plan, self.side, self.model, self.device = plan, side, model, device
        self.weight_dtype, self.started, self.log = weight_dtype, started, log
        self.sp: SidePlan = plan.side(side)
        self.p = p = self.sp.params
        self.run_dir = self.sp.run_dir
        self.fingerprint = training_fingerprint(plan, side)
        self.preview_noted = False
        base_weights = base_weights_for(plan, side)  # the differential route's A, under B
        self.base_weights = None if base_weights is None else base_weights_record(base_weights)

        # ---- cached latents (once per image) and text embeddings (once per prompt)
        self.data = training_data(model, plan, side, log)
        self.train_text = not p.network_train_unet_only
        self.text_cache = None if self.train_text else [encode_text(model, prompt, p.clip_skip) for prompt in self.data.prompts]

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
        self.start_weights = None if start is None else start_weights_record(start)
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
        ``at_most`` if given), else 0 with the old states dropped."""
        if not resume:
            for old in list_states(self.run_dir):
                remove_state(old)
            return 0
        state = load_latest_state(self.run_dir, self.fingerprint, self.log, at_most=at_most)
        if state is None:
            if list_states(self.run_dir):
                self.log("no usable training state to resume from: starting from step 0")
            return 0
        _restore_lora(self.network, state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["scheduler"])
        self.generator.set_state(state["rng"]["generator"])
        if state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        start = int(state["step"])
        self.log(f"resuming {self.side.upper()} from step {start} of {self.sp.total_steps}")
        return start

    # ---- one step

    def draw(self, step: int, scheduler, v_prediction: bool) -> "Draw":
        """This step's batch, noise and timesteps, drawn from the side's generator."""
        import torch

        from engine.train.conditioning import added_conditions, encode_text

        p, data, device = self.p, self.data, self.device
        batch = batch_for_step(step, data.items, p.train_batch_size, self.sp.steps_per_epoch, p.seed)
        flips = torch.rand(len(batch), generator=self.generator) < 0.5 if data.flipped is not None else [False] * len(batch)
        x0 = torch.cat([(data.flipped if flip else data.latents)[s.latent_index] for s, flip in zip(batch, flips)]).to(device)
        noise = torch.randn(x0.shape, generator=self.generator)
        if p.noise_offset:
            noise = noise + p.noise_offset * torch.randn((x0.shape[0], x0.shape[1], 1, 1), generator=self.generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=self.generator)
        noise, timesteps = noise.to(device), timesteps.to(device)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        target = scheduler.get_velocity(x0, noise, timesteps) if v_prediction else noise
        if self.train_text:
            texts = [encode_text(self.model, data.prompts[s.cond_index], p.clip_skip, grad=True) for s in batch]
        else:
            texts = [self.text_cache[s.cond_index] for s in batch]
        cond = torch.cat([t.hidden for t in texts])
        added = added_conditions(texts, [data.time_ids[s.latent_index] for s in batch], device=device, dtype=self.weight_dtype)
        weights = torch.tensor([s.weight for s in batch], device=device)
        return Draw(noisy, timesteps, cond, added, target, weights)

    def loss(self, pred, draw: "Draw", scheduler, v_prediction: bool):
        """The step's loss from the U-Net's prediction for this side's samples."""
        import torch

        loss = torch.nn.functional.mse_loss(pred.float(), draw.target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.p.min_snr_gamma:
            loss = loss * min_snr_weights(draw.timesteps, scheduler, self.p.min_snr_gamma, v_prediction)
        return (loss * draw.weights.to(loss.device)).mean()

    def optimizer_step(self) -> None:
        """After backward: unscale, clip, step, schedule (each side its own, as a separate run)."""
        import torch

        self.grad_scaler.unscale_(self.optimizer)
        if self.p.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.p.max_grad_norm)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.lr_schedule.get_last_lr()[0]

    def diverged(self, at_step: int, value: float) -> TrainingError:
        return _diverged(at_step, value, self.side, self.run_dir)

    # ---- writing

    def write_state(self, step: int, folder: Path | None = None) -> Path:
        return save_state(
            folder or self.run_dir,
            {
                "step": step,
                "total": self.sp.total_steps,
                "fingerprint": self.fingerprint,
                "lora": _lora_state(self.network),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.lr_schedule.state_dict(),
                "rng": {"generator": self.generator.get_state()},
                "grad_scaler": self.grad_scaler.state_dict(),
            },
        )

    def write_lora(self, step: int, path: Path) -> Path:
        from engine.lora.files import save_lora_file
        from engine.lora.metadata import lora_metadata

        facts = training_facts(self.plan, self.side, self.model, step=step, optimizer=self.optimizer_used, started=self.started,
                               seed=self.p.seed)
        metadata = lora_metadata(facts, self.model.family)
        # What `copylora run` compares to decide that this LoRA is up to date.
        metadata["copylora_fingerprint"] = self.fingerprint
        metadata["copylora_steps"] = str(step)
        if self.base_weights is not None:  # trained on base + A: which A, at which strength
            metadata["copylora_base_weights"] = json.dumps(self.base_weights)
        if self.start_weights is not None:  # started from [train] network_weights (kohya records none)
            metadata["copylora_network_weights"] = json.dumps(self.start_weights)
        return save_lora_file(path, self.network.weights(), metadata, self.p.save_precision)

    def write_snapshot(self, step: int) -> Path:
        """A LoRA beside the checkpoints (save-now); the final path is only written when done."""
        return self.write_lora(step, self.run_dir / f"{self.sp.lora_path.stem}-step{step:06d}.safetensors")

    def write_preview(self, step: int) -> Path:
        """The LoRA so far at strength 1.0. Sampling forks the RNG and restores the modes, so the
        training that follows is exactly what it would have been without it (tested)."""
        from engine.train.sample import preview_settings, sample_with_network

        project = self.plan.project
        settings, note = preview_settings(project.sample, self.device)
        if note and not self.preview_noted:
            self.log(note)
            self.preview_noted = True
        settings = replace(settings, strengths=[1.0])
        out = self.plan.samples_dir / f"{self.sp.lora_path.stem}-step{step:06d}.png"
        return sample_with_network(self.model, self.network, settings, out, model_name=Path(project.info.base_model).name,
                                   title=f"{self.sp.lora_path.stem} at step {step}", extra={"step": step, "side": self.side})

    def final_save(self, step: int) -> tuple[Path | None, Path]:
        return _final_save(step, self.write_state, self.write_lora, self.sp.lora_path, self.log)

    def rescue(self, step: int) -> str:
        """Checkpoint and LoRA to the rescue folder (this side's own folder was removed)."""
        kept = rescue_side(step, self.write_state, self.write_lora, self.sp.lora_path, self.run_dir, self.plan.project.root)
        return f"{self.side.upper()}: {kept}"


@dataclass
class Draw:
    """One step's inputs of one side, on the device."""

    noisy: Any
    timesteps: Any
    cond: Any
    added: dict | None  # SDXL's text_embeds and time_ids
    target: Any
    weights: Any


class PendingLosses:
    """Losses kept on the device until read together (one host-device wait for all of them).

    On the CPU (``defer`` False) every step is read at once, as before; on CUDA at most every
    :data:`LOSS_READ_S`, and whenever the caller forces it (before anything is written)."""

    def __init__(self, defer: bool) -> None:
        self.defer = defer
        self.items: list = []  # (step, losses on the device (one per side), lr)
        self.last_read = time.monotonic()

    def add(self, step: int, losses, lr: float) -> None:
        self.items.append((step, losses, lr))

    def due(self, force: bool = False) -> bool:
        return bool(self.items) and (not self.defer or force or time.monotonic() - self.last_read >= LOSS_READ_S)

    def read(self) -> list[tuple[int, list[float], float]]:
        import torch

        values = torch.stack([losses for _, losses, _ in self.items]).float().tolist()
        out = [(step, row, lr) for (step, _, lr), row in zip(self.items, values)]
        self.items.clear()
        self.last_read = time.monotonic()
        return out


def prepare_model(plan: Plan, side: str, device: str, weight_dtype, log: Log, model=None):
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


def free_vae(model, device: str) -> None:
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


def train(
    plan: Plan,
    side: str,
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
) -> TrainResult:
    """Train one side's LoRA. ``resume``: continue from the newest valid state in the run
    folder (else start fresh and drop old states). ``should_stop`` is polled every step: when
    it says so, the state is written and the result says "stopped". ``save_requested`` asks
    for a state + LoRA write at the next step, ``sample_requested`` for a preview (as
    ``sample_every_n_steps`` makes them). ``on_start(step, total)`` is called once the
    starting step is known (0, or where a resumed run continues). ``model`` reuses an already
    loaded base model."""
    side = side.lower()
    results = train_sides(plan, [side], resume=resume, device=device, on_progress=on_progress, should_stop=should_stop,
                          save_requested=save_requested, sample_requested=sample_requested, on_start=on_start, log=log,
                          model=model)
    return results[side]


def train_sides(
    plan: Plan,
    sides: list[str],
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
    """The training loop, for one side (:func:`train`) or for A and B as one batch of two
    (:func:`engine.train.twin.train_twin`, which checks first that they can go together). With
    two sides, sample i of the batch goes through side i's LoRA (:class:`engine.train.twin.TwinHooks`)
    and progress carries B's loss in ``loss_b``; everything else is each side's own (:class:`SideRun`)."""
    import torch

    twin = len(sides) == 2
    sp: SidePlan = plan.side(sides[0])
    p = sp.params
    total = sp.total_steps
    started = time.time()
    device = pick_device(device, model)
    weight_dtype, autocast_dtype, use_scaler = _precision(p.mixed_precision, device, log)
    base_weights = None if twin else base_weights_for(plan, sides[0])
    if base_weights is not None:
        check_base_weights(base_weights)  # before minutes of loading a model
    from engine.project.images import pair_warnings

    for warning in pair_warnings(plan.side("a").images, plan.side("b").images):  # A = B, or sizes apart: said as check says it
        log(f"warning: {warning}")
    model = prepare_model(plan, sides[0], device, weight_dtype, log, model)
    v_prediction = model.prediction_type == "v_prediction"
    scheduler = model.noise_scheduler
    # The differential route's B trains on the base with A applied (before B's text is encoded).
    applied = apply_base_weights(model, base_weights, device, log) if base_weights is not None else None
    runs: list[SideRun] = []
    hooks = None
    try:
        for side in sides:  # one by one: if B's set-up fails (its start file), A's is still undone below
            runs.append(SideRun(plan, side, model, device=device, weight_dtype=weight_dtype, use_scaler=use_scaler, started=started,
                                log=log, apply=not twin))
        free_vae(model, device)
        amp = autocast_for(device, autocast_dtype)
        starts = [run.resume_or_reset(resume) for run in runs]
        if twin and resume and len(set(starts)) > 1 and min(starts) > 0:
            # Killed between A's and B's checkpoint writes: the newer side still holds the
            # previous checkpoint (two are kept), so both resume from the step they share and
            # the run stays one twin run (bit for bit the run that was never interrupted).
            shared = [run.resume_or_reset(True, at_most=min(starts)) for run in runs]
            if len(set(shared)) == 1 and shared[0] > 0:
                log(f"A's newest checkpoint is at step {starts[0]} and B's at step {starts[1]}: both resume from step {shared[0]}")
                starts = shared
        if len(set(starts)) > 1:
            from engine.train.twin import TwinNotPossible

            raise TwinNotPossible(f"A's checkpoint is at step {starts[0]} and B's at step {starts[1]}: they resume apart")
        if twin:
            from engine.train.twin import TwinHooks

            hooks = TwinHooks(runs[0].network, runs[1].network)
            hooks.apply()
        who = "A and B together" if twin else sides[0].upper()
        log(f"training {who}: {total} steps, bucket {sp.buckets[0][0]}x{sp.buckets[0][1]}, "
            f"rank {p.network_dim}, {runs[0].optimizer_used} lr {p.learning_rate:g}, {device}")
        forward = unet_forward(model.unet, p.compile, device, log)
        step = starts[0]
        meters = [ProgressMeter(total, start_step=step) for _ in runs]
        if on_start is not None:
            on_start(step, total)
        values: list[float | None] = [None] * len(runs)
        states: list = [(None, None)] * len(runs)  # (checkpoint, LoRA) of each side
        # A project folder removed during the run is not re-created by the next write: stop, rescue.
        watch = FolderWatch(plan.project.root, [plan.project.output_dir(), *(run.run_dir for run in runs)])

        def removed(gone: str, finished: bool = False) -> TrainingError:
            if pending.items:
                read_losses()  # never rescue the weights of a diverged step
            return TrainingError(removed_message(gone, step, total, [run.rescue(step) for run in runs], finished))
        pending = PendingLosses(_defers_loss_reads(device))

        def read_losses() -> None:
            """Read what is pending; feed the meters all but the newest (:func:`report` takes
            that one); raise if any diverged."""
            read = pending.read()
            for at, row, _ in read:
                for run, value in zip(runs, row):
                    if not math.isfinite(value):
                        raise run.diverged(at, value)
            for at, row, lr in read:  # TensorBoard gets every step, as read
                for run, value in zip(runs, row):
                    if run.step_log is not None:
                        run.step_log.step(at, value, lr)
            for at, row, lr in read[:-1]:
                for meter, value in zip(meters, row):
                    meter.update(at, value, lr)
            values[:] = read[-1][1]

        def report() -> None:
            """The newest step's progress to the listener (its losses have been read)."""
            if on_progress is None:
                return
            vram = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
            progress = [meter.update(step, value, run.lr(), vram) for meter, value, run in zip(meters, values, runs)]
            if twin:
                progress[0] = replace(progress[0], loss_b=progress[1].loss, smooth_loss_b=progress[1].smooth_loss)
            on_progress(progress[0])

        def results(status: str) -> dict[str, TrainResult]:
            seconds = time.time() - started
            vram = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") and status == "done" else None
            return {run.side: TrainResult(status, step, total, lora, state, seconds, run.optimizer_used, value, vram)
                    for run, (state, lora), value in zip(runs, states, values)}

        while step < total:
            if should_stop is not None and should_stop():
                if (gone := watch.gone(force=True)) is not None:
                    raise removed(gone)
                if pending.items:
                    read_losses()
                for i, run in enumerate(runs):
                    try:
                        states[i] = (run.write_state(step), None)
                    except OSError as exc:
                        raise TrainingError(f"stopped at step {step}, but its checkpoint could not be written to {run.run_dir} ({exc})") from None
                names = " and ".join(f"{state.name}{f' ({run.side.upper()})' if twin else ''}" for run, (state, _) in zip(runs, states))
                log(f"stopped at step {step}; state saved to {names}")
                return results("stopped")

            draws = [run.draw(step, scheduler, v_prediction) for run in runs]
            half = draws[0].noisy.shape[0]
            if twin:
                noisy, timesteps, cond = (torch.cat([getattr(d, k) for d in draws]) for k in ("noisy", "timesteps", "cond"))
                added = None if draws[0].added is None else {k: torch.cat([d.added[k] for d in draws]) for k in draws[0].added}
            else:
                noisy, timesteps, cond, added = draws[0].noisy, draws[0].timesteps, draws[0].cond, draws[0].added
            with amp:
                pred = forward(noisy.to(weight_dtype), timesteps, cond.to(weight_dtype), added_cond_kwargs=added).sample
            losses = [_loss_hook(step, run.loss(pred[i * half:(i + 1) * half], draw, scheduler, v_prediction))
                      for i, (run, draw) in enumerate(zip(runs, draws))]
            if not pending.defer:  # reading is free here: a diverged step stops before its update
                for run, loss in zip(runs, losses):
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise run.diverged(step + 1, value)
            # One backward for all sides: side i's LoRA only sees sample i's loss (every layer
            # works per sample). Each side scales its own loss.
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
            if pending.items and (checkpoint_due or preview_due):  # never write the weights of an unread (maybe diverged) step
                read_losses()
                report()
            if (gone := watch.gone(force=checkpoint_due or preview_due)) is not None:
                raise removed(gone)
            if checkpoint_due:
                for i, run in enumerate(runs):
                    try:
                        states[i] = (run.write_state(step), None)
                    except OSError as exc:  # a full disk must not end hours of training: the end tries again
                        whose = f"{run.side.upper()}'s " if twin else "the "
                        log(f"warning: could not write {whose}checkpoint of step {step} ({exc}); training goes on")
            if asked:
                for run in runs:
                    log(f"saved {run.write_snapshot(step).name} at step {step}")
            if preview_due:
                with hooks.suspended() if hooks else nullcontext():  # a preview applies one side's own network
                    for run in runs:
                        log(f"preview {run.write_preview(step).name} at step {step}")

        if (gone := watch.gone(force=True)) is not None:
            raise removed(gone, finished=True)
        failures = []
        for i, run in enumerate(runs):  # every side is saved (or rescued) before a failure is raised
            try:
                states[i] = run.final_save(step)
            except TrainingError as exc:
                if not twin:
                    raise
                failures.append(f"{run.side.upper()}: {exc}")
        if failures:
            raise TrainingError("; ".join(failures))
        log(f"done: {' and '.join(str(lora) for _, lora in states)} ({step} steps in {time.time() - started:.1f} s)")
        return results("done")
    finally:
        # The base model may be reused (tests, the sampler): leave it as it was found.
        if hooks is not None:
            hooks.remove()
        for run in runs:
            run.network.remove()
            if run.step_log is not None:
                run.step_log.close()
        if applied is not None:
            applied.remove()
