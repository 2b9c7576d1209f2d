"""Teacher images into training tensors, and their VAE latents computed once.

The teacher image never changes, so re-encoding it with the VAE every step (as a default
sd-scripts run without --cache_latents does) is pure waste: each image is resized into its
bucket, encoded once, and the latents are reused for all steps. With ``flip_aug`` the mirrored
image is encoded once too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import CopyloraError


class TeacherImageError(CopyloraError):
    pass


def load_bucketed(path: Path, bucket: tuple[int, int], *, random_crop: bool = False, seed: int = 0):
    """The image as a (3, H, W) float tensor in [-1, 1], scaled to cover the bucket, then cropped.

    Scaling uses Lanczos (sharp when downscaling a large teacher). The crop is centred unless
    ``random_crop``; the random crop is drawn once per image from ``seed`` because latents are cached.
    """
    import numpy as np
    import torch
    from PIL import Image

    width, height = bucket
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except Exception as exc:
        raise TeacherImageError(f"cannot read teacher image {path}: {exc}") from None
    scale = max(width / image.width, height / image.height)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(resized, Image.Resampling.LANCZOS)
    spare_x, spare_y = resized[0] - width, resized[1] - height
    if random_crop:
        rng = np.random.default_rng(seed)
        left, top = int(rng.integers(0, spare_x + 1)), int(rng.integers(0, spare_y + 1))
    else:
        left, top = spare_x // 2, spare_y // 2
    image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass
class CachedLatents:
    """Per teacher image: its latents (1, 4, h/8, w/8) and, with flip_aug, the mirrored ones."""

    latents: list
    flipped: list | None


def encode_latents(vae, pixels, dtype=None):
    """VAE posterior mean times the scaling factor: deterministic, the exact picture to copy."""
    import torch

    with torch.no_grad():
        batch = pixels.unsqueeze(0).to(device=vae.device, dtype=vae.dtype)
        latents = vae.encode(batch).latent_dist.mean * vae.config.scaling_factor
    return latents.to(dtype or torch.float32)


def cache_teacher_latents(vae, images: list[Path], buckets: list[tuple[int, int]], *, flip: bool, random_crop: bool, seed: int) -> CachedLatents:
    latents, flipped = [], [] if flip else None
    for index, (path, bucket) in enumerate(zip(images, buckets)):
        pixels = load_bucketed(path, bucket, random_crop=random_crop, seed=seed + index)
        latents.append(encode_latents(vae, pixels))
        if flipped is not None:
            flipped.append(encode_latents(vae, pixels.flip(-1)))
    return CachedLatents(latents, flipped)
