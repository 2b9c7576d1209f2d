"""A project's result, ``output/NAME.safetensors``, by the project's route.

- **svd-merge**: the exact low-rank merge of ``ratios`` · [B, A] (+1·B −1·A), at ``[merge] new_rank``.
- **differential**: B was trained on the base with A applied, so B alone is the result; it is
  written through the same exact SVD with one input at ratio 1 (a re-rank to ``new_rank``,
  exact when B's rank fits, as it does by default: rank 8 < 16), so both routes give the same
  kind of file and the same per-layer ``.stats.json``.

The route and, for the differential one, A's file hash and multiplier are recorded in the
file's ``copylora_route`` metadata and in the stats; ``copylora run`` compares them to decide
whether the result is up to date.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from engine.project.plan import Plan, base_weights_for, is_differential


def merge_inputs(plan: Plan) -> tuple[list[Path], list[float]]:
    """The LoRA files and their ratios that make the result."""
    if is_differential(plan.project):
        return [plan.side("b").lora_path], [1.0]
    return [plan.side("b").lora_path, plan.side("a").lora_path], list(plan.project.merge.ratios)


def input_lbws(plan: Plan) -> list | None:
    """``[merge] lbws`` as one block-weight vector per input (None: no weighting). The
    differential route has one input, B: its vector is the first (B's, as in [B, A])."""
    from engine.lbw_vectors import per_model_lbws

    paths, _ = merge_inputs(plan)
    vectors = list(plan.project.merge.lbws)
    return per_model_lbws(vectors[:1] if len(paths) == 1 else vectors, len(paths))


def route_record(plan: Plan) -> dict:
    """The route of the result as recorded in it (A's file by content for the differential one)."""
    from engine.train.base_weights import base_weights_record

    record: dict = {"method": plan.project.info.method}
    base_weights = base_weights_for(plan, "b")
    if base_weights is not None:
        record["base_weights"] = base_weights_record(base_weights)
    return record


def describe(plan: Plan) -> str:
    """One line for logs: what the result is made of."""
    merge = plan.project.merge
    paths, ratios = merge_inputs(plan)
    if is_differential(plan.project):
        return f"result = {paths[0].name} (B trained on base + A), rank ≤ {merge.new_rank}"
    return f"merging {ratios[0]:+g}·{paths[0].name} {ratios[1]:+g}·{paths[1].name} → rank {merge.new_rank}"


def make_result(plan: Plan, *, progress: Callable[[int, int, str], None] | None = None, device: str | None = None):
    """Write the project's result and its stats; returns (lora path, stats path, MergeResult)."""
    from engine.merge.svd import merge_loras, save_merge

    merge = plan.project.merge
    paths, ratios = merge_inputs(plan)
    route = route_record(plan)
    result = merge_loras(paths, ratios, new_rank=merge.new_rank, new_conv_rank=merge.new_conv_rank,
                         device=device or merge.device, precision=merge.precision, progress=progress,
                         lbws=input_lbws(plan))
    result.metadata["copylora_route"] = json.dumps(route)
    lora, stats = save_merge(result, plan.merged_path, merge.save_precision, extra={"route": route})
    return lora, stats, result


def result_route_matches(plan: Plan, metadata: dict) -> tuple[bool, str]:
    """Whether a result file's recorded route is the project's current one."""
    try:
        made = json.loads(metadata.get("copylora_route") or '{"method": "svd-merge"}')  # older files: the SVD route
    except ValueError:
        return False, "the result has an unreadable route record"
    want = route_record(plan)
    if made.get("method") != want["method"]:
        return False, f"made by the {made.get('method')} route, the project now uses {want['method']}"
    if made.get("base_weights") != want.get("base_weights"):
        return False, "A or its multiplier changed since B was trained on it"
    return True, ""
