"""Which modules of a model get a LoRA, and the kohya name each one has.

kohya-ss sd-scripts defined the LoRA file format everyone reads (A1111, ComfyUI, diffusers),
so we pick exactly the modules its ``networks/lora.py`` picks and name them as it does:

* U-Net: every Linear/Conv2d inside a ``Transformer2DModel``; with a conv rank also inside
  every ``ResnetBlock2D``, ``Downsample2D`` and ``Upsample2D``.
* Text encoder(s): every Linear inside CLIP's attention and MLP blocks.
* Name: prefix + module path with ``.`` -> ``_``. SD1/SD2 U-Nets use the diffusers path
  (kohya trains them on a diffusers-layout U-Net); SDXL uses the original SGM path
  (``input_blocks.4.1...``), because kohya's SDXL U-Net is the SGM one. Text-encoder paths
  are ``text_model.encoder.layers...`` as transformers 4 named them (transformers 5 dropped
  the ``text_model.`` level of ``CLIPTextModel``; the file format keeps it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNET_TARGETS = ("Transformer2DModel",)
UNET_CONV_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_TARGETS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
# diffusers keeps legacy alias attributes for a few modules (the same Conv2d registered under
# two names); kohya's names use the current one.
_LEGACY_ALIASES = {"Conv2d_0"}


@dataclass(frozen=True)
class Target:
    """One module to wrap: its kohya name, the module, and which rank it takes."""

    name: str
    module: object  # torch.nn.Linear or torch.nn.Conv2d
    is_text: bool
    uses_conv_rank: bool  # k x k convs (k > 1) take the conv rank, everything else the rank


def find_targets(unet, text_encoders, family: str, with_conv: bool) -> list[Target]:
    """All LoRA targets of a model, U-Net first, in module order (as kohya lists them)."""
    import torch

    targets: list[Target] = []
    seen: set[int] = set()

    def collect(root, classes, is_text, name_of):
        for path, parent in root.named_modules():
            if type(parent).__name__ not in classes:
                continue
            for child_path, child in parent.named_modules():
                if not isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)) or id(child) in seen:
                    continue
                if child_path.split(".")[-1] in _LEGACY_ALIASES:
                    continue
                is_kxk = isinstance(child, torch.nn.Conv2d) and tuple(child.kernel_size) != (1, 1)
                if is_kxk and not with_conv:
                    continue
                seen.add(id(child))
                targets.append(Target(name_of(f"{path}.{child_path}"), child, is_text, is_kxk))

    unet_classes = UNET_TARGETS + (UNET_CONV_TARGETS if with_conv else ())
    layout = sgm_layout(unet) if family == "sdxl" else None
    collect(unet, unet_classes, False, lambda p: unet_lora_name(p, layout))
    for index, encoder in enumerate(text_encoders):
        prefix = text_prefix(index, len(text_encoders))
        collect(encoder, TEXT_TARGETS, True, lambda p, prefix=prefix: prefix + _text_path(p).replace(".", "_"))
    return targets


def text_prefix(index: int, count: int) -> str:
    """``lora_te_`` for one text encoder, ``lora_te1_``/``lora_te2_`` for SDXL's two."""
    return "lora_te_" if count == 1 else f"lora_te{index + 1}_"


def _text_path(path: str) -> str:
    return path if path.startswith("text_model.") else "text_model." + path


def unet_lora_name(path: str, sgm: tuple[int, list[bool]] | None = None) -> str:
    """kohya's name for a U-Net module given its diffusers path.

    ``sgm``: ``(layers_per_block, [up block i has attention])`` to name in the SGM layout
    (SDXL, see :func:`sgm_layout`); None for the diffusers layout (SD1/SD2).
    """
    if sgm is not None:
        path = diffusers_to_sgm(path, *sgm)
    return "lora_unet_" + path.replace(".", "_")


def sgm_layout(unet) -> tuple[int, list[bool]]:
    """What :func:`diffusers_to_sgm` needs to know about a diffusers U-Net."""
    return unet.config.layers_per_block, [hasattr(b, "attentions") for b in unet.up_blocks]


_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def diffusers_to_sgm(path: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """A diffusers U-Net module path in the original SGM/LDM layout (as kohya's SDXL U-Net).

    Each level is a run of numbered slots: down block i, layer j is ``input_blocks.{n*i+j+1}``
    (slot 0 is conv_in; the level's last slot holds its downsampler); up block i, layer j is
    ``output_blocks.{n*i+j}``, n = layers + 1 both ways. Inside a slot, index 0 is the resnet,
    1 the attention; an up-sampler sits after them in the level's last slot.
    """
    n = layers_per_block + 1
    if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", path):
        side, block, kind, layer, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        slot = n * block + layer + (1 if side == "down" else 0)
        if kind == "resnets":
            return f"{'input' if side == 'down' else 'output'}_blocks.{slot}.0.{_resnet_part(rest)}"
        return f"{'input' if side == 'down' else 'output'}_blocks.{slot}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", path):
        return f"input_blocks.{n * (int(m[1]) + 1)}.0.op{m[2]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", path):
        block = int(m[1])
        return f"output_blocks.{n * block + n - 1}.{2 if up_has_attention[block] else 1}.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", path):
        return f"middle_block.{2 * int(m[1])}.{_resnet_part(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", path):
        return f"middle_block.1.{m[1]}"
    return path


def _resnet_part(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return _RESNET_PARTS.get(head, head) + ("." + tail if tail else "")
