"""One side and the twin pair, each LoRA inside its Linear's function (engine/lora/fused.py)
against every LoRA as a forward hook, timed in the order hooked, fused, fused, hooked on one
machine (neither always first: warm-up, clocks and the allocator's growth fall on both ways).

The base is a random full-size SD1.5 built on the device (bench/random_model.py), or ``--base``.
Eager steps (``cuda_graphs = false``, the default), the rate after each run's first third.

    python bench/fused_abba.py --size 600x900 --steps 45                       # on a GPU
    OMP_NUM_THREADS=1 python bench/fused_abba.py --base tiny --size 128x192 --steps 9 --precision no --optimizer AdamW
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from bench.acceptance_speed import timing_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing_arguments(parser)
    args = parser.parse_args(argv)
    import torch

    from bench.acceptance_speed import timed, timing_project
    from bench.fused_bench import hooks_only
    from engine.project.plan import make_plan
    from engine.train.trainer import train
    from engine.train.twin import train_twin

    project, model, device = timing_project(Path(args.work or tempfile.mkdtemp()), args.base, args.size, args.steps, args.precision,
                                            args.optimizer)
    twin = replace(project, info=replace(project.info, twin_training=True))
    runs = {"one side": lambda c: train(make_plan(project, max_steps=args.steps), "a", model=model, log=lambda line: None, controls=c),
            "twin pair": lambda c: train_twin(make_plan(twin, max_steps=args.steps), model=model, log=lambda line: None, controls=c)}
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "size": args.size, "steps": args.steps,
                    "precision": args.precision, "optimizer": args.optimizer}
    for name, run in runs.items():
        rates: dict[str, list] = {"hooked": [], "fused": []}
        for way in ("hooked", "fused", "fused", "hooked"):
            with hooks_only() if way == "hooked" else nullcontext():
                rate, _, _ = timed(run)
            rates[way].append(round(rate, 2) if rate else None)
        mean = {way: sum(v) / len(v) for way, v in rates.items() if all(v)}
        report[name] = {**rates, "fused_vs_hooked": round(mean["fused"] / mean["hooked"], 3) if len(mean) == 2 else None}
        print(json.dumps({name: report[name]}), flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    raise SystemExit(main())
