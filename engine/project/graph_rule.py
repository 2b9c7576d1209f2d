"""What keeps ``[train] cuda_graphs`` from capturing a run's step, decided from its settings
alone (no torch): the trainer falls back to eager for it (engine/train/cuda_graph.py) and
``copylora check`` warns of it before the run."""

from __future__ import annotations

from engine.project.params import TrainParams


def graph_problem(p: TrainParams, buckets: int, method: str | None) -> str:
    """Why this run's step cannot be captured ("" when it can), decided before the first step."""
    if method is not None:
        return f"the {method} route's step runs the U-Net at two LoRA multipliers"
    if not p.network_train_unet_only:
        return "the text encoder is trained (network_train_unet_only = false), outside the captured step"
    if p.compile:
        return "compile = true is asked for too (two ways to the same end: set one)"
    if buckets > 1:
        return f"{buckets} buckets: the step's shapes change"
    return ""


def side_graph_problem(plan, side: str) -> str:
    """:func:`graph_problem` for one trained side of ``plan``: its settings, its buckets (with
    its further concepts' and its class pictures'), and the one-LoRA route if the project has one."""
    from engine.project.pair_route import is_pair_route

    sp = plan.side(side)
    # every item an epoch shows, class pictures included (a plan made by hand may lack the count)
    buckets = {bucket for bucket, _ in sp.epoch_buckets} or {*sp.buckets, *(bucket for concept in sp.concepts for bucket in concept.buckets)}
    return graph_problem(sp.params, len(buckets), plan.project.info.method if is_pair_route(plan.project) else None)


def graph_warnings(plan) -> list[str]:
    """``check``'s warning when cuda_graphs is asked for and a trained side's step cannot be captured."""
    warnings = []
    for side in plan.trained:
        if not plan.side(side).params.cuda_graphs:
            continue
        why = side_graph_problem(plan, side)
        line = f"train.cuda_graphs: {side.upper()} will train eagerly: {why}"
        if why and line not in warnings:
            warnings.append(line)
    return warnings
