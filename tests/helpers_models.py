"""Test helpers: turn a diffusers SD1 pipeline into an A1111-style single-file checkpoint.

The single-file loading path needs an original-layout (LDM) checkpoint to read, and none can
be downloaded, so tests convert the tiny model back into that layout. This is the inverse of
diffusers' own single-file conversion, written from the two layouts' module names.
"""

from __future__ import annotations

import re

from engine.lora_names import diffusers_to_sgm, sgm_layout

_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_to_ldm(unet) -> dict:
    layout = sgm_layout(unet)
    out = {}
    for key, value in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        module = _UNET_TOP.get(module) or diffusers_to_sgm(module, *layout)
        out[f"model.diffusion_model.{module}.{param}"] = value
    return out


def vae_to_ldm(vae) -> dict:
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
        out[f"first_stage_model.{new}"] = value
    return out


def clip_to_ldm(text_encoder) -> dict:
    out = {}
    for key, value in text_encoder.state_dict().items():
        path = key if key.startswith("text_model.") else "text_model." + key
        out[f"cond_stage_model.transformer.{path}"] = value
    return out


def sd1_single_file_state_dict(pipe) -> dict:
    """An A1111 SD1 checkpoint's state dict for a diffusers SD1 pipeline (tensors contiguous)."""
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae), **clip_to_ldm(pipe.text_encoder)}
    return {k: v.detach().contiguous() for k, v in state.items()}
