"""LoRA Block Weight (LBW) vectors: the block lists and what a valid weight vector is.

A vector gives one weight per block of a fixed list, as hako-mikan's sd-webui-lora-block-weight
and kohya-ss sd-scripts' ``svd_merge_lora.py --lbws`` read it: 26 or 17 blocks for SD1/SD2,
20 or 12 for SDXL (sd-scripts' LAYER26/17/20/12). Which module is in which block is
:mod:`engine.lora.block_weights`; this part is pure data, at the top of the engine because
the project format (``[merge] lbws``, in ``engine.project``, a layer below ``engine.lora``)
validates vectors with it too.
"""

from __future__ import annotations

import json
import math

from engine.errors import InputError


class BlockWeightError(InputError):
    """A bad block-weight vector; ``where`` names it (``--lbws[1]``, ``merge.lbws[0]``), so a
    caller can make it a :class:`engine.errors.Problem` of its own key or flag."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


def _blocks(ins, outs) -> tuple[str, ...]:
    return ("BASE", *(f"IN{i:02d}" for i in ins), "M00", *(f"OUT{i:02d}" for i in outs))


# The full list sd-scripts (and LBW) index by: BASE (text encoder), IN00–IN11, M00, OUT00–OUT11.
FULL_BLOCKS = _blocks(range(12), range(12))
# Each length's blocks in vector order: SD1's blocks with attention (17) or all (26); SDXL's
# blocks with attention (12) or all it has (20: input/output blocks 0–8).
BLOCK_LISTS: dict[int, tuple[str, ...]] = {
    26: FULL_BLOCKS,
    17: _blocks((1, 2, 4, 5, 7, 8), range(3, 12)),
    20: _blocks(range(9), range(9)),
    12: _blocks((4, 5, 7, 8), range(6)),
}
LENGTHS = {"sd": (17, 26), "sdxl": (12, 20)}
FAMILY_NAMES = {"sd": "SD1/SD2", "sdxl": "SDXL"}


def lbw_family(family: str | None) -> str | None:
    """``sd`` or ``sdxl`` for one of our model families (sd1, sd2, sd2-v, sdxl, sdxl-v); None stays None."""
    if family is None:
        return None
    return "sdxl" if family.split("-")[0] == "sdxl" else "sd"


def parse_lbw(value, where: str = "lbws") -> tuple[float, ...]:
    """One weight vector: a JSON list string as sd-scripts takes it (``'[1,0,1,...]'``) or a
    list, of 12, 17, 20 or 26 finite numbers (true/false are not numbers here, though
    sd-scripts' ``isinstance(w, (int, float))`` lets them through)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)  # accepts NaN/Infinity: refused below
        except ValueError:
            raise BlockWeightError(where, f"not a JSON list of numbers like [1,0,1,...]: {_short(value)}") from None
    if not isinstance(value, (list, tuple)):
        raise BlockWeightError(where, f"must be a list of numbers like [1,0,1,...], got {_short(value)}")
    if len(value) not in BLOCK_LISTS:
        raise BlockWeightError(where, f"{len(value)} weights; a block-weight vector has 12 or 20 (SDXL), or 17 or 26 (SD1/SD2)")
    blocks = BLOCK_LISTS[len(value)]
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise BlockWeightError(where, f"weight {index + 1} ({blocks[index]}) is {_short(item)}, not a number")
        if not math.isfinite(item):
            raise BlockWeightError(where, f"weight {index + 1} ({blocks[index]}) is {item}; weights must be finite")
    return tuple(float(item) for item in value)


def check_lbws(vectors, family: str | None, where: str = "lbws") -> list[tuple[float, ...] | None]:
    """Parse one vector per model (None: that model is not scaled). All of one length, as
    sd-scripts requires, and a length of the model's family (``family``: sd1, sd2, sd2-v or
    sdxl; None: not known yet, the merge checks it)."""
    parsed = [None if v is None else parse_lbw(v, f"{where}[{i}]") for i, v in enumerate(vectors)]
    lengths = sorted({len(v) for v in parsed if v is not None})
    if len(lengths) > 1:
        raise BlockWeightError(where, f"vectors of {' and '.join(map(str, lengths))} weights: give them all the same length")
    group = lbw_family(family)
    # sd-scripts takes the family from the length; we know it, and a length of the other
    # family would find no U-Net module to weight (SD1 names in an SDXL file or back).
    if lengths and group is not None and lengths[0] not in LENGTHS[group]:
        other = "sdxl" if group == "sd" else "sd"
        allowed = " or ".join(map(str, LENGTHS[group]))
        raise BlockWeightError(where, f"{lengths[0]} weights are {FAMILY_NAMES[other]} blocks; an {FAMILY_NAMES[group]} LoRA takes {allowed}")
    return parsed


def per_model_lbws(vectors, count: int) -> list | None:
    """A project's ``[merge] lbws`` as one entry per model ([B, A]): empty is None (no
    weighting), one vector weights every model alike (so the difference B − A per block),
    else one vector per model."""
    vectors = list(vectors or [])
    if not vectors:
        return None
    return vectors * count if len(vectors) == 1 else vectors


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
