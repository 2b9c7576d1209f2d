"""Twin training against two separate runs: the time to train both sides N steps.

In one process, the base model loaded once: ``train(plan, "a")`` then ``train(plan, "b")``
against ``train_twin(plan)`` (one batch of two). Reported: seconds for both sides (model
load excluded), pair-steps per second, the speed-up. Uses bench/gpu_acceptance.py's pictures
and project set-up (fp32 on a CPU; ``--precision fp16 --optimizer AdamW8bit`` on a GPU).

    OMP_NUM_THREADS=1 python bench/twin_bench.py --base tiny --size 128x192 --steps 40
    OMP_NUM_THREADS=1 python bench/twin_bench.py --base /tmp/sd15-random --size 256x384 --steps 6
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from engine.train.controls import TrainControls

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def measure(base: str, size: tuple[int, int], steps: int, precision: str, optimizer: str, repeat: int, work: Path) -> dict:
    import torch

    from bench.gpu_acceptance import make_project, teacher_pictures
    from engine.models.loading import load_base_model
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.train.trainer import _precision, pick_device, train
    from engine.train.twin import train_twin

    pictures = teacher_pictures(work / "pictures", *size)
    root = make_project(work / "project", pictures, base, size=size, steps=steps, precision=precision, optimizer=optimizer,
                        sample_steps=1, device="cpu")
    project = load_project(root)
    device = pick_device(None)
    weight_dtype = _precision(project.train.mixed_precision, device, lambda line: None)[0]
    model = load_base_model(project.base_model_path(), project.info.model_family, dtype=weight_dtype, device=device)
    plan = make_plan(project)

    def loop_seconds(run) -> float:
        """Seconds from the first to the last step (set-up and caching excluded)."""
        marks: list[float] = []

        def on_progress(_p) -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

        run(on_progress)
        return marks[-1] - marks[0]

    ops = count_ops(plan, model, device)
    separate, twin = [], []
    for _ in range(repeat):
        separate.append(sum(loop_seconds(lambda cb, s=side: train(plan, s, model=model, log=lambda line: None, controls=TrainControls(on_progress=cb)))
                            for side in ("a", "b")))
        twin.append(loop_seconds(lambda cb: train_twin(plan, model=model, log=lambda line: None, controls=TrainControls(on_progress=cb))))
    timed = steps - 1  # intervals between the first and the last step
    best_separate, best_twin = min(separate), min(twin)
    return {"base": base, "size": f"{size[0]}x{size[1]}", "steps": steps, "precision": precision, "optimizer": optimizer,
            "device": device, "separate_seconds": [round(s, 3) for s in separate], "twin_seconds": [round(s, 3) for s in twin],
            "separate_pair_steps_per_s": round(timed / best_separate, 3) if best_separate else None,
            "twin_pair_steps_per_s": round(timed / best_twin, 3) if best_twin else None,
            "speedup": round(best_separate / best_twin, 3) if best_twin else None, **ops}


def count_ops(plan, model, device: str, steps: int = 6) -> dict:
    """ATen operators dispatched per training step (forward, backward and optimizer step), one side
    alone and the twin pair: all of them (the host's dispatching work), and those that compute
    (views and allocations left out: on a GPU each of these is a kernel launch). Measured where no
    GPU is (CPU only: on CUDA the backward runs on another thread, which the counting mode does not
    see, so the figures are left out there)."""
    if not device.startswith("cpu"):
        return {}
    from dataclasses import replace

    from bench.op_count import ops_per_step
    from engine.train.trainer import train
    from engine.train.twin import train_twin

    short = replace(plan, sides={k: replace(v, total_steps=steps) for k, v in plan.sides.items()})

    one = ops_per_step(lambda c: train(short, "a", model=model, log=lambda line: None, controls=c))
    pair = ops_per_step(lambda c: train_twin(short, model=model, log=lambda line: None, controls=c))
    return {"ops_per_step_one_side": round(one[0]), "ops_per_step_twin": round(pair[0]), "twin_ops_vs_two_sides": round(pair[0] / (2 * one[0]), 3),
            "kernels_per_step_one_side": round(one[1]), "kernels_per_step_twin": round(pair[1]),
            "twin_kernels_vs_two_sides": round(pair[1] / (2 * one[1]), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="tiny")
    parser.add_argument("--size", default="128x192")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--precision", default="no")
    parser.add_argument("--optimizer", default="AdamW")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out-json", default=None)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # this project's CPU figures are single-threaded (2 shared cores)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as work:
        result = measure(args.base, size, args.steps, args.precision, args.optimizer, args.repeat, Path(work))
    result["torch"] = torch.__version__
    print(json.dumps(result, indent=1))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    raise SystemExit(main())
