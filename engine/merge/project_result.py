"""A project's result, ``output/NAME.safetensors``, by the project's route.

- **svd-merge**: the exact low-rank merge of ``ratios`` · [B, A] (+1·B −1·A), at ``[merge] new_rank``.
- **addift**, **slider**: their one LoRA at ratio ``pair_multiplier`` (the +m it trained at), re-ranked
  the same way (engine.project.pair_route).
- **differential**: B was trained on the base with A applied, so B alone is the result; it is
  written through the same exact SVD with one input at ratio 1 (a re-rank to ``new_rank``,
  exact when B's rank fits, as it does by default: rank 8 < 16), so both routes give the same
  kind of file and the same per-layer ``.stats.json``.

What the result is made of, the route and what it records (A's file hash and multiplier for
the differential route, in ``copylora_route`` and in the stats) are the result artifact's
(:class:`engine.project.outputs.Result`), which also says whether the file is up to date.
"""

from __future__ import annotations

from typing import Callable

from engine.project.outputs import Result
from engine.project.plan import Plan


def describe(plan: Plan) -> str:
    """One line for logs: what the result is made of."""
    merge = plan.project.merge
    paths, ratios = Result(plan).inputs()
    if Result(plan).differential:
        return f"result = {paths[0].name} (B trained on base + A), rank ≤ {merge.new_rank}"
    if Result(plan).one_lora:
        return f"result = {paths[0].name} at {ratios[0]:g} (the {plan.project.info.method} route's LoRA at its training multiplier), rank ≤ {merge.new_rank}"
    return f"merging {ratios[0]:+g}·{paths[0].name} {ratios[1]:+g}·{paths[1].name} → rank {merge.new_rank}"


def make_result(plan: Plan, *, progress: Callable[[int, int, str], None] | None = None, device: str | None = None):
    """Write the project's result and its stats; returns (lora path, stats path, MergeResult)."""
    from engine.merge.svd import merge_loras, save_merge

    merge = plan.project.merge
    artifact = Result(plan)
    paths, ratios = artifact.inputs()
    route = artifact.route()
    result = merge_loras(paths, ratios, new_rank=merge.new_rank, new_conv_rank=merge.new_conv_rank,
                         device=device or merge.device, precision=merge.precision, progress=progress,
                         lbws=artifact.lbws())
    result.metadata.update(artifact.record(route))
    lora, stats = save_merge(result, artifact.path, merge.save_precision, extra={"route": route})
    return lora, stats, result
