"""Per-module statistics of a merge, and the per-block summaries the stats views show.

Each module has two blocks, for two views:

* ``lbw_block``: the LoRA Block Weight block users know from sd-webui-lora-block-weight and
  sd-scripts' ``--lbws`` (``BASE``, ``IN04``, ``M00``, ``OUT03``; see
  :mod:`engine.lora.block_weights`), ``other`` for a module of none;
* ``block``: the U-Net level as the file names it: ``te`` (text encoder, ``te1``/``te2`` for
  SDXL), ``in`` (down blocks / input_blocks), ``mid`` and ``out`` (up blocks / output_blocks),
  each with its index, e.g. ``in1``, ``mid``, ``out3``.

Stats files written before ``lbw_block`` existed get it from the module names when read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.lora.block_weights import block_sort_key, lbw_block

_PATTERNS = (
    (re.compile(r"^lora_te([12]?)_"), lambda m: f"te{m.group(1)}"),
    (re.compile(r"^lora_unet_(?:down_blocks|input_blocks)_(\d+)_"), lambda m: f"in{m.group(1)}"),
    (re.compile(r"^lora_unet_(?:mid_block|middle_block)_"), lambda m: "mid"),
    (re.compile(r"^lora_unet_(?:up_blocks|output_blocks)_(\d+)_"), lambda m: f"out{m.group(1)}"),
)


def block_of(name: str) -> str:
    for pattern, label in _PATTERNS:
        match = pattern.match(name)
        if match:
            return label(match)
    return "other"


def lbw_block_of(name: str) -> str:
    """The module's LBW block, ``other`` for none (its name says SD1/SD2 or SDXL)."""
    return lbw_block(name) or "other"


def kind_of(weights, kernel: int) -> str:
    if weights.down.dim() == 4:
        return f"conv{kernel}x{kernel}"
    return "linear"


@dataclass
class ModuleStats:
    name: str
    block: str
    kind: str  # linear, conv1x1, conv3x3
    shape: list[int]  # [out, in] or [out, in, kernel]
    input_ranks: list[int]  # per input file, 0 where the module is absent
    kept_rank: int
    singular_values: list[float]  # of the full merged delta (first 64), descending
    energy_kept: float  # Σ kept σ² / Σ σ²
    rel_error: float  # ‖ΔW − truncated‖_F / ‖ΔW‖_F = sqrt(1 − energy_kept)
    input_norms: list[float]  # ‖Δ_i‖_F of each input's own delta (before its ratio)
    result_norm: float  # ‖truncated merged delta‖_F
    cos_inputs: float | None  # cos(Δ_1, Δ_2) when there are two inputs
    lbw_block: str | None = None  # LBW block (IN04…); None: from the name

    def __post_init__(self) -> None:
        if self.lbw_block is None:  # every maker of stats gets it without passing it
            self.lbw_block = lbw_block_of(self.name)


def summarise_blocks(stats: list, by: str = "block") -> list[dict]:
    """One row per block (``by``: ``block`` or ``lbw_block``): modules, energy kept (of the
    block's total), norms. ``stats``: :class:`ModuleStats`, or the module rows of a stats file."""
    rows: dict[str, dict] = {}
    for s in stats:
        s = s if isinstance(s, dict) else vars(s)
        block = s.get(by) or (lbw_block_of(s["name"]) if by == "lbw_block" else "other")  # a row from before lbw_block
        empty = {"block": block, "modules": 0, "energy": 0.0, "kept": 0.0, "input_norm_sq": [0.0] * len(s["input_norms"]), "result_norm_sq": 0.0}
        row = rows.setdefault(block, empty)
        total = s["result_norm"] ** 2 / s["energy_kept"] if s["energy_kept"] > 0 else 0.0
        row["modules"] += 1
        row["energy"] += total
        row["kept"] += s["result_norm"] ** 2
        row["result_norm_sq"] += s["result_norm"] ** 2
        for i, n in enumerate(s["input_norms"]):
            if i < len(row["input_norm_sq"]):  # a hand-edited file's rows may disagree in length
                row["input_norm_sq"][i] += n * n
    out = []
    for row in rows.values():
        out.append(
            {
                "block": row["block"],
                "modules": row["modules"],
                "energy_kept": row["kept"] / row["energy"] if row["energy"] > 0 else 1.0,
                "input_norms": [v**0.5 for v in row["input_norm_sq"]],
                "result_norm": row["result_norm_sq"] ** 0.5,
            }
        )
    if by == "lbw_block":
        return sorted(out, key=lambda r: block_sort_key(r["block"]))
    order = {"te": 0, "te1": 0, "te2": 1, "in": 2, "mid": 3, "out": 4, "other": 5}
    key = lambda r: (order.get(re.sub(r"\d+$", "", r["block"]) if r["block"] not in order else r["block"], 9), int(re.sub(r"\D", "", r["block"]) or 0))  # noqa: E731
    return sorted(out, key=key)


