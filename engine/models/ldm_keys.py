"""Key names of the original single-file (A1111 / LDM) layout, from diffusers' names.

A single-file Stable Diffusion checkpoint stores the same tensors as a diffusers folder under
other names. Baking a LoRA into a single file must change exactly the tensors the LoRA's
modules live in, under the file's own names, so this module maps a diffusers state-dict key
(component + key, e.g. ``unet`` / ``down_blocks.0.attentions.0.proj_in.weight``) to the
original key (``model.diffusion_model.input_blocks.1.1.proj_in.weight``).

The mapping is table-driven: per family, a prefix and a path converter for each component.
It is the inverse of diffusers' own single-file conversion (the tests load a checkpoint
written with these names through diffusers and get the same weights back). SD1 and SDXL are
mapped. SDXL's second text encoder is OpenCLIP, which stores q, k and v as one fused
``attn.in_proj_weight`` ([3·d, d]): its q/k/v projections map to a third of that tensor's rows
(a :class:`Slot` with ``part`` 0, 1 or 2). SD2's OpenCLIP encoder would map the same way, but
no SD2 model exists here to test it against, so SD2 single files are refused with a clear
message (their diffusers folders work).
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

from engine.errors import InputError
from engine.lora.names import UNET_TOP, diffusers_to_sgm, sgm_layout

UNET_PREFIX = "model.diffusion_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
VAE_PREFIX = "first_stage_model."

_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


class UnsupportedLayout(InputError):
    """No original-layout key mapping for this family/component (yet): a clear line for the
    user where nothing catches it, not a traceback."""


class Slot(NamedTuple):
    """Where a diffusers tensor lives in a single file: a key, and for OpenCLIP's fused q/k/v
    which third of its rows (0 q, 1 k, 2 v; None: the whole tensor)."""

    key: str
    part: int | None = None


def rows_of(part: int | None, rows: int) -> slice:
    """The rows of ``part`` in a fused tensor of ``rows`` rows (all of them for None)."""
    if part is None:
        return slice(None)
    third = rows // 3
    return slice(part * third, (part + 1) * third)


# --------------------------------------------------------------------------- per-key mapping


def unet_key_to_ldm(key: str, layout: tuple[int, list[bool]]) -> str:
    """``down_blocks.0.resnets.0.conv1.weight`` -> ``model.diffusion_model.input_blocks.1.0.in_layers.2.weight``.

    ``layout`` is :func:`engine.lora.names.sgm_layout` of the U-Net (layers per block, which
    up blocks have attention).
    """
    module, _, param = key.rpartition(".")
    module = UNET_TOP.get(module) or diffusers_to_sgm(module, *layout)  # (no layout needed outside the numbered blocks)
    return f"{UNET_PREFIX}{module}.{param}"


def clip_key_to_sd1(key: str) -> str:
    """A CLIP text-encoder key (transformers 4 or 5 naming) -> SD1's ``cond_stage_model.transformer.text_model.*``."""
    path = key if key.startswith("text_model.") else "text_model." + key
    return SD1_CLIP_PREFIX + path


def clip_key_to_sdxl(key: str) -> str:
    """SDXL's first text encoder (CLIP ViT-L) -> ``conditioner.embedders.0.transformer.text_model.*``."""
    path = key if key.startswith("text_model.") else "text_model." + key
    return SDXL_CLIP_PREFIX + path


# transformers' CLIP layer names -> OpenCLIP's (the inverse of diffusers' convert_open_clip_checkpoint).
_OPENCLIP_LAYER = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                   ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]
_OPENCLIP_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def openclip_slot(key: str, prefix: str = SDXL_OPENCLIP_PREFIX) -> Slot:
    """A CLIPTextModelWithProjection key -> its OpenCLIP slot (``text_projection.weight`` is
    stored transposed as ``text_projection``, which :func:`openclip_to_ldm` handles)."""
    path = key.removeprefix("text_model.")
    if path == "text_projection.weight":
        return Slot(prefix + "text_projection")
    if path in _OPENCLIP_TOP:
        return Slot(prefix + _OPENCLIP_TOP[path])
    match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", path)
    if match is None:
        raise UnsupportedLayout(f"no OpenCLIP key for text encoder 2's {key}")
    layer, rest = match.groups()
    head = f"{prefix}transformer.resblocks.{layer}."
    qkv = re.fullmatch(r"self_attn\.([qkv]_proj)\.(weight|bias)", rest)
    if qkv:
        return Slot(f"{head}attn.in_proj_{qkv[2]}", _OPENCLIP_QKV[qkv[1]])
    for ours, theirs in _OPENCLIP_LAYER:
        if rest.startswith(ours):
            return Slot(head + theirs + rest[len(ours):])
    raise UnsupportedLayout(f"no OpenCLIP key for text encoder 2's {key}")


def _whole(convert: Callable[[str, Any], str]) -> Callable[[str, Any], Slot]:
    return lambda key, layout: Slot(convert(key, layout))


# family -> component -> converter(diffusers key, unet layout) -> slot in the single file
_SINGLE_FILE_MAPS: dict[str, dict[str, Callable[[str, Any], Slot]]] = {
    "sd1": {
        "unet": _whole(unet_key_to_ldm),
        "text_encoder": _whole(lambda key, _layout: clip_key_to_sd1(key)),
    },
    "sdxl": {
        "unet": _whole(unet_key_to_ldm),
        "text_encoder": _whole(lambda key, _layout: clip_key_to_sdxl(key)),
        "text_encoder_2": lambda key, _layout: openclip_slot(key),
    },
}
_WHY_NOT = {
    "sd2": "SD2's OpenCLIP text encoder is not mapped yet (no SD2 model to test it against)",
    "sd2-v": "SD2's OpenCLIP text encoder is not mapped yet (no SD2 model to test it against)",
}


def single_file_families() -> tuple[str, ...]:
    """Families whose single-file key names this module can produce."""
    return tuple(_SINGLE_FILE_MAPS)


def single_file_key(family: str, component: str, key: str, unet_layout: tuple | None = None) -> Slot:
    """The original single-file slot (key, and part of a fused tensor) of a diffusers
    component's state-dict key.

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


def openclip_to_ldm(text_encoder, prefix: str = SDXL_OPENCLIP_PREFIX) -> dict:
    """A CLIPTextModelWithProjection's state dict in OpenCLIP's layout: q/k/v fused into
    ``in_proj_weight``/``in_proj_bias``, ``text_projection`` transposed."""
    import torch

    out: dict = {}
    fused: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight: single files do not store it
        slot = openclip_slot(key, prefix)
        if slot.part is not None:
            fused.setdefault(slot.key, {})[slot.part] = value
        elif slot.key.endswith("text_projection"):
            out[slot.key] = value.T
        else:
            out[slot.key] = value
    for key, parts in fused.items():
        out[key] = torch.cat([parts[0], parts[1], parts[2]])
    return out


def sdxl_single_file_state_dict(pipe) -> dict:
    """An SDXL single-file checkpoint's state dict (A1111/ComfyUI layout) for a diffusers SDXL pipeline."""
    te1 = {clip_key_to_sdxl(k): v for k, v in pipe.text_encoder.state_dict().items() if not k.endswith("position_ids")}
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae), **te1, **openclip_to_ldm(pipe.text_encoder_2)}
    return {k: v.detach().contiguous() for k, v in state.items()}
