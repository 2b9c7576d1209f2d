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
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.nn import Conv2d, Linear

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
    module: Linear | Conv2d
    is_text: bool
    uses_conv_rank: bool  # k x k convs (k > 1) take the conv rank, everything else the rank


def find_targets(unet, text_encoders, family: str, with_conv: bool, also: Collection[str] = ()) -> list[Target]:
    """All LoRA targets of a model, U-Net first, in module order (as kohya lists them).

    ``also``: names of a file's modules; those that are no kohya target but name a Linear or
    Conv2d of the model (LyCORIS' full preset and ComfyUI's extracted LoRAs adapt conv_in,
    conv_out and the time embedding; A1111 and ComfyUI apply any layer a name finds) are
    targets too, after kohya's."""
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
    from engine.formats.model_files import is_sdxl

    layout = sgm_layout(unet) if is_sdxl(family) else None
    unet_name = lambda p: unet_lora_name(p, layout)  # noqa: E731
    collect(unet, unet_classes, False, unet_name)
    text_names = [lambda p, prefix=text_prefix(i, len(text_encoders)): prefix + _text_path(p).replace(".", "_")
                  for i in range(len(text_encoders))]
    for encoder, text_name in zip(text_encoders, text_names):
        collect(encoder, TEXT_TARGETS, True, text_name)
    wanted = set(also) - {t.name for t in targets}
    for root, name_of, is_text in [(unet, unet_name, False), *((e, n, True) for e, n in zip(text_encoders, text_names))]:
        if not wanted:
            break
        for path, module in root.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and id(module) not in seen and name_of(path) in wanted:
                seen.add(id(module))
                wanted.discard(name_of(path))
                is_kxk = isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) != (1, 1)
                targets.append(Target(name_of(path), module, is_text, is_kxk))
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


# --------------------------------------------------------------------------- diffusers <-> SGM
#
# The one place that knows how the original SGM/LDM U-Net numbers its blocks, as data: a table
# {diffusers module prefix: SGM module prefix} built for a layout (:func:`sgm_block_map`),
# plus the names of a resnet's parts. Both are plain dicts, so the map reads either way.

# Inside a resnet (diffusers ResnetBlock2D -> SGM ResBlock).
_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# U-Net modules outside the numbered blocks: never kohya LoRA targets, but LyCORIS' full preset
# and ComfyUI's extracted LoRAs name them, and a single file stores them under these names.
UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's size/crop conditioning
    "add_embedding.linear_2": "label_emb.0.2",
}
# SDXL base's layout (and tiny-sdxl's): 2 layers per block, up blocks 0 and 1 have attention.
SDXL_LAYOUT = (2, (True, True, False))
# SD1's and SD2's: 2 layers per block, every up block but the first has attention.
SD1_LAYOUT = (2, (False, True, True, True))


