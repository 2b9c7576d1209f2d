"""The merge statistics as the Stats screen shows them: sortable, filterable module rows.

The document is the ``<name>.stats.json`` the merge writes; loading and the basic filter are
the CLI's (``copylora stats``), so the two views can never disagree about which rows match.
"""

from __future__ import annotations

import re

from copylora_tui.cli.merge_commands import load_stats, select_rows  # torch-free

__all__ = ["load_stats", "COLUMNS", "sorted_rows", "block_filters", "kind_filters"]

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


def sorted_rows(document: dict, *, sort: str = "energy", reverse: bool = False, block: str | None = None, kind: str | None = None) -> list[dict]:
    rows = select_rows(document, sort="name", block=block, kind=kind, top=0)
    return sorted(rows, key=COLUMNS[sort][1], reverse=reverse)  # type: ignore[arg-type]


def block_filters(document: dict) -> list[str]:
    """Block filters present in the file: whole groups (in, out, …) then single blocks."""
    blocks = [b["block"] for b in document.get("blocks", [])] or sorted({m["block"] for m in document["modules"]})
    groups = list(dict.fromkeys(re.sub(r"\d+$", "", b) for b in blocks))
    return [g for g in groups if g not in blocks] + blocks


def kind_filters(document: dict) -> list[str]:
    return sorted({m["kind"] for m in document["modules"]})
