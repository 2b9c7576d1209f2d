"""Candidate levers for a graphed step (issue 26's twin goal), timed against the step as shipped.

A graphed step is bound by the GPU's work, not the host's (H100, 2026-12-06: replay 43 ms of a
48.7 ms step), and a twin pair does twice the U-Net's work, so only less GPU work per step moves
the twin's ratio (1.30x two sides; the goal is 1.7x). Where the work goes was last profiled on
an H200 before graphs (docs/gpu-runs/2026-12-04-h200-step-profile.txt): `aten::copy_` (dtype
casts) ~8 ms of ~62 ms a step, most of them around the norms, which CUDA autocast runs in fp32
(each GroupNorm/LayerNorm casts its fp16 input up, and what follows casts it back down), and
cuDNN's NCHW→NHWC conversions ~8 ms.

Levers, each timed in the order shipped, lever, lever, shipped (warm-up and clocks fall on both):

- ``half-norms``: GroupNorm and LayerNorm computed in the model's own precision (fp16/bf16) with
  autocast off around them: torch's CUDA norm kernels accumulate in fp32 whatever the input, so
  this rounds only the output; no casts around the ~110 norms of SD1.5, forward and backward.
- ``channels-last``: the U-Net's weights and activations in NHWC (cuDNN's own layout for fp16).
- ``per-target-casts``: the other way round, the way before the shipped one: each target casts
  its LoRA's weights (and the twin stacks A's and B's) itself, ~4 kernels a target, where the
  shipped step casts them all once (engine.lora.step_weights; on the CPU 636 kernels fewer a
  bf16 step of one side, 956 of a twin pair). A ratio below 1 is the shipped way's gain.

Also: each run's final loss, each lever's LoRA against the shipped one's after the same steps
(the same seeds), beside the shipped one against itself run twice (the run-to-run floor of a
GPU's nondeterministic kernels), and with ``--profile`` the twin's graphed step's kernels, top 20
by GPU time. The LoRA difference is a coarse signal after a few steps: AdamW's first updates are
about ``lr·sign(gradient)``, so a rounding difference in a near-zero gradient flips an update
(on the CPU, fp32 channels-last against contiguous differed by ~1.2 relative after 6 steps).

    python bench/graph_levers.py --size 600x900 --steps 45 --profile         # on a GPU
    OMP_NUM_THREADS=1 python bench/graph_levers.py --base tiny --size 64x64 --steps 6 --precision no --optimizer AdamW
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


LEVERS = ("half-norms", "channels-last", "per-target-casts")


def per_target_casts():
    """The LoRAs' weights cast (and the twin's stacked) at every target, as before
    engine.lora.step_weights made them once per forward: the shipped way's own measure."""
    from unittest import mock

    from engine.lora import step_weights

    return mock.patch.object(step_weights, "ENABLED", False)


@contextmanager
def half_norms() -> Iterator[None]:
    """GroupNorm and LayerNorm in their input's precision: autocast (which would run them in fp32)
    off around each call. A norm whose weights are in another precision than its input is left
    to autocast."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    group_forward, layer_forward = nn.GroupNorm.forward, nn.LayerNorm.forward

    def same(module: nn.Module, x: torch.Tensor) -> bool:
        weight = getattr(module, "weight", None)
        return torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float32 and (weight is None or weight.dtype == x.dtype)

    def group(self, x):
        if not same(self, x):
            return group_forward(self, x)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def layer(self, x):
        if not same(self, x):
            return layer_forward(self, x)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    nn.GroupNorm.forward, nn.LayerNorm.forward = group, layer
    try:
        yield
    finally:
        nn.GroupNorm.forward, nn.LayerNorm.forward = group_forward, layer_forward


@contextmanager
def channels_last(model) -> Iterator[None]:
    import torch

    model.unet.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.unet.to(memory_format=torch.contiguous_format)


def lora_tensors(result) -> dict | None:
    """A run's LoRA as written (read at once: the next run writes the same file)."""
    from safetensors.torch import load_file

    path = getattr(result, "lora_path", None)
    return load_file(str(path)) if path is not None and Path(path).is_file() else None


def lora_difference(a: dict | None, b: dict | None) -> float | None:
    """The worst relative difference of two runs' LoRA tensors (None where a run wrote none)."""
    if not a or not b:
        return None
    worst = 0.0
    for key, w in b.items():
        if "alpha" in key or float(w.float().norm()) < 1e-8:
            continue
        worst = max(worst, float((a[key].double() - w.double()).norm() / w.double().norm()))
    return worst


