"""The metadata of LoRA files: kohya's ss_* keys and modelspec, so every tool shows what a file is."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Mapping
from typing import Any


def lora_metadata(facts: Mapping[str, Any], family: str) -> dict[str, str]:
    """kohya ``ss_*`` training metadata plus ``modelspec.*`` keys, as strings.

    ``facts`` holds plain values the trainer (or merger) knows; every key is optional:
    ``network_dim, network_alpha, conv_dim, conv_alpha, learning_rate, unet_lr,
    text_encoder_lr, optimizer, lr_scheduler, lr_warmup_steps, steps, epoch, num_epochs,
    max_train_steps, batch_size, gradient_accumulation_steps, resolution (w, h), seed,
    mixed_precision, clip_skip, max_token_length, noise_offset, min_snr_gamma, prior_loss_weight,
    max_grad_norm, gradient_checkpointing, cache_latents, network_train_unet_only,
    datasets (list of {dir, repeats, images, is_reg, tags}), num_batches_per_epoch,
    model_name, model_hash, new_model_hash, vae_name, output_name, title, comment,
    training_started_at, training_finished_at (Unix times), session_id, merged_from,
    description, author, tags``. Keys already named ``ss_*`` / ``modelspec.*`` are copied.
    """
    meta = kohya_ss_metadata(facts, family)
    meta.update(
        modelspec_metadata(
            family,
            title=facts.get("title") or facts.get("output_name"),
            timestamp=facts.get("training_finished_at") or facts.get("training_started_at") or time.time(),
            resolution=facts.get("resolution"),
            clip_skip=facts.get("clip_skip"),
            merged_from=facts.get("merged_from"),
            description=facts.get("description"),
            author=facts.get("author"),
            tags=facts.get("tags"),
        )
    )
    meta.update({k: str(v) for k, v in facts.items() if k.startswith(("ss_", "modelspec."))})
    return meta


def computed_lora_metadata(modules: Mapping[str, Any], family: str, *, dim: int, conv_dim: int | None, alpha: float,
                           record_key: str, record: Mapping[str, Any], **facts: Any) -> dict[str, str]:
    """The metadata of a LoRA computed rather than trained (a merge, an extract): kohya's and
    modelspec's keys for what the file holds — its rank and alpha, a conv rank only where it has
    3×3 modules, U-Net-only where it has no text-encoder module, as kohya's loaders expect — with
    ``facts`` (title, description, …), and copylora's own record of how it was made under
    ``record_key`` (JSON), so the file can be traced and made again. ``modules``: name → factors
    with a ``down`` tensor."""
    has_conv = any(w.down.dim() == 4 and w.down.shape[-1] > 1 for w in modules.values())
    meta = lora_metadata({
        "network_dim": dim,
        "network_alpha": alpha,
        "conv_dim": conv_dim if has_conv else None,
        "conv_alpha": alpha if has_conv else None,
        "network_train_unet_only": trains_unet_only(modules),
        "training_finished_at": time.time(),
        **facts,
    }, family)
    meta[record_key] = json.dumps(dict(record))
    return meta


def trains_unet_only(module_names) -> bool:
    """kohya's ``network_train_unet_only`` as a file's modules show it: no text-encoder module
    (kohya's ``lora_te_``/``lora_te1_``/``lora_te2_`` names) in it."""
    return not any(str(name).startswith("lora_te") for name in module_names)


def trained_resolution(metadatas) -> tuple[int, int] | None:
    """The resolution some LoRA files were trained at, from their metadata (``modelspec.resolution``
    "64x64", else kohya's ``ss_resolution`` "(64, 64)"): a merge of them was made for it, not for
    the family's native one. When they differ, the largest; None when none says."""
    import re

    found = []
    for meta in metadatas:
        for key in ("modelspec.resolution", "ss_resolution"):
            numbers = [int(n) for n in re.findall(r"\d+", str(meta.get(key) or ""))]
            if len(numbers) >= 2 and min(numbers[:2]) > 0:
                found.append((numbers[0], numbers[1]))
                break
    return max(found, key=lambda wh: (wh[0] * wh[1], wh)) if found else None


def kohya_ss_metadata(facts: Mapping[str, Any], family: str) -> dict[str, str]:
    """The ``ss_*`` keys as kohya's ``train_network.py`` writes them (``str()`` of each value)."""
    from engine.models.loading import KOHYA_VERSION

    f = dict(facts)
    started = f.get("training_started_at") or time.time()
    conv_dim = f.get("conv_dim") or 0
    datasets = list(f.get("datasets") or [])
    train = [d for d in datasets if not d.get("is_reg")]
    reg = [d for d in datasets if d.get("is_reg")]
    resolution = f.get("resolution")
    meta: dict[str, Any] = {
        "ss_session_id": f.get("session_id") or random.randint(0, 2**32),  # as kohya: random per run
        "ss_training_started_at": started,
        "ss_output_name": f.get("output_name"),
        "ss_learning_rate": f.get("learning_rate"),
        "ss_text_encoder_lr": f.get("text_encoder_lr"),
        "ss_unet_lr": f.get("unet_lr"),
        "ss_num_train_images": sum(int(d.get("images", 0)) * int(d.get("repeats", 1)) for d in train),
        "ss_num_reg_images": sum(int(d.get("images", 0)) for d in reg),
        "ss_num_batches_per_epoch": f.get("num_batches_per_epoch"),
        "ss_num_epochs": f.get("num_epochs"),
        "ss_gradient_checkpointing": bool(f.get("gradient_checkpointing", False)),
        "ss_gradient_accumulation_steps": f.get("gradient_accumulation_steps", 1),
        "ss_max_train_steps": f.get("max_train_steps"),
        "ss_lr_warmup_steps": f.get("lr_warmup_steps", 0),
        "ss_lr_scheduler": f.get("lr_scheduler"),
        "ss_network_module": "networks.lora",
        "ss_network_dim": f.get("network_dim"),
        "ss_network_alpha": f.get("network_alpha"),
        "ss_network_train_unet_only": bool(f.get("network_train_unet_only", False)),
        "ss_mixed_precision": f.get("mixed_precision"),
        "ss_v2": family.startswith("sd2"),
        "ss_base_model_version": KOHYA_VERSION[family],
        "ss_clip_skip": f.get("clip_skip"),
        "ss_max_token_length": f.get("max_token_length"),  # None: 75, as sd-scripts writes it
        "ss_cache_latents": bool(f.get("cache_latents", False)),
        "ss_seed": f.get("seed"),
        "ss_noise_offset": f.get("noise_offset"),
        "ss_zero_terminal_snr": bool(f.get("zero_terminal_snr", False)),  # kohya's --zero_terminal_snr: the base's betas
        "ss_min_snr_gamma": f.get("min_snr_gamma"),
        "ss_prior_loss_weight": f.get("prior_loss_weight", 1.0),
        "ss_max_grad_norm": f.get("max_grad_norm"),
        "ss_optimizer": f.get("optimizer"),
        "ss_training_comment": f.get("comment"),
        "ss_batch_size_per_device": f.get("batch_size", 1),
        "ss_total_batch_size": int(f.get("batch_size", 1)) * int(f.get("gradient_accumulation_steps", 1)),
        "ss_resolution": str(tuple(resolution)) if resolution else None,
        "ss_dataset_dirs": json.dumps(_dirs(train)),
        "ss_reg_dataset_dirs": json.dumps(_dirs(reg)),
        "ss_tag_frequency": json.dumps({_dir_name(d): d.get("tags", {}) for d in datasets}),
        "ss_datasets": json.dumps([_dataset(f, train, reg)]) if datasets else None,
        "ss_sd_model_name": os.path.basename(str(f["model_name"])) if f.get("model_name") else None,
        "ss_sd_model_hash": f.get("model_hash"),
        "ss_new_sd_model_hash": f.get("new_model_hash"),
        "ss_vae_name": f.get("vae_name"),
    }
    if conv_dim:
        # kohya stores --network_args values as the strings they were given.
        args = {"conv_dim": str(conv_dim), "conv_alpha": str(f.get("conv_alpha", 1))}
        meta["ss_network_args"] = json.dumps(args)
    if f.get("steps") is not None:
        meta["ss_steps"] = f["steps"]
    if f.get("epoch") is not None:
        meta["ss_epoch"] = f["epoch"]
    if f.get("training_finished_at") is not None:
        meta["ss_training_finished_at"] = f["training_finished_at"]
    return {k: str(v) for k, v in meta.items()}


def _dataset(f: Mapping[str, Any], train: list, reg: list) -> dict[str, Any]:
    """kohya's ``ss_datasets`` entry of one DreamBooth dataset whose subsets are the folders
    (teacher folders and class folders, in training order), as train_network.py writes it."""
    resolution = f.get("resolution") or [0, 0]
    subsets = [{
        "img_count": int(d.get("images", 0)), "num_repeats": int(d.get("repeats", 1)), "color_aug": False,
        "flip_aug": bool(f.get("flip_aug", False)), "random_crop": bool(f.get("random_crop", False)),
        "shuffle_caption": False, "keep_tokens": 0, "image_dir": _dir_name(d), "class_tokens": d.get("prompt") or None,
        "is_reg": bool(d.get("is_reg")),
    } for d in [*train, *reg]]
    return {
        "is_dreambooth": True,
        "batch_size_per_device": f.get("batch_size", 1),
        "num_train_images": sum(int(d.get("images", 0)) * int(d.get("repeats", 1)) for d in train),
        "num_reg_images": sum(int(d.get("images", 0)) for d in reg),
        "resolution": list(resolution),
        "enable_bucket": True,
        "min_bucket_reso": 64,
        "max_bucket_reso": max(resolution),
        "tag_frequency": {_dir_name(d): d.get("tags", {}) for d in [*train, *reg]},
        "subsets": subsets,
    }


def _dir_name(d: Mapping[str, Any]) -> str:
    return os.path.basename(os.path.normpath(str(d.get("dir", ""))))


def _dirs(datasets: list[Mapping[str, Any]]) -> dict:
    return {_dir_name(d): {"n_repeats": int(d.get("repeats", 1)), "img_count": int(d.get("images", 0))} for d in datasets}


MODELSPEC_ARCH = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sd2-v": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
    "sdxl-v": "stable-diffusion-xl-v1-base",  # kohya's sai_model_spec: one SDXL architecture, the target in prediction_type
}


