"""The built-in ``tiny`` base model: SD1.5's exact topology at toy widths, built offline.

Demos and tests need a Stable Diffusion model without downloading gigabytes. This one has
every module SD1.5 has, under the same names (so LoRA key names are the real ones), but
channels of 32-64 and a 32-wide CLIP, so it builds in seconds and trains on one CPU core.
Its weights are random from a fixed seed: it "learns" an image like a real model does,
it just knows nothing before.

The first build is written to a cache folder in diffusers format
(``$COPYLORA_CACHE/tiny-sd15-v1``, default ``~/.cache/copylora``), so every process and
every later run sees the same weights. Two processes may race to build it: each builds in
its own temporary folder and renames it into place; the loser throws its copy away.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TINY_NAME = "tiny-sd15-v1"  # bump the suffix when the architecture or seed changes
TINY_SEED = 20240607
_COMPLETE_MARK = "copylora-complete"  # written last, so a half-copied folder is never used

# SD1.5's layout, narrowed. Widths are multiples of 32 because every GroupNorm has 32 groups.
# Widths grow where SD1.5's do (320, 640, 1280, 1280), so the same resnets get a 1x1
# skip conv and the LoRA key set is exactly SD1.5's.
UNET_CHANNELS = (32, 64, 96, 96)
VAE_CHANNELS = (32, 64, 96, 96)  # SD1.5: (128, 256, 512, 512), same growth pattern
CLIP_HIDDEN = 32
CLIP_LAYERS = 12  # as SD1.5, so text-encoder LoRA names run layers_0..layers_11
CLIP_HEADS = 4
SAMPLE_SIZE = 16  # latent side: the pipeline's default image is 128x128

# A few merges so the tokenizer is a real BPE (not only bytes); everything else falls back
# to byte-level symbols, so any ASCII prompt tokenizes.
_TINY_MERGES = ["t h", "th e</w>", "a n", "i n", "e r</w>", "o n</w>", "o f</w>", "c at</w>", "a t</w>"]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def cache_root() -> Path:
    """Folder for copylora's caches (``COPYLORA_CACHE`` or ``~/.cache/copylora``)."""
    env = os.environ.get("COPYLORA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "copylora"


def byte_symbols() -> list[str]:
    """CLIP's byte-level alphabet: one printable character per byte value, in CLIP's order.

    Printable Latin-1 bytes stand for themselves; the rest (controls, space...) are shifted
    to code points from 256 up, so BPE never sees whitespace or control characters.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept = set(keep)
    shifted = [b for b in range(256) if b not in kept]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(shifted))]


def clip_vocab(merges: list[str]) -> dict[str, int]:
    """The vocabulary CLIP derives from a merges list: bytes, bytes+</w>, merges, specials."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=clip_vocab(_TINY_MERGES), merges=[tuple(m.split()) for m in _TINY_MERGES], model_max_length=77
    )


def build_tiny_components(seed: int = TINY_SEED) -> dict:
    """Build the tiny model in memory: unet, vae, text_encoder, tokenizer, scheduler.

    Uses a forked RNG so building never disturbs the caller's random state.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=SAMPLE_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=UNET_CHANNELS,
            layers_per_block=2,
            cross_attention_dim=CLIP_HIDDEN,
            attention_head_dim=2,  # diffusers' legacy name: this is the number of heads
            norm_num_groups=32,
            use_linear_projection=False,  # SD1.5's proj_in/proj_out are 1x1 convs
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=VAE_CHANNELS,
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=SAMPLE_SIZE * 8,
            scaling_factor=0.18215,
        )
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=CLIP_HIDDEN,
            intermediate_size=CLIP_HIDDEN * 4,
            num_hidden_layers=CLIP_LAYERS,
            num_attention_heads=CLIP_HEADS,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=CLIP_HIDDEN,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config)
    # SD1.5's own sampling scheduler settings (training uses a DDPMScheduler, see models.py).
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def _pipeline_from(components: dict):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def tiny_model_dir() -> Path:
    """The tiny model's diffusers folder, building and caching it on first use."""
    final = cache_root() / TINY_NAME
    if (final / _COMPLETE_MARK).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Same filesystem as the final folder, so the rename below is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_NAME}-", dir=final.parent))
    try:
        _pipeline_from(build_tiny_components()).save_pretrained(tmp, safe_serialization=True)
        (tmp / _COMPLETE_MARK).write_text("ok\n")
        if final.exists() and not (final / _COMPLETE_MARK).is_file():
            # Left over from a crash before the mark existed (older layout): replace it.
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _COMPLETE_MARK).is_file():
                raise  # not a lost race: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the loser's copy (no-op after a rename)
    return final


def tiny_pipeline(dtype=None, device: str = "cpu"):
    """A diffusers ``StableDiffusionPipeline`` of the tiny model (no safety checker)."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir(),
        dtype=dtype or torch.float32,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    return pipe.to(device)