def kernel_profile(run, steps: int) -> list[dict]:
    """The kernels of a run's steps after its first third (the capture done: replays only where it
    was), top 20 by GPU time per step. The profiler starts and stops from the progress callback,
    so it never runs across the capture itself."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from engine.train.controls import TrainControls

    cuda = torch.cuda.is_available()
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU])
    window: dict[str, int] = {}

    def settle() -> None:
        if cuda:
            torch.cuda.synchronize()

    def on_progress(progress) -> None:
        if "from" not in window and progress.step >= max(steps // 3, 2):
            settle()
            prof.start()
            window["from"] = progress.step
        elif "from" in window and "to" not in window and progress.step >= steps - 1:
            settle()
            prof.stop()
            window["to"] = progress.step

    run(TrainControls(on_progress=on_progress))
    if "to" not in window:
        if "from" in window:
            prof.stop()
        return []
    profiled = max(window["to"] - window["from"], 1)
    rows = []
    for event in prof.key_averages():
        # GPU kernels by their GPU time; on a CPU (the smoke) the operators by their own CPU time
        device_us = (getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)) if cuda else event.self_cpu_time_total
        if device_us and not event.key.startswith(("aten::" if cuda else "\0", "ProfilerStep", "Optimizer.", "cuda")):
            rows.append({"kernel": event.key[:90], "ms_per_step": round(device_us / 1000 / profiled, 3),
                         "calls_per_step": round(event.count / profiled, 1), "steps": profiled})
    return sorted(rows, key=lambda r: -r["ms_per_step"])[:20]


def main(argv: list[str] | None = None) -> int:
    from bench.acceptance_speed import timing_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing_arguments(parser)
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--profile", action="store_true", help="also the twin's kernels, top 20 by GPU time (on a CPU: operators by CPU time)")
    args = parser.parse_args(argv)
    chosen = [name for name in args.levers.split(",") if name]
    unknown = [name for name in chosen if name not in LEVERS]
    if unknown:  # before minutes of building a model
        parser.error(f"unknown lever(s) {', '.join(unknown)}: choose from {', '.join(LEVERS)}")
    import torch

    from bench.acceptance_speed import timed, timing_project
    from engine.project.plan import make_plan
    from engine.train.trainer import train
    from engine.train.twin import train_twin

    project, model, device = timing_project(Path(args.work or tempfile.mkdtemp()), args.base, args.size, args.steps, args.precision,
                                            args.optimizer)
    cuda = device == "cuda"
    project = replace(project, train=replace(project.train, cuda_graphs=True))
    twin = replace(project, info=replace(project.info, twin_training=True))
    said: list[str] = []
    runs = {"one side": lambda c: train(make_plan(project, max_steps=args.steps), "a", model=model, log=said.append, controls=c),
            "twin pair": lambda c: train_twin(make_plan(twin, max_steps=args.steps), model=model, log=said.append, controls=c)}
    levers = {"half-norms": lambda: half_norms(), "channels-last": lambda: channels_last(model), "per-target-casts": per_target_casts}
    report: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "size": args.size, "steps": args.steps,
                    "precision": args.precision, "optimizer": args.optimizer, "levers": {}}
    for lever in chosen:
        entry: dict = {}
        for name, run in runs.items():
            rates: dict[str, list] = {"shipped": [], lever: []}
            results: dict[str, list] = {"shipped": [], lever: []}
            losses: dict[str, list] = {"shipped": [], lever: []}
            for way in ("shipped", lever, lever, "shipped"):
                with levers[lever]() if way == lever else nullcontext():
                    rate, result, _ = timed(run)
                rates[way].append(round(rate, 2) if rate else None)
                side_a = result["a"] if isinstance(result, dict) else result  # the twin: A's
                results[way].append(lora_tensors(side_a))
                losses[way].append(round(side_a.final_loss, 5) if side_a.final_loss is not None else None)
            mean = {way: sum(v) / len(v) for way, v in rates.items() if all(v)}
            entry[name] = {**rates, "lever_vs_shipped": round(mean[lever] / mean["shipped"], 3) if len(mean) == 2 else None,
                           "lora_vs_shipped": lora_difference(results[lever][0], results["shipped"][0]),
                           "shipped_vs_itself": lora_difference(results["shipped"][1], results["shipped"][0]), "final_loss": losses}
            print(json.dumps({lever: {name: entry[name]}}), flush=True)
        report["levers"][lever] = entry
    report["graph_log"] = sorted({line for line in said if "cuda_graphs" in line})
    if args.profile:
        report["twin_kernels"] = kernel_profile(runs["twin pair"], args.steps)
        for row in report["twin_kernels"]:
            print(json.dumps(row), flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    raise SystemExit(main())
