"""Where a training step's wall time goes on the host (issue 26): one side trained in this process
with ``[train] cuda_graphs`` off and on, each step's parts timed with the device synchronised at
their edges (draws, forward+backward or its replay, optimizer step, the loop around them), then the
graphed run again under cProfile (the functions the host spends its time in).

Why: on the H200 (2026-12-04) a 600×900 SD1.5 step took ~330 ms eager and ~300 ms with the
forward and backward replayed as one graph, while the GPU worked ~63 ms of it: the host's time is
outside what the graph holds, and this says where.

    python bench/host_profile.py --base /tmp/sd15-random --steps 40 --optimizers AdamW8bit,AdamW --channels-last   # on the GPU
    python bench/host_profile.py --cpu-smoke                                 # tiny, CPU: checks the script
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PartTimer:
    """Wraps methods so each call's wall time (device synchronised before and after) is summed
    under a name; the loop's own time is the step's less its parts."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)  # each call's seconds, in order
        self.undo: list = []

    def wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            _sync()
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _sync()
                self.times[name].append(time.perf_counter() - began)

        setattr(owner, attribute, timed)
        self.undo.append((owner, attribute, original))

    def restore(self) -> None:
        for owner, attribute, original in reversed(self.undo):
            setattr(owner, attribute, original)
        self.undo.clear()

    def table(self, steps: int) -> dict:
        """Per part: its share of a step (all calls over all steps: the warm-up steps and a
        capture included), its mean per call, and its median over the last two thirds of the
        calls (the steady state: what a 4000-step run is made of)."""
        return {name: {"ms_per_step": round(1000 * sum(times) / steps, 2), "calls": len(times),
                       "ms_per_call": round(1000 * sum(times) / len(times), 2), "steady_ms": round(1000 * steady_median(times), 2)}
                for name, times in self.times.items()}


def steady_median(times: list[float]) -> float:
    """The median of the last two thirds (the first third: cuDNN's choices, the graph's warm-up and capture)."""
    tail = sorted(times[len(times) // 3:])
    return tail[len(tail) // 2] if tail else 0.0


def run(project_dir: Path, steps: int, graphs: bool, profile: bool, optimizer: str | None = None, channels_last: bool = False) -> dict:
    from engine.models.loading import load_base_model
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.train import cuda_graph, side_run, trainer
    from engine.train.trainer import _precision, pick_device, train

    project = load_project(project_dir)
    device = pick_device(None)
    dtype = _precision(project.train.mixed_precision, device, lambda line: None)[0]
    model = load_base_model(project.base_model_path(), project.info.model_family, dtype=dtype, device=device)
    if channels_last:  # a trial: the eager profile spent 13.5 % of the GPU's time converting NCHW to NHWC for cuDNN
        import torch

        model.unet.to(memory_format=torch.channels_last)
    train_keys = {"cuda_graphs": graphs, "copy_check_every_n_steps": 0, **({"optimizer_type": optimizer} if optimizer else {})}
    project = replace(project, train=replace(project.train, **train_keys))
    plan = make_plan(project, max_steps=steps)
    logs: list[str] = []
    timer = PartTimer()
    timer.wrap(trainer.StepFunction, "__call__", "whole step (eager)")
    timer.wrap(cuda_graph.GraphedStep, "__call__", "whole step (graphed)")
    timer.wrap(trainer.StepFunction, "prepare", "draws (prepare)")
    if not graphs:  # a synchronise inside the capture would invalidate it
        timer.wrap(trainer.StepFunction, "compute", "forward+backward (eager)")
    timer.wrap(cuda_graph.GraphedStep, "_replay", "replay (graph)")
    timer.wrap(side_run.SideRun, "optimizer_step", "optimizer step")
    timer.wrap(trainer.StepFunction, "update", "update (all sides)")
    _sync()
    began = time.perf_counter()
    try:
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            train(plan, "a", model=model, log=logs.append)
            profiler.disable()
        else:
            train(plan, "a", model=model, log=logs.append)
    finally:
        timer.restore()
    _sync()
    total = time.perf_counter() - began
    out = {"graphs": graphs, "optimizer": optimizer or project.train.optimizer_type, "channels_last": channels_last, "steps": steps,
           "wall_ms_per_step": round(1000 * total / steps, 1), "parts": timer.table(steps),
           "graph_log": [line for line in logs if line.startswith("cuda_graphs")]}
    if profile:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(35)
        out["cprofile_tottime"] = text.getvalue()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(35)
        out["cprofile_cumulative"] = text.getvalue()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="a base model folder (default: build a random full-size SD1.5 under --work)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--size", default="600x900")
    parser.add_argument("--optimizers", default="AdamW8bit", help="comma-separated: each is timed eager and graphed (default AdamW8bit)")
    parser.add_argument("--channels-last", action="store_true", help="also the first optimizer graphed with the U-Net in channels-last")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None, help="a text file for the report (also printed)")
    parser.add_argument("--cpu-smoke", action="store_true", help="the tiny model on the CPU, a few steps")
    args = parser.parse_args(argv)

    from bench.gpu_acceptance import make_project, teacher_pictures

    work = Path(args.work or tempfile.mkdtemp(prefix="copylora-host-"))
    if args.cpu_smoke:
        base, args.size, args.steps, args.precision = "tiny", "64x96", 6, "no"
    elif args.base:
        base = str(Path(args.base).resolve())
    else:
        from bench.random_model import build_random_sd15

        base = str(build_random_sd15(work / "sd15-random", device="cuda", log=print))
    width, height = (int(v) for v in args.size.lower().split("x"))
    pictures = teacher_pictures(work / "pictures", width, height)
    project = make_project(work / "project", pictures, base, size=(width, height), steps=args.steps, precision=args.precision,
                           optimizer=args.optimizers.split(",")[0].strip(), sample_steps=2, device="cpu" if args.cpu_smoke else "cuda")
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    # (optimizer, graphs, channels_last, cProfile): each optimizer eager and graphed, then the
    # first one graphed in channels-last (if asked) and graphed under cProfile.
    variants = [(o, g, False, False) for o in optimizers for g in (False, True)]
    variants += [(optimizers[0], True, True, False)] if args.channels_last else []
    variants += [(optimizers[0], True, False, True)]
    lines = []
    for optimizer, graphs, channels_last, profile in variants:
        result = run(project, args.steps, graphs, profile, optimizer, channels_last)
        head = (f"== {optimizer}, cuda_graphs={graphs}{', channels-last' if channels_last else ''}"
                f"{' under cProfile' if profile else ''}: {result['wall_ms_per_step']} ms/step")
        part_lines = [f"   {name:28s} {part['ms_per_step']:8.2f} ms/step, {part['ms_per_call']:8.2f} ms/call, steady {part['steady_ms']:8.2f} ms "
                      f"({part['calls']} calls)" for name, part in result["parts"].items()]
        said = [f"   {line}" for line in result["graph_log"]]
        print("\n".join([head, *part_lines, *said]), flush=True)
        lines += [head, *part_lines, *said]
        if profile:
            lines += [result["cprofile_tottime"], result["cprofile_cumulative"]]
    report = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    raise SystemExit(main())
