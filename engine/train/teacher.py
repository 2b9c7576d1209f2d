"""Teacher images into training tensors, and their VAE latents computed once.

The teacher image never changes, so re-encoding it with the VAE every step (as a default
sd-scripts run without --cache_latents does) is pure waste: each image is resized into its
bucket, encoded once, and the latents are reused for all steps. With ``flip_aug`` the mirrored
image is encoded once too.

Encoding always runs in float32 and the latents are cached in float32, whatever precision the
model was loaded in: SDXL's VAE overflows in fp16 (NaN/inf latents), and one encode per image
costs nothing. The VAE is put back in its own dtype afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import InputError


class TeacherImageError(InputError):
    pass


def load_bucketed(path: Path, bucket: tuple[int, int], *, random_crop: bool = False, seed: int = 0):
    """The image as a (3, H, W) float tensor in [-1, 1], scaled to cover the bucket, then cropped.

    Scaling uses Lanczos (sharp when downscaling a large teacher). The crop is centred unless
    ``random_crop``; the random crop is drawn once per image from ``seed`` because latents are cached.
    """
    return _load_bucketed(path, bucket, random_crop=random_crop, seed=seed)[0]


def _load_bucketed(path: Path, bucket: tuple[int, int], *, random_crop: bool, seed: int):
    """``(pixels, original size (w, h), crop (left, top))``, see :func:`load_bucketed`."""
    import numpy as np
    import torch
    from PIL import Image

    from engine.project.images import load_picture

    width, height = bucket
    try:
        image = load_picture(path)  # upright, 8-bit, transparency on white: as `check` sized it
    except Exception as exc:
        raise TeacherImageError(f"cannot read teacher image {path}: {exc}") from None
    original = image.size
    resized, (left, top) = bucket_crop(original, bucket, random_crop=random_crop, seed=seed)
    image = image.resize(resized, Image.Resampling.LANCZOS)
    image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), original, (left, top)


def bucket_crop(size: tuple[int, int], bucket: tuple[int, int], *, random_crop: bool = False, seed: int = 0):
    """``(resized (w, h), crop (left, top))``: how :func:`load_bucketed` fits an image of ``size``
    into ``bucket`` (scale to cover, then crop; the crop is in resized pixels)."""
    import numpy as np

    width, height = bucket
    scale = max(width / size[0], height / size[1])
    resized = (max(width, round(size[0] * scale)), max(height, round(size[1] * scale)))
    spare_x, spare_y = resized[0] - width, resized[1] - height
    if random_crop:
        rng = np.random.default_rng(seed)
        return resized, (int(rng.integers(0, spare_x + 1)), int(rng.integers(0, spare_y + 1)))
    return resized, (spare_x // 2, spare_y // 2)


@dataclass
class CachedLatents:
    """Per teacher image: its latents (1, 4, h/8, w/8) and, with flip_aug, the mirrored ones;
    its original size (w, h) and the crop (left, top) taken in its bucket (SDXL conditions on both)."""

    latents: list
    flipped: list | None
    sizes: list = field(default_factory=list)
    crops: list = field(default_factory=list)


def encode_latents(vae, pixels, dtype=None):
    """VAE posterior mean times the scaling factor: deterministic, the exact picture to copy."""
    import torch

    with torch.no_grad():
        batch = pixels.unsqueeze(0).to(device=vae.device, dtype=vae.dtype)
        latents = vae.encode(batch).latent_dist.mean * vae.config.scaling_factor
    return latents.to(dtype or torch.float32)


def cache_teacher_latents(vae, images: list[Path], buckets: list[tuple[int, int]], *, flip: bool, random_crop: bool, seed: int) -> CachedLatents:
    import torch

    cached = CachedLatents([], [] if flip else None)
    own_dtype = vae.dtype
    vae.to(torch.float32)  # fp16-safe: see the module doc
    try:
        for index, (path, bucket) in enumerate(zip(images, buckets)):
            pixels, size, crop = _load_bucketed(path, bucket, random_crop=random_crop, seed=seed + index)
            cached.latents.append(encode_latents(vae, pixels))
            if cached.flipped is not None:
                cached.flipped.append(encode_latents(vae, pixels.flip(-1)))
            cached.sizes.append(size)
            cached.crops.append(crop)
    finally:
        vae.to(own_dtype)
    return cached