def modelspec_metadata(
    family: str,
    *,
    title: str | None = None,
    timestamp: float | None = None,
    resolution=None,
    clip_skip: int | None = None,
    merged_from: str | None = None,
    description: str | None = None,
    author: str | None = None,
    tags: str | None = None,
) -> dict[str, str]:
    """The ``modelspec.*`` keys (Stability AI's ModelSpec) as kohya's sai_model_spec fills them.

    kohya names SD1/SD2 LoRAs' implementation "diffusers" and SDXL LoRAs' the SGM repo URL.
    """
    from engine import __version__

    timestamp = timestamp or time.time()
    if resolution is None:
        side = 1024 if family.startswith("sdxl") else 768 if family == "sd2-v" else 512
        resolution = (side, side)
    elif isinstance(resolution, int):
        resolution = (resolution, resolution)
    import datetime

    meta = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": MODELSPEC_ARCH[family] + "/lora",
        "modelspec.implementation": (
            "https://github.com/Stability-AI/generative-models" if family.startswith("sdxl") else "diffusers"
        ),
        "modelspec.implementation_version": f"copylora/{__version__}",
        "modelspec.title": title or f"LoRA@{timestamp}",
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "modelspec.prediction_type": "v" if family.endswith("-v") else "epsilon",
    }
    optional = {"encoder_layer": clip_skip, "merged_from": merged_from, "description": description}
    optional.update(author=author, tags=tags)
    meta.update({f"modelspec.{k}": str(v) for k, v in optional.items() if v is not None})
    return meta