def with_lbw_blocks(document: dict) -> dict:
    """A (checked) stats document with every module's ``lbw_block`` and the ``lbw_blocks``
    summary, computed from the module names where the file predates them."""
    for module in document["modules"]:
        if module.get("lbw_block") is None:
            module["lbw_block"] = lbw_block_of(module["name"])
    if not isinstance(document.get("lbw_blocks"), list):
        document["lbw_blocks"] = summarise_blocks(document["modules"], by="lbw_block")
    return document


# --------------------------------------------------------------------------- the stats file

_Kind = type | tuple[type, ...]
_NUMBER: _Kind = (int, float)
_MODULE_FIELDS: dict[str, _Kind] = {
    "name": str, "block": str, "kind": str, "shape": list, "input_ranks": list, "kept_rank": int,
    "energy_kept": _NUMBER, "rel_error": _NUMBER, "result_norm": _NUMBER, "input_norms": list,
}
_BLOCK_FIELDS: dict[str, _Kind] = {"block": str, "modules": int, "energy_kept": _NUMBER, "result_norm": _NUMBER, "input_norms": list}
_INPUT_FIELDS: dict[str, _Kind] = {"file": str, "ratio": _NUMBER}


def read_stats(path) -> dict:
    """The ``<stem>.stats.json`` a merge wrote, checked field by field, so that every view can
    index it without guarding each access. Raises :class:`engine.errors.ValidationError`
    with one line saying what is wrong (a hand-edited, truncated or foreign JSON file)."""
    import json
    from pathlib import Path

    from engine.errors import Problem, ValidationError
    from engine.project.outputs import stats_path_for

    if not Path(path).name:  # "" or "/": no file name to look beside (with_name would raise)
        raise ValidationError([Problem(str(path) or "FILE", "not a merged LoRA, its .stats.json or a project folder")])
    stats_path = stats_path_for(path)
    if not stats_path.is_file():
        raise ValidationError([Problem(str(path), f"no merge statistics found ({stats_path.name}); stats are written by copylora merge/resize/extract")])
    try:
        document = json.loads(stats_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValidationError([Problem(str(stats_path), f"unreadable statistics: {exc}")]) from None
    problem = stats_problem(document)
    if problem is not None:
        raise ValidationError([Problem(str(stats_path), f"not a copylora statistics file ({problem})")])
    return with_lbw_blocks(document)


def stats_problem(document) -> str | None:
    """The first thing wrong with a statistics document, or None."""
    if not isinstance(document, dict):
        return f"the file holds a JSON {type(document).__name__}, not an object"
    if not isinstance(document.get("modules"), list):
        return "no 'modules' list"
    for key, fields in (("modules", _MODULE_FIELDS), ("blocks", _BLOCK_FIELDS), ("lbw_blocks", _BLOCK_FIELDS), ("inputs", _INPUT_FIELDS)):
        rows = document.get(key, [])
        if not isinstance(rows, list):
            return f"'{key}' is not a list"
        for index, row in enumerate(rows):
            where = f"{key}[{index}]"
            if not isinstance(row, dict):
                return f"{where} is not an object"
            for name, kind in fields.items():
                value = row.get(name)
                if not isinstance(value, kind) or isinstance(value, bool):
                    return f"{where}.{name} is {'missing' if name not in row else repr(value)[:40]}"
            for name in ("input_ranks", "shape", "input_norms"):
                items = row.get(name, [])
                if any(isinstance(v, bool) or not isinstance(v, _NUMBER) for v in items):
                    return f"{where}.{name} holds a non-number"
            if key == "modules" and row.get("cos_inputs") is not None and not isinstance(row["cos_inputs"], _NUMBER):
                return f"{where}.cos_inputs is {row['cos_inputs']!r}"[:80]
            if key == "modules" and row.get("lbw_block") is not None and not isinstance(row["lbw_block"], str):
                return f"{where}.lbw_block is {row['lbw_block']!r}"[:80]  # optional: files before it lack it
            if key == "inputs" and row.get("lbw") is not None and (
                    not isinstance(row["lbw"], list) or any(isinstance(v, bool) or not isinstance(v, _NUMBER) for v in row["lbw"])):
                return f"{where}.lbw is not a list of numbers"  # optional: merges without block weights have none
    for name, kind in (("file", str), ("family", str), ("seconds", _NUMBER)):
        if document.get(name) is not None and not isinstance(document[name], kind):
            return f"'{name}' is {document[name]!r}"[:80]
    return None
