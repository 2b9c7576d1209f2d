"""The merge statistics as both views show them (``copylora stats`` and the Stats screen):
loading, filtering, sorting and short module names, in one place so the two can never
disagree about which rows match or in which order they come.

The document is the ``<name>.stats.json`` the merge writes (checked by
:func:`engine.merge.stats.read_stats`).
"""

from __future__ import annotations

import re

from engine.merge.stats import read_stats as load_stats

__all__ = ["load_stats", "COLUMNS", "SORT_KEYS", "select_rows", "sorted_rows", "block_filters", "kind_filters", "short_name"]

# column key -> (heading, sort key). Sorting puts the rows worth a look first: lowest energy
# kept, largest truncation error or change, least similar inputs.
COLUMNS: dict[str, tuple[str, object]] = {
    "name": ("module", lambda m: m["name"]),
    "kind": ("kind", lambda m: m["kind"]),
    "ranks": ("ranks", lambda m: sum(m["input_ranks"])),
    "kept": ("kept", lambda m: -m["kept_rank"]),
    "energy": ("energy", lambda m: m["energy_kept"]),
    "error": ("error", lambda m: -m["rel_error"]),
    "norm": ("‖Δ‖", lambda m: -m["result_norm"]),
    "cos": ("cos", lambda m: m.get("cos_inputs") if m.get("cos_inputs") is not None else 2.0),
}


# The sorts `copylora stats --sort` offers: the columns' own keys.
SORT_KEYS = {name: COLUMNS[name][1] for name in ("energy", "error", "norm", "cos", "name")}


def select_rows(document: dict, *, sort: str = "energy", block: str | None = None, kind: str | None = None, top: int = 20,
                reverse: bool = False) -> list[dict]:
    """Rows of one block (``out3``) or group (``out``) and kind, sorted, the first ``top`` (0: all)."""
    rows = document["modules"]
    if block:
        rows = [m for m in rows if m["block"] == block or (block.isalpha() and m["block"].rstrip("0123456789") == block)]
    if kind:
        rows = [m for m in rows if m["kind"] == kind]
    rows = sorted(rows, key=lambda m: m["name"])  # ties in the sorted column come by name
    rows = sorted(rows, key=COLUMNS[sort][1], reverse=reverse)  # type: ignore[arg-type]
    return rows[:top] if top else rows


def sorted_rows(document: dict, *, sort: str = "energy", reverse: bool = False, block: str | None = None, kind: str | None = None) -> list[dict]:
    return select_rows(document, sort=sort, block=block, kind=kind, top=0, reverse=reverse)


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


def block_filters(document: dict) -> list[str]:
    """Block filters present in the file: whole groups (in, out, …) then single blocks."""
    blocks = [b["block"] for b in document.get("blocks", [])] or sorted({m["block"] for m in document["modules"]})
    groups = list(dict.fromkeys(re.sub(r"\d+$", "", b) for b in blocks))
    return [g for g in groups if g not in blocks] + blocks


def kind_filters(document: dict) -> list[str]:
    return sorted({m["kind"] for m in document["modules"]})
