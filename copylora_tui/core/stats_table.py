"""The merge statistics as both views show them (``copylora stats`` and the Stats screen):
loading, filtering, sorting and short module names, in one place so the two can never
disagree about which rows match or in which order they come.

The document is the ``<name>.stats.json`` the merge writes (checked by
:func:`engine.merge.stats.read_stats`, which also gives files from before LBW blocks their
``lbw_block`` and ``lbw_blocks``). Two views group it: by LoRA Block Weight block (``lbw``:
BASE, IN04, M00, OUT03…) or by U-Net level (``unet``: te, in1, mid, out3…). A block filter is
read in the view's naming first, else in the other one (``--block out3`` keeps working in the
LBW view); the groups in/IN, out/OUT, mid/M00 hold the same modules either way.
"""

from __future__ import annotations

import re

from engine.lora.block_weights import block_sort_key
from engine.merge.stats import read_stats as load_stats

__all__ = ["load_stats", "COLUMNS", "SORT_KEYS", "VIEWS", "select_rows", "sorted_rows", "block_filters", "kind_filters", "short_name",
           "block_summary", "block_of"]

# view -> (its name on screen, the module field, the document's per-block summary)
VIEWS = {"lbw": ("LBW", "lbw_block", "lbw_blocks"), "unet": ("U-Net", "block", "blocks")}

# column key -> (heading, sort key). Sorting puts the rows worth a look first: lowest energy
# kept, largest truncation error or change, least similar inputs.
COLUMNS: dict[str, tuple[str, object]] = {
    "name": ("module", lambda m: m["name"]),
    "block": ("block", lambda m: (block_sort_key(m["lbw_block"]), m["block"])),  # U-Net order is LBW order
    "kind": ("kind", lambda m: m["kind"]),
    "ranks": ("ranks", lambda m: sum(m["input_ranks"])),
    "kept": ("kept", lambda m: -m["kept_rank"]),
    "energy": ("energy", lambda m: m["energy_kept"]),
    "error": ("error", lambda m: -m["rel_error"]),
    "norm": ("‖Δ‖", lambda m: -m["result_norm"]),
    "cos": ("cos", lambda m: m.get("cos_inputs") if m.get("cos_inputs") is not None else 2.0),
}


# The sorts `copylora stats --sort` offers: the columns' own keys.
SORT_KEYS = {name: COLUMNS[name][1] for name in ("energy", "error", "norm", "cos", "name", "block")}


def select_rows(document: dict, *, sort: str = "energy", block: str | None = None, kind: str | None = None, top: int = 20,
                reverse: bool = False, view: str = "lbw") -> list[dict]:
    """Rows of one block (``OUT03``, ``out3``) or group (``OUT``, ``out``) and kind, sorted, the first ``top`` (0: all)."""
    rows = document["modules"]
    if block:
        field = VIEWS[view][1]
        if not any(_is_in(m[field], block) for m in rows):  # not a name of this view: the other naming's
            field = VIEWS["unet" if view == "lbw" else "lbw"][1]
        rows = [m for m in rows if _is_in(m[field], block)]
    if kind:
        rows = [m for m in rows if m["kind"] == kind]
    rows = sorted(rows, key=lambda m: m["name"])  # ties in the sorted column come by name
    rows = sorted(rows, key=COLUMNS[sort][1], reverse=reverse)  # type: ignore[arg-type]
    return rows[:top] if top else rows


def _is_in(name: str, block: str) -> bool:
    """A module's block ``name`` is this block or in this group (``OUT03``/``OUT``, ``out3``/``out``; any case)."""
    # the middle block: M00 (the LoRA Block Weight extension's name), MID (stats files written before
    # 2026-12-07, and sd-scripts' word), mid (the U-Net level)
    name, want = ("mid" if n in ("m00", "mid") else n for n in (name.lower(), block.lower()))
    return name == want or (want.isalpha() and name.rstrip("0123456789") == want)


def block_of(module: dict, view: str) -> str:
    return module[VIEWS[view][1]]


def block_summary(document: dict, view: str) -> list[dict]:
    """The per-block rows of a view (old files have no U-Net summary: an empty list)."""
    return document.get(VIEWS[view][2], [])


def sorted_rows(document: dict, *, sort: str = "energy", reverse: bool = False, block: str | None = None, kind: str | None = None,
                view: str = "lbw") -> list[dict]:
    return select_rows(document, sort=sort, block=block, kind=kind, top=0, reverse=reverse, view=view)


_SHORT = (
    ("lora_unet_", ""), ("lora_te1_text_model_encoder_", "te1."), ("lora_te2_text_model_encoder_", "te2."),
    ("lora_te_text_model_encoder_", "te."), ("down_blocks_", "down"), ("up_blocks_", "up"), ("mid_block_", "mid."),
    ("input_blocks_", "in"), ("output_blocks_", "out"), ("middle_block_", "mid"), ("attentions_", "att"),
    ("transformer_blocks_", "tb"), ("resnets_", "res"), ("layers_", "L"), ("self_attn_", "attn."),
)


def short_name(name: str) -> str:
    """A compact module name for narrow terminals: down1_att0_tb0_attn1_to_q."""
    for long, short in _SHORT:
        name = name.replace(long, short)
    return name


def block_filters(document: dict, view: str = "lbw") -> list[str]:
    """Block filters of a view present in the file: whole groups (in, out, …; IN, OUT, …) then single blocks."""
    field = VIEWS[view][1]
    blocks = [b["block"] for b in block_summary(document, view)] or sorted({m[field] for m in document["modules"]})
    groups = list(dict.fromkeys(re.sub(r"\d+$", "", b) for b in blocks if b != "M00"))  # M00 is one block, no group "M"
    return [g for g in groups if g not in blocks] + blocks


def kind_filters(document: dict) -> list[str]:
    return sorted({m["kind"] for m in document["modules"]})
