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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="a model (default: a random full-size SD1.5 built here)")
    parser.add_argument("--size", default="600x900")
    parser.add_argument("--steps", type=int, default=45)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--optimizer", default="AdamW8bit")
    parser.add_argument("--work", default=None)
    args = parser.parse_args(argv)
    import torch

    from bench.acceptance_speed import _load, timed
    from bench.fused_bench import hooks_only
    from bench.gpu_acceptance import make_project, teacher_pictures
    from engine.project.plan import make_plan
    from engine.train.trainer import train
    from engine.train.twin import train_twin

    torch.set_num_threads(1) if not torch.cuda.is_available() else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.work or tempfile.mkdtemp())
    width, height = (int(v) for v in args.size.split("x"))
    base = args.base
    if base is None:
        from bench.random_model import build_random

        base = str(build_random(work / "sd15-random", "sd1", device=device, log=lambda line: None))
    pictures = teacher_pictures(work / "pictures", width, height)
    root = make_project(work / "project", pictures, base, size=(width, height), steps=args.steps, precision=args.precision,
                        optimizer=args.optimizer, sample_steps=1, device=device)
    project, model = _load(root)
    project = replace(project, train=replace(project.train, copy_check_every_n_steps=0))
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
    raise SystemExit(main())
