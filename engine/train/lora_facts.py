"""The facts a side's LoRA file records of its training, in kohya's and modelspec's metadata
(:mod:`engine.lora.metadata` spells them): settings, steps, datasets, base model."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from engine.models.loading import BaseModel
from engine.project.concepts import resolve_prompt
from engine.project.plan import Plan


def training_facts(plan: Plan, side: str, model: BaseModel, *, step: int, optimizer: str, started: float, seed: int) -> dict[str, Any]:
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
        "max_token_length": p.max_token_length if p.max_token_length > 75 else None,
        "noise_offset": p.noise_offset or None,
        "min_snr_gamma": p.min_snr_gamma,
        "zero_terminal_snr": model.zero_snr,
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

