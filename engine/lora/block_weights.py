"""LoRA Block Weight (LBW) blocks: the per-layer vocabulary users know, and weights per block.

hako-mikan's sd-webui-lora-block-weight names the U-Net by the original (SGM/LDM) block
numbering: ``BASE`` (the text encoder), ``IN00``–``IN11``, ``M00``, ``OUT00``–``OUT11``. A
weight vector lists one weight per block of a fixed list: 26 or 17 blocks for SD1/SD2, 20 or
12 for SDXL. kohya-ss sd-scripts' ``networks/svd_merge_lora.py --lbws`` takes the same vectors
(one per model, as a JSON list string) and scales each model's delta per block before the
merge. The block lists and the checks of a vector are :mod:`engine.lbw_vectors` (re-exported
here); this module says which block a module is in and what weight it gets. We follow
sd-scripts' mapping exactly (tests/test_block_weights.py checks every module of kohya's own
key tables against it), including its choices:

* A module is ``BASE`` when its name contains ``text_model_encoder_`` (``lora_te_``,
  ``lora_te1_`` and ``lora_te2_`` alike).
* SD1/SD2 names are diffusers paths: down block i, layer j is ``IN{3i+j+1}`` (its
  downsampler ``IN{3i+3}``), up block i, layer j is ``OUT{3i+j}`` (its upsampler ``OUT{3i+2}``,
  the level's last slot). SDXL names are SGM paths already: ``input_blocks_N`` is ``INnn``,
  ``output_blocks_N`` is ``OUTnn``; ``time_embed``/``label_emb`` count as ``IN00`` and ``out_``
  as ``OUT09`` (none of them gets a LoRA from kohya's trainer).
* A short vector (12, 17, 20) sets only its own blocks: every other block, and every module
  that maps to no block (``conv_in``, ...), keeps weight 1 (not 0).
* sd-scripts picks SD1 or SDXL from the vector's length; we know the model's family, so a
  length for the other family is an error instead of a silent no-op (an SD1 mapping finds no
  U-Net module in an SDXL LoRA, which would then be scaled in BASE only).
"""

from __future__ import annotations

import re

from engine.lbw_vectors import (
    BLOCK_LISTS,
    FAMILY_NAMES,
    FULL_BLOCKS,
    LENGTHS,
    BlockWeightError,
    check_lbws,
    lbw_family,
    parse_lbw,
    per_model_lbws,
)

__all__ = [
    "BLOCK_LISTS", "BLOCK_ORDER", "FAMILY_NAMES", "FULL_BLOCKS", "LENGTHS", "BlockWeightError", "block_sort_key", "check_lbws",
    "expand_lbw", "lbw_block", "lbw_family", "module_weight", "parse_lbw", "per_model_lbws",
]

# Order of the blocks in views, "other" (a module of no block) last.
BLOCK_ORDER = {name: index for index, name in enumerate((*FULL_BLOCKS, "other"))}

_SD_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")
_SDXL_UNET = re.compile(r"^lora_unet_(input_blocks|output_blocks)_(\d+)_")


def lbw_block(name: str, family: str | None = None) -> str | None:
    """The LBW block of a kohya module name (``IN04``, ``M00``, ``BASE``), None for a module
    of no block. ``family`` (``sd``/``sdxl``) restricts the U-Net naming read, as sd-scripts'
    ``is_sdxl`` does; None reads either (the two namings share no module name)."""
    if "text_model_encoder_" in name:
        return "BASE"
    if family != "sd":
        block = _sdxl_block(name)
        if block is not None or family == "sdxl":
            return block
    return _sd_block(name)


def _sd_block(name: str) -> str | None:
    match = _SD_UPDOWN.search(name)
    if match:
        side, i, part, j = match.group(1), int(match.group(2)), match.group(3), int(match.group(4))
        if side == "down" and part in ("resnets", "attentions"):
            return _numbered("IN", 3 * i + j + 1)
        if side == "down" and part == "downsamplers":
            return _numbered("IN", 3 * (i + 1))
        if side == "up" and part in ("resnets", "attentions"):
            return _numbered("OUT", 3 * i + j)
        if side == "up" and part == "upsamplers":
            return _numbered("OUT", 3 * i + 2)
        return None  # an up block's downsampler: no such module
    return "M00" if "mid_block_" in name else None


def _sdxl_block(name: str) -> str | None:
    if not name.startswith("lora_unet_"):
        return None
    rest = name[len("lora_unet_"):]
    match = _SDXL_UNET.match(name)
    if match:
        return _numbered("IN" if match.group(1) == "input_blocks" else "OUT", int(match.group(2)))
    if rest.startswith(("time_embed_", "label_emb_")):
        return "IN00"
    if rest.startswith("middle_block_"):
        return "M00"
    if rest.startswith("out_"):
        return "OUT09"
    return None


def _numbered(side: str, index: int) -> str | None:
    return f"{side}{index:02d}" if 0 <= index < 12 else None


# --------------------------------------------------------------------------- weights


def expand_lbw(vector) -> dict[str, float]:
    """{block: weight} over the full 26-block list, as sd-scripts expands a vector: its own
    blocks get its weights, every other block 1."""
    weights = dict.fromkeys(FULL_BLOCKS, 1.0)
    weights.update(zip(BLOCK_LISTS[len(vector)], (float(v) for v in vector)))
    return weights


def module_weight(name: str, expanded: dict[str, float], family: str | None = None) -> float:
    """The weight a module's delta is scaled by (1 for a module of no block)."""
    block = lbw_block(name, lbw_family(family))
    return expanded.get(block, 1.0) if block is not None else 1.0


def block_sort_key(block: str) -> tuple[int, str]:
    """LBW blocks in list order (BASE, IN00…, M00, OUT00…, other), then anything else by name."""
    return (BLOCK_ORDER.get(block, len(BLOCK_ORDER)), block)
