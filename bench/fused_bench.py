"""Each Linear and its LoRA as one function (engine/lora/fused.py) against a forward hook per
LoRA (every Linear target hooked, as before): operators and kernels a step, steps/s, and how far
the LoRAs end apart.

Three trainings on ``tiny`` (CPU, fp32): one side, the twin pair (A and B as one batch) and the
differential route's B (A frozen, carried in B's matmuls). Each is counted once each way
(bench/op_count.py: what a host-bound GPU step pays), then timed twice each way in the order
hooked, fused, fused, hooked (neither always runs first); plain SGD, so the LoRAs differ by
rounding only.

    OMP_NUM_THREADS=1 python bench/fused_bench.py --steps 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRAININGS = ("one side", "twin pair", "differential B")


@contextmanager
def hooks_only() -> Iterator[None]:
    """Every LoRA as a forward hook (no Linear's forward replaced): the way before engine/lora/fused.py."""
    from unittest import mock

    with mock.patch("engine.lora.fused.fusable", lambda base: False):
        yield


def worst_relative(got: dict, want: dict) -> float:
    # Tensors at rounding level are left out: at 64×64 the mid block's self-attention sees one
    # token, so its to_q / to_k LoRAs get no gradient (norms ~1e-11, all rounding).
    return max(float((got[k].double() - want[k].double()).norm() / want[k].double().norm())
               for k in want if "alpha" not in k and float(want[k].norm()) > 1e-8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", default="128x192")
    parser.add_argument("--optimizer", default="SGDNesterov")
    parser.add_argument("--only", choices=TRAININGS, action="append", help="measure only these trainings (repeatable)")
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import load_file

    from bench.acceptance_speed import timed
    from bench.gpu_acceptance import make_project, teacher_pictures
    from bench.op_count import ops_per_step
    from engine.models.loading import load_base_model
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan
    from engine.train.trainer import train
    from engine.train.twin import train_twin

    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("x"))
    model = load_base_model("tiny")
    report: dict = {"size": args.size, "steps": args.steps, "optimizer": args.optimizer}
    quiet = {"model": model, "log": lambda line: None}
    with tempfile.TemporaryDirectory() as work:
        pictures = teacher_pictures(Path(work) / "pictures", width, height)

        def plan_for(name: str, method: str = "svd-merge"):
            root = make_project(Path(work) / name, pictures, "tiny", size=(width, height), steps=args.steps, precision="no",
                                optimizer=args.optimizer, sample_steps=1, device="cpu", method=method)
            project = load_project(root)
            project.train.learning_rate, project.train.save_precision, project.train.copy_check_every_n_steps = 0.5, "float", 0
            save_project(project)
            return make_plan(load_project(root))

        one, differential = plan_for("one"), plan_for("differential", "differential")
        train(differential, "a", **quiet)  # A, for the differential B to train on
        runs = {
            "one side": lambda c: train(one, "a", controls=c, **quiet),
            "twin pair": lambda c: train_twin(one, controls=c, **quiet),
            "differential B": lambda c: train(differential, "b", controls=c, **quiet),
        }
        for training in args.only or TRAININGS:
            run, row, loras = runs[training], {}, {}
            for way in ("hooked", "fused"):
                with hooks_only() if way == "hooked" else nullcontext():
                    ops, kernels = ops_per_step(run)
                row[way] = {"ops_per_step": round(ops), "kernels_per_step": round(kernels), "it_per_s": []}
            for way in ("hooked", "fused", "fused", "hooked"):
                with hooks_only() if way == "hooked" else nullcontext():
                    rate, result, _ = timed(run)
                row[way]["it_per_s"].append(round(rate, 2) if rate else None)
                results = list(result.values()) if isinstance(result, dict) else [result]
                loras[way] = {f"{i}.{k}": v for i, r in enumerate(results) for k, v in load_file(str(r.lora_path)).items()}
                assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in model.unet.modules())
            # Plain SGD steps carry rounding as rounding; Adam divides each gradient by its own size, so the
            # rounding-level gradients of untrained tensors become full steps: no comparison then.
            row["worst_relative_difference"] = worst_relative(loras["fused"], loras["hooked"]) if args.optimizer.startswith("SGD") else None
            row["ops_fused_vs_hooked"] = round(row["fused"]["ops_per_step"] / row["hooked"]["ops_per_step"], 3)
            row["kernels_fused_vs_hooked"] = round(row["fused"]["kernels_per_step"] / row["hooked"]["kernels_per_step"], 3)
            report[training] = row
            print(json.dumps({training: row}), flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    raise SystemExit(main())
