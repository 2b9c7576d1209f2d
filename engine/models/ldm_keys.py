"""Key names of the original single-file (A1111 / LDM) layout, from diffusers' names.

A single-file Stable Diffusion checkpoint stores the same tensors as a diffusers folder under
other names. Baking a LoRA into a single file must change exactly the tensors the LoRA's
modules live in, under the file's own names, so this module maps a diffusers state-dict key
(component + key, e.g. ``unet`` / ``down_blocks.0.attentions.0.proj_in.weight``) to the
original key (``model.diffusion_model.input_blocks.1.1.proj_in.weight``).

The mapping is table-driven: per family, a prefix and a path converter for each component.
It is the inverse of diffusers' own single-file conversion (the tests load a checkpoint
written with these names through diffusers and get the same weights back). Only SD1 is
mapped so far: SD2 and SDXL store their OpenCLIP text encoders with fused q/k/v projections
(``attn.in_proj_weight``), which needs row slices, and are refused with a clear message.
"""

from __future__ import annotations

import re
from typing import Callable

from engine.lora.names import diffusers_to_sgm, sgm_layout

UNET_PREFIX = "model.diffusion_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
VAE_PREFIX = "first_stage_model."

# U-Net modules outside the numbered blocks (never LoRA targets, but part of a full conversion).
_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


class UnsupportedLayout(Exception):
    """No original-layout key mapping for this family/component (yet)."""


# --------------------------------------------------------------------------- per-key mapping


def unet_key_to_ldm(key: str, layout: tuple[int, list[bool]]) -> str:
    """``down_blocks.0.resnets.0.conv1.weight`` -> ``model.diffusion_model.input_blocks.1.0.in_layers.2.weight``.

    ``layout`` is :func:`engine.lora.names.sgm_layout` of the U-Net (layers per block, which
    up blocks have attention).
    """
    module, _, param = key.rpartition(".")
    module = _UNET_TOP.get(module) or diffusers_to_sgm(module, *layout)
    return f"{UNET_PREFIX}{module}.{param}"


def clip_key_to_sd1(key: str) -> str:
    """A CLIP text-encoder key (transformers 4 or 5 naming) -> SD1's ``cond_stage_model.transformer.text_model.*``."""
    path = key if key.startswith("text_model.") else "text_model." + key
    return SD1_CLIP_PREFIX + path


# family -> component -> converter(diffusers key, unet layout) -> original key
_SINGLE_FILE_MAPS: dict[str, dict[str, Callable[[str, tuple], str]]] = {
    "sd1": {
        "unet": unet_key_to_ldm,
        "text_encoder": lambda key, _layout: clip_key_to_sd1(key),
    },
}
_WHY_NOT = {
    "sd2": "SD2 stores its OpenCLIP text encoder with fused q/k/v projections (attn.in_proj_weight)",
    "sd2-v": "SD2 stores its OpenCLIP text encoder with fused q/k/v projections (attn.in_proj_weight)",
    "sdxl": "SDXL's second text encoder (OpenCLIP) stores fused q/k/v projections (attn.in_proj_weight)",
}


def single_file_families() -> tuple[str, ...]:
    """Families whose single-file key names this module can produce."""
    return tuple(_SINGLE_FILE_MAPS)


def single_file_key(family: str, component: str, key: str, unet_layout: tuple | None = None) -> str:
    """The original single-file key of a diffusers component's state-dict key.

    Raises :class:`UnsupportedLayout` (with the reason) for a family or component not mapped.
    """
    mapping = _SINGLE_FILE_MAPS.get(family)
    if mapping is None:
        reason = _WHY_NOT.get(family, "no mapping is known")
        raise UnsupportedLayout(
            f"single-file {family} checkpoints are not supported yet (supported: "
            f"{', '.join(single_file_families())}); {reason}"
        )
    convert = mapping.get(component)
    if convert is None:
        raise UnsupportedLayout(f"no single-file key mapping for the {component} of {family} checkpoints")
    return convert(key, unet_layout)


# --------------------------------------------------------------------------- whole-model conversion


def unet_to_ldm(unet) -> dict:
    """A diffusers SD U-Net's state dict under the original keys."""
    layout = sgm_layout(unet)
    return {unet_key_to_ldm(key, layout): value for key, value in unet.state_dict().items()}


def vae_to_ldm(vae) -> dict:
    """A diffusers VAE's state dict under the original ``first_stage_model.*`` keys."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", new
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.",
            new,
        )
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        if ".mid_block.attentions.0." in new:
            head, _, tail = new.partition(".mid_block.attentions.0.")
            module, _, param = tail.rpartition(".")
            new = f"{head}.mid.attn_1.{_VAE_ATTN[module]}.{param}"
            if module != "group_norm" and param == "weight":
                value = value.reshape(*value.shape, 1, 1)  # LDM's attention projections are 1x1 convs
        new = new.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        out[f"{VAE_PREFIX}{new}"] = value
    return out


def clip_to_ldm(text_encoder) -> dict:
    """SD1's CLIP text encoder state dict under ``cond_stage_model.transformer.text_model.*``."""
    return {clip_key_to_sd1(key): value for key, value in text_encoder.state_dict().items()}


def sd1_single_file_state_dict(pipe) -> dict:
    """An A1111 SD1 checkpoint's state dict for a diffusers SD1 pipeline (tensors contiguous)."""
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae), **clip_to_ldm(pipe.text_encoder)}
    return {k: v.detach().contiguous() for k, v in state.items()}
