"""The built-in ``tiny`` and ``tiny-sdxl`` base models: SD1.5's and SDXL's exact topologies
at toy widths, built offline.

Demos and tests need a Stable Diffusion model without downloading gigabytes. ``tiny`` has
every module SD1.5 has, under the same names (so LoRA key names are the real ones), but
channels of 32-96 and a 32-wide CLIP, so it builds in seconds and trains on one CPU core.
Its weights are random from a fixed seed: it "learns" an image like a real model does,
it just knows nothing before.

The first build is written to a cache folder in diffusers format
(``$COPYLORA_CACHE/tiny-sd15-v1``, default ``~/.cache/copylora``), so every process and
every later run sees the same weights. Two processes may race to build it: each builds in
its own temporary folder and renames it into place; the loser throws its copy away.

``tiny-sdxl`` (cache folder ``tiny-sdxl-v1``) is built the same way: SDXL's U-Net layout
(DownBlock2D + two CrossAttnDownBlock2D with 1/2/10 transformer layers, linear projections,
"text_time" additional conditioning), its two text encoders (CLIPTextModel with 12 layers,
CLIPTextModelWithProjection with 32 layers; the second tokenizer pads with ``!``), SDXL's
VAE settings and its Euler scheduler, so every LoRA name is SDXL's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

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

TINY_SDXL_NAME = "tiny-sdxl-v1"  # bump the suffix when the architecture or seed changes
TINY_SDXL_SEED = 20240608
# SDXL's layout, narrowed: widths grow x2 per level as SDXL's (320, 640, 1280) do, so the
# same resnets get a 1x1 skip conv; heads of 16 channels (SDXL: 64).
SDXL_UNET_CHANNELS = (32, 64, 96)
SDXL_HEADS = (2, 4, 6)  # diffusers calls this attention_head_dim (SDXL: 5, 10, 20)
SDXL_TRANSFORMER_LAYERS = (1, 2, 10)  # as SDXL: the middle block has 10 too
SDXL_CLIP_HIDDEN = (32, 64)  # text_encoder (SDXL: 768), text_encoder_2 (SDXL: 1280)
SDXL_CLIP_LAYERS = (12, 32)  # as SDXL, so LoRA names run layers_0..11 and 0..31
SDXL_POOLED_DIM = 64  # text_encoder_2's projection_dim (SDXL: 1280)
SDXL_TIME_EMBED_DIM = 8  # addition_time_embed_dim per time id (SDXL: 256); 6 time ids

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


def tiny_tokenizer(pad_token: str | None = None):
    """The tiny CLIP tokenizer; ``pad_token="!"`` for SDXL's second tokenizer (as SDXL pads)."""
    from transformers import CLIPTokenizer

    extra: dict[str, Any] = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(
        vocab=clip_vocab(_TINY_MERGES), merges=[tuple(m.split()) for m in _TINY_MERGES], model_max_length=77, **extra  # type: ignore[misc]  # (a, b) pairs, whatever its hint says
    )


def build_tiny_components(seed: int = TINY_SEED) -> dict:
    """Build the tiny model in memory: unet, vae, text_encoder, tokenizer, scheduler.

    Uses a forked RNG so building never disturbs the caller's random state.
    """
    import torch
    from diffusers import PNDMScheduler, UNet2DConditionModel
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
        vae = _tiny_vae(SAMPLE_SIZE * 8, scaling_factor=0.18215, force_upcast=True)
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


def _tiny_vae(sample_size: int, scaling_factor: float, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=VAE_CHANNELS,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def build_tiny_sdxl_components(seed: int = TINY_SDXL_SEED) -> dict:
    """Build the tiny SDXL model in memory: the components of a ``StableDiffusionXLPipeline``.

    Uses a forked RNG so building never disturbs the caller's random state.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer(pad_token="!")

    def clip_config(hidden: int, layers: int, act: str, **extra) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=CLIP_HEADS,
            max_position_embeddings=77,
            hidden_act=act,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **extra,
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=SAMPLE_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=SDXL_UNET_CHANNELS,
            layers_per_block=2,
            transformer_layers_per_block=SDXL_TRANSFORMER_LAYERS,
            attention_head_dim=SDXL_HEADS,  # diffusers' legacy name: the number of heads
            cross_attention_dim=sum(SDXL_CLIP_HIDDEN),  # both encoders' hidden states, concatenated
            norm_num_groups=32,
            use_linear_projection=True,  # SDXL's proj_in/proj_out are Linear
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=SDXL_POOLED_DIM + 6 * SDXL_TIME_EMBED_DIM,
        )
        vae = _tiny_vae(SAMPLE_SIZE * 8, scaling_factor=0.13025, force_upcast=True)  # SDXL's VAE settings
        text_encoder = CLIPTextModel(
            clip_config(SDXL_CLIP_HIDDEN[0], SDXL_CLIP_LAYERS[0], "quick_gelu", projection_dim=SDXL_CLIP_HIDDEN[0],
                        pad_token_id=tokenizer.pad_token_id)
        )
        text_encoder_2 = CLIPTextModelWithProjection(
            clip_config(SDXL_CLIP_HIDDEN[1], SDXL_CLIP_LAYERS[1], "gelu", projection_dim=SDXL_POOLED_DIM,
                        pad_token_id=tokenizer_2.pad_token_id)
        )
    # SDXL base's own sampling scheduler settings (training uses a DDPMScheduler, see models.py).
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        interpolation_type="linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        use_karras_sigmas=False,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
    }


def _sdxl_pipeline_from(components: dict):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=True, add_watermarker=False)


def _cached_model_dir(name: str, build) -> Path:
    """``cache_root()/name``, built by ``build()`` (a pipeline) and cached on first use."""
    from engine.files import give_umask_modes, staging_folder

    final = cache_root() / name
    if (final / _COMPLETE_MARK).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Same filesystem as the final folder, so the rename below is atomic.
    tmp = staging_folder(final)
    try:
        build().save_pretrained(tmp, safe_serialization=True)
        (tmp / _COMPLETE_MARK).write_text("ok\n")
        give_umask_modes(tmp)  # its weights were written 0600: a COPYLORA_CACHE shared by a group failed for the others
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


def tiny_model_dir() -> Path:
    """The tiny model's diffusers folder, building and caching it on first use."""
    return _cached_model_dir(TINY_NAME, lambda: _pipeline_from(build_tiny_components()))


def tiny_sdxl_dir() -> Path:
    """The tiny SDXL model's diffusers folder, building and caching it on first use."""
    return _cached_model_dir(TINY_SDXL_NAME, lambda: _sdxl_pipeline_from(build_tiny_sdxl_components()))


# Built-in base model specs (``[project].base_model``) -> their cached diffusers folder. Their
# families and widths are data that needs no model: engine.formats.model_files.
def _toy_model_dir() -> Path:
    from engine.models.toy import toy_model_dir

    return toy_model_dir()


BUILTIN_MODEL_DIRS = {"tiny": tiny_model_dir, "tiny-sdxl": tiny_sdxl_dir, "toy": _toy_model_dir}


def builtin_model_dir(spec: str) -> Path:
    """The diffusers folder of a built-in model spec ("tiny", "tiny-sdxl" or "toy")."""
    return BUILTIN_MODEL_DIRS[spec]()


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


def tiny_sdxl_pipeline(dtype=None, device: str = "cpu"):
    """A diffusers ``StableDiffusionXLPipeline`` of the tiny SDXL model (no watermarker)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        tiny_sdxl_dir(), dtype=dtype or torch.float32, add_watermarker=False, local_files_only=True
    )
    return pipe.to(device)