@lru_cache(maxsize=16)
def sgm_block_map(layers_per_block: int, up_has_attention: tuple[bool, ...]) -> dict[str, str]:
    """{diffusers module prefix: SGM module prefix} for every numbered block of a U-Net.

    Each level is a run of numbered slots: down block i, layer j is ``input_blocks.{n*i+j+1}``
    (slot 0 is conv_in; the level's last slot holds its downsampler); up block i, layer j is
    ``output_blocks.{n*i+j}``, n = layers + 1 both ways. Inside a slot, index 0 is the resnet,
    1 the attention; an up-sampler sits after them in the level's last slot. The middle block
    is resnet, attention, resnet.
    """
    n = layers_per_block + 1
    levels = len(up_has_attention)
    table = {}
    for i in range(levels):
        for j in range(layers_per_block):
            table[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{n * i + j + 1}.0"
            table[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n * i + j + 1}.1"
        for j in range(n):
            table[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{n * i + j}.0"
            table[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{n * i + j}.1"
        if i < levels - 1:
            table[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{n * (i + 1)}.0.op"
            table[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{n * i + n - 1}.{2 if up_has_attention[i] else 1}"
    table.update({"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                  "mid_block.resnets.1": "middle_block.2"})
    table.update(UNET_TOP)
    return table


def diffusers_to_sgm(path: str, layers_per_block: int, up_has_attention) -> str:
    """A diffusers U-Net module (or parameter) path in the original SGM/LDM layout (as kohya's
    SDXL U-Net names it), by :func:`sgm_block_map`. Paths the map does not know are returned as given."""
    return _to_sgm(path, ".", sgm_block_map(layers_per_block, tuple(up_has_attention)))


def sgm_to_diffusers(path: str, layers_per_block: int, up_has_attention, sep: str = ".") -> str:
    """The other way: an SGM/LDM U-Net module path (at ``sep``) in the diffusers layout."""
    return _to_sgm(path, sep, _diffusers_block_map(layers_per_block, tuple(up_has_attention)), to_diffusers=True)


@lru_cache(maxsize=16)
def _diffusers_block_map(layers_per_block: int, up_has_attention: tuple[bool, ...]) -> dict[str, str]:
    return {sgm: diffusers for diffusers, sgm in sgm_block_map(layers_per_block, up_has_attention).items()}


def _to_sgm(path: str, sep: str, table: dict[str, str], to_diffusers: bool = False) -> str:
    if sep != ".":
        table = _underscored(table)
    parts = path.split(sep)
    for k in range(min(len(parts), 6), 0, -1):  # longest prefix first (1-5 parts at ".", 2-6 at "_")
        prefix = sep.join(parts[:k])
        if prefix in table:
            rest = sep.join(parts[k:])
            if "resnets" in (table[prefix] if to_diffusers else prefix):
                rest = _resnet_part(rest, sep, to_diffusers)
            return table[prefix] + (sep + rest if rest else "")
    return path


@lru_cache(maxsize=16)
def _underscored_cached(items: tuple) -> dict[str, str]:
    return {k.replace(".", "_"): v.replace(".", "_") for k, v in items}


def _underscored(table: dict[str, str]) -> dict[str, str]:
    return _underscored_cached(tuple(table.items()))


def _resnet_part(rest: str, sep: str = ".", to_diffusers: bool = False) -> str:
    for head, sgm in _RESNET_PARTS.items():
        if to_diffusers:
            head, sgm = sgm, head
        head = head.replace(".", sep)
        if rest == head or rest.startswith(head + sep):
            return sgm.replace(".", sep) + rest[len(head):]
    return rest


# --------------------------------------------------------------------------- reading other names

# PEFT/diffusers LoRA keys (``pipe.save_lora_weights``): component prefix and factor suffixes.
PEFT_COMPONENTS = ("unet.", "text_encoder.", "text_encoder_2.")
PEFT_FACTORS = {".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight"}
# ComfyUI's LoraSave writes the U-Net's own state-dict keys (``diffusion_model.input_blocks.1.1.proj_in``),
# and its text encoders' under ``text_encoders.`` (``clip_l.transformer.text_model.encoder…``; SDXL's
# second is ``clip_g``, in the same layout).
COMFY_UNET_PREFIXES = ("diffusion_model.", "model.diffusion_model.")
COMFY_TEXT_PREFIXES = {"text_encoders.clip_l.transformer.": "lora_te1_", "text_encoders.clip_g.transformer.": "lora_te2_",
                       "text_encoders.clip_h.transformer.": "lora_te1_"}  # clip_h: SD2's one (OpenCLIP-H)


def _comfy_name(name: str) -> str:
    """kohya's name for a module of a ComfyUI-saved LoRA (SD1's one text encoder comes out as
    ``lora_te1_``, renamed once the file's family is known); other names as they are."""
    for prefix in COMFY_UNET_PREFIXES:
        if name.startswith(prefix):
            return "lora_unet_" + name[len(prefix):].replace(".", "_")
    for prefix, kohya in COMFY_TEXT_PREFIXES.items():
        if name.startswith(prefix):
            return kohya + _text_path(name[len(prefix):]).replace(".", "_")
    return name
# kohya names of U-Net modules in the diffusers layout, and in the SGM/LDM one.
_DIFFUSERS_UNET = re.compile(r"^lora_unet_(down_blocks_|mid_block_|up_blocks_|conv_in$|conv_out$|time_embedding_|add_embedding_)")
_SGM_UNET = re.compile(r"^lora_unet_(input_blocks_|middle_block_|output_blocks_|time_embed_|label_emb_|out_)")
# Module names that exist in SDXL's diffusers layout and in no SD1/SD2 U-Net: SD1/SD2 have one
# transformer block per attention, and their up block 0 has none.
_ONLY_SDXL = re.compile(r"_transformer_blocks_[1-9]|^lora_unet_up_blocks_0_attentions_|^lora_unet_label_emb_")
# Names only an SD1/SD2 U-Net has, in either layout: 4 levels (SDXL: 3), attention in the first
# level, 12 input and output slots (SDXL: 9).
_ONLY_SD1 = re.compile(r"^lora_unet_(input_blocks_(9|10|11)_|output_blocks_(9|10|11)_|input_blocks_[12]_1_"
                       r"|down_blocks_0_attentions_|(down|up)_blocks_3_)")


def is_sdxl_file(names, metadata) -> bool:
    """Whether kohya-style module names (+ the file's metadata) are an SDXL LoRA's: what
    :func:`sdxl_evidence` says, else the likelier reading of names either family may have
    (``lora_te1_`` alone, SGM-layout U-Net names alone: kohya's SDXL files have them)."""
    names = list(names)
    evidence = sdxl_evidence(names, metadata)
    if evidence is not None:
        return evidence
    return any(n.startswith("lora_te1_") or _SGM_UNET.match(n) for n in names)


def sdxl_evidence(names, metadata) -> bool | None:
    """True or False where a file says its family (its metadata, or names only one family has:
    those decide first, then the text encoders' prefixes, kohya writing ``lora_te1_``/``lora_te2_``
    for SDXL's two and ``lora_te_`` for SD1/SD2's one); None where either could hold its names
    (diffusers' kohya conversion writes ``lora_te1_`` for SD1's encoder too, and SGM-layout U-Net
    names, SDXL's in kohya's files, are SD1's in ComfyUI's and older converters')."""
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl") or "stable-diffusion-xl" in metadata.get("modelspec.architecture", ""):
        return True
    names = list(names)
    if any(_ONLY_SDXL.search(n) for n in names):
        return True
    if any(_ONLY_SD1.match(n) for n in names):
        return False
    if any(n.startswith("lora_te2_") for n in names):
        return True
    if any(n.startswith("lora_te_") for n in names) or version.startswith(("sd_v1", "sd_v2")) or metadata.get("ss_v2") == "True":
        return False
    return None


# SD2's text encoder (OpenCLIP ViT-H) and the U-Net's cross-attention keys and values read
# 1024 features; SD1's (CLIP ViT-L) 768. Names are the same in both: only widths tell a file
# without metadata (PEFT's, ComfyUI's) apart.
_SD2_WIDE = re.compile(r"(attn2_to_[kv]|^lora_te1?_text_model_encoder_layers_\d+_(self_attn_[qkv]_proj|mlp_fc1))$")


def sd2_evidence(shapes) -> bool:
    """Whether an SD1/SD2 LoRA's modules ({kohya name: lora_down's shape}) are SD2's: the input
    width of its cross-attention keys/values or its text encoder's first layers is 1024."""
    widths = {shape[1] for name, shape in shapes.items() if len(shape) >= 2 and _SD2_WIDE.search(name)}
    return 1024 in widths


def kohya_module_names(names, metadata, family: str | None = None) -> dict[str, str]:
    """{name in the file: kohya name} for the LoRA module names of a file.

    Reads, besides kohya's own names: PEFT/diffusers module paths (``unet.down_blocks.1...``,
    ``text_encoder.``, ``text_encoder_2.``: see :func:`peft_module_name`); ComfyUI's
    (``diffusion_model.input_blocks.1.1.proj_in``: the U-Net's SGM paths); SDXL files whose
    U-Net modules have kohya names built from diffusers paths
    (``lora_unet_down_blocks_1_attentions_0_...``), which become the SGM names kohya's SDXL
    code writes (``lora_unet_input_blocks_4_1_...``); and SD1/SD2 files with SGM names, which
    become the diffusers-path names kohya writes for those models. ``family``: the model's it
    is for, where known (applied, baked, trained on): names either family could have are read
    as that family's (a ComfyUI SD1 file of conv_in alone read as SDXL's, and matched nothing).
    """
    peft = [n for n in names if n.startswith(PEFT_COMPONENTS)]
    plain = {n: _comfy_name(n) for n in names if n not in peft}
    evidence = sdxl_evidence(plain.values(), metadata)
    if evidence is None and family is not None and not peft:
        from engine.formats.model_files import is_sdxl

        sdxl = is_sdxl(family)
    else:
        sdxl = is_sdxl_file(plain.values(), metadata) or any(n.startswith("text_encoder_2.") for n in peft)
    if peft and not sdxl:  # a PEFT SDXL file may only hold U-Net modules: look at their names too
        sdxl = is_sdxl_file(["lora_unet_" + n[len("unet."):].replace(".", "_") for n in peft if n.startswith("unet.")], {})
    renamed = {}
    for name in names:
        if name in peft:
            renamed[name] = peft_module_name(name, sdxl)
            continue
        kohya = plain[name]
        if sdxl and _DIFFUSERS_UNET.match(kohya):
            kohya = "lora_unet_" + _to_sgm(kohya[len("lora_unet_"):], "_", sgm_block_map(*SDXL_LAYOUT))
        elif not sdxl and _SGM_UNET.match(kohya):
            kohya = "lora_unet_" + sgm_to_diffusers(kohya[len("lora_unet_"):], *SD1_LAYOUT, sep="_")
        elif not sdxl and kohya.startswith("lora_te1_"):  # diffusers' conversion of an SD1 LoRA
            kohya = "lora_te_" + kohya[len("lora_te1_"):]
        renamed[name] = kohya
    return renamed


def peft_module_name(path: str, sdxl: bool) -> str:
    """kohya's name for a PEFT/diffusers module path (``unet.…``, ``text_encoder.…``, ``text_encoder_2.…``)."""
    component, _, rest = path.partition(".")
    if component == "unet":
        if sdxl:
            rest = diffusers_to_sgm(rest, *SDXL_LAYOUT)
        return unet_lora_name(rest)
    prefix = "lora_te2_" if component == "text_encoder_2" else "lora_te1_" if sdxl else "lora_te_"
    return prefix + _text_path(rest).replace(".", "_")
