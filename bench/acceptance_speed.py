"""The GPU acceptance run's speed phases (issue 26), called by ``bench/gpu_acceptance.py``:

- ``graph rates``: steps/s with ``[train] cuda_graphs`` off and on, for one side, a twin pair
  (pair-steps/s, also with the pair batched features first) and the differential route's B (eager also
  with A's modules beside B, not folded), the base loaded once, in this process;
- ``SDXL``: a random-weight full-size SDXL built from the shipped configs, trained in bf16 at
  each asked size with gradient checkpointing off and on (steps/s, peak VRAM, whether that fits a
  24 GB and a 12 GB card), then the project run the way a user runs it (train A and B, merge,
  preview) with the settings that fit a 24 GB card.

``--cpu-smoke`` runs both on the tiny models on the CPU (the graphs fall back to eager there,
saying so), so the code cannot rot between GPU sessions.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable
from unittest import mock

from engine.train.controls import TrainControls

# A card's memory as nvidia-smi gives it, less what the CUDA context and the allocator's
# fragmentation take beyond torch's reserved peak (~0.5–1 GiB measured on an H100, run 2).
CARDS_MIB = {"24 GB": 24576, "12 GB": 12288}
CONTEXT_MIB = 1024


def rate_of(marks: list[tuple[int, float]]) -> float | None:
    """Steps/s from (step, time) marks, the first third skipped (start-up, cuDNN's choices, a
    graph's capture). Counted in steps, not in marks: on CUDA the trainer reports at most every
    ``LOSS_READ_S`` (engine.train.loss_reads), several steps per report once a step is faster than
    that. Counting reports capped every rate at ~3.3/s on the H200 (2026-12-04), graphs or not."""
    clean = marks[len(marks) // 3:]
    if len(clean) < 2 or clean[-1][1] <= clean[0][1] or clean[-1][0] <= clean[0][0]:
        return None
    return (clean[-1][0] - clean[0][0]) / (clean[-1][1] - clean[0][1])


def timed(train_with: Callable[[TrainControls], object]) -> tuple[float | None, object, float | None]:
    """(steps/s after the first third, the training's result, seconds to the first report)."""
    import torch

    marks: list[tuple[int, float]] = []

    def on_progress(progress) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # a step is done when the GPU is, not when its kernels are queued
        marks.append((progress.step, time.perf_counter()))

    began = time.perf_counter()
    result = train_with(TrainControls(on_progress=on_progress))
    return rate_of(marks), result, (marks[0][1] - began if marks else None)


def without_copy_checks(project):
    """The rate phases time training steps: the copy check (a few U-Net forwards every
    ``copy_check_every_n_steps`` and at the last step) would land in the last timed interval."""
    return replace(project, train=replace(project.train, copy_check_every_n_steps=0))


def timing_arguments(parser) -> None:
    """The options of the timing benches (fused_abba, graph_levers), for :func:`timing_project`."""
    parser.add_argument("--base", default=None, help="a model (default: a random full-size SD1.5 built here)")
    parser.add_argument("--size", default="600x900")
    parser.add_argument("--steps", type=int, default=45)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--optimizer", default="AdamW8bit")
    parser.add_argument("--work", default=None)


def timing_project(work: Path, base: str | None, size: str, steps: int, precision: str, optimizer: str):
    """(project, model, device) for the timing benches (fused_abba, graph_levers): ``base``, or a
    random full-size SD1.5 built on the device, and a project at ``size`` ("WxH") without copy checks.
    On a CPU torch gets one thread (the tests' machine has two cores, shared)."""
    import torch

    from bench.gpu_acceptance import make_project, teacher_pictures

    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(1)
    device = "cuda" if cuda else "cpu"
    width, height = (int(v) for v in size.split("x"))
    if base is None:
        from bench.random_model import build_random

        base = str(build_random(work / "sd15-random", "sd1", device=device, log=lambda line: None))
    pictures = teacher_pictures(work / "pictures", width, height)
    root = make_project(work / "project", pictures, base, size=(width, height), steps=steps, precision=precision,
                        optimizer=optimizer, sample_steps=1, device=device)
    project, model = _load(root)
    return without_copy_checks(project), model, device


def _load(project: Path):
    from engine.models.loading import load_base_model
    from engine.project.folder import load_project
    from engine.train.trainer import _precision, pick_device

    project_ = load_project(project)
    device = pick_device(None)
    weight_dtype = _precision(project_.train.mixed_precision, device, lambda line: None)[0]
    return project_, load_base_model(project_.base_model_path(), project_.info.model_family, dtype=weight_dtype, device=device)


def _mean(a: float | None, b: float | None) -> float | None:
    return (a + b) / 2 if a and b else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return round(value, digits) if value else None


def graph_rates(project: Path, steps: int, log=print) -> dict:
    """Steps/s of one side, a twin pair and the differential route's B, with cuda_graphs off
    and on; and the ratios the issue's goals are stated in."""
    from engine.project.plan import make_plan
    from engine.train.trainer import train
    from engine.train.twin import train_twin

    project_, model = _load(project)
    project_ = without_copy_checks(project_)
    rates: dict = {}
    logs: list[str] = []
    for graphs in (False, True):
        base = replace(project_, train=replace(project_.train, cuda_graphs=graphs))
        key = "graphs" if graphs else "eager"
        one, result, first = timed(lambda c: train(make_plan(base, max_steps=steps), "a", model=model, log=logs.append, controls=c))
        twin, _, _ = timed(lambda c: train_twin(make_plan(replace(base, info=replace(base.info, twin_training=True)), max_steps=steps),
                                                model=model, log=logs.append, controls=c))
        differential = replace(base, info=replace(base.info, method="differential"))
        train(make_plan(differential, max_steps=steps), "a", model=model, log=logs.append)  # B trains on this A
        b, _, _ = timed(lambda c: train(make_plan(differential, max_steps=steps), "b", model=model, log=logs.append, controls=c))
        rates[key] = {"one_side_it_per_s": _round(one), "twin_pair_steps_per_s": _round(twin), "differential_b_it_per_s": _round(b),
                      "first_step_seconds": _round(first, 1), "optimizer": getattr(result, "optimizer", None),
                      "twin_vs_two_separate": _round(twin / (one / 2) if one and twin else None),
                      "differential_b_vs_side": _round(b / one if one and b else None)}
        if not graphs:  # the same B with A's modules beside B's, as before engine/lora/folded.py: the fold's gain, same machine
            from engine.train.base_weights import AppliedBaseWeights

            with mock.patch.object(AppliedBaseWeights, "fold_into", lambda self, trained, log: None):
                beside, _, _ = timed(lambda c: train(make_plan(differential, max_steps=steps), "b", model=model, log=logs.append, controls=c))
            rates[key].update(differential_b_a_beside_it_per_s=_round(beside), folded_vs_beside=_round(b / beside if b and beside else None))
            # Every LoRA as a forward hook, as before engine/lora/fused.py: the fused function's gain, same machine.
            from bench.fused_bench import hooks_only

            def one_side(c):
                return train(make_plan(base, max_steps=steps), "a", model=model, log=logs.append, controls=c)

            def pair(c):
                return train_twin(make_plan(replace(base, info=replace(base.info, twin_training=True)), max_steps=steps),
                                  model=model, log=logs.append, controls=c)

            with hooks_only():
                hooked, twin_hooked = timed(one_side)[0], timed(pair)[0]
            # Fused again after the hooked runs: the first fused runs came before everything else in
            # the phase, so a warm-up or clock drift fell on one side only (the H100's one-side
            # reading of 2026-12-06, 0.81, had that order). The comparison uses both fused runs.
            again, twin_again = timed(one_side)[0], timed(pair)[0]
            one_fused, twin_fused = _mean(one, again), _mean(twin, twin_again)
            rates[key].update(one_side_hooked_it_per_s=_round(hooked), one_side_fused_again_it_per_s=_round(again),
                              fused_vs_hooked=_round(one_fused / hooked if one_fused and hooked else None),
                              twin_pair_hooked_steps_per_s=_round(twin_hooked), twin_pair_fused_again_steps_per_s=_round(twin_again),
                              twin_fused_vs_hooked=_round(twin_fused / twin_hooked if twin_fused and twin_hooked else None))
        log(f"  {key}: {rates[key]}")
    eager, graphed = rates["eager"]["one_side_it_per_s"], rates["graphs"]["one_side_it_per_s"]
    said = sorted({line for line in logs if line.startswith("cuda_graphs")})  # captured, or why not
    return {"rates": rates, "graphs_speedup": _round(graphed / eager if eager and graphed else None), "graph_log": said}


def build_sdxl(work: Path, device: str, log=print) -> str:
    from bench.random_model import build_random

    target = work / "sdxl-random"
    if not (target / "model_index.json").exists():
        build_random(target, "sdxl", device=device, log=log)
    return str(target)


def sdxl_rates(project: Path, steps: int, log=print, graphs: bool = False) -> dict:
    """One side at the project's size, bf16, gradient checkpointing off and on (and with
    ``graphs`` both again with ``cuda_graphs`` on: a graph's memory pool is its own, so whether
    the graphed step still fits the card is the question): steps/s, peak VRAM (allocated and
    reserved) and whether the reserved peak fits a 24 GB and a 12 GB card."""
    import torch

    from engine.project.plan import make_plan
    from engine.train.trainer import train

    project_, model = _load(project)
    cuda = torch.cuda.is_available()
    out: dict = {"size": "x".join(str(v) for v in project_.train.resolution), "family": model.family}
    for graphed in (False, True) if graphs else (False,):
        for checkpointing in (False, True):
            key = ("checkpointing" if checkpointing else "plain") + ("+graphs" if graphed else "")
            plan = make_plan(replace(project_, train=replace(project_.train, gradient_checkpointing=checkpointing, cuda_graphs=graphed)),
                             max_steps=steps)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            said: list[str] = []
            try:
                rate, result, first = timed(lambda c: train(plan, "a", model=model, log=said.append, controls=c))
            except torch.cuda.OutOfMemoryError as exc:  # a figure too: it does not fit this card either
                out[key] = {"error": f"out of memory: {str(exc)[:160]}"}
                continue
            finally:
                model.unet.disable_gradient_checkpointing()  # the model is shared by the next variant
            facts: dict = {"it_per_s": _round(rate), "first_step_seconds": _round(first, 1), "optimizer": getattr(result, "optimizer", None)}
            if graphed:
                facts["graph_log"] = [line for line in said if line.startswith("cuda_graphs")]
            if cuda:
                reserved = torch.cuda.max_memory_reserved() / 2**20
                facts.update(vram_peak_allocated_mib=round(torch.cuda.max_memory_allocated() / 2**20),
                             vram_peak_reserved_mib=round(reserved),
                             **{f"fits_{card.replace(' ', '')}": reserved + CONTEXT_MIB <= mib for card, mib in CARDS_MIB.items()})
            out[key] = facts
            log(f"  {out['size']} {key}: {facts}")
    return out
