"""The differential route measured: how exactly B on base + A matches B on a base with A baked
in, and what applying A costs per step.

In one process, the base loaded once: train A; then B three ways (A as a frozen LoRA, A
merged into the weights, and on a base with A baked in by ``bake_lora(save_precision="float")``)
and, for the step cost, B on the plain base (the SVD route's B). Reported: the worst relative
difference of any LoRA tensor between the ways, seconds per step of each and, on a CPU, the
operators and kernels a step of each dispatches (bench/op_count.py).

    OMP_NUM_THREADS=1 python bench/differential_bench.py --steps 20
    OMP_NUM_THREADS=1 python bench/differential_bench.py --optimizer AdamW --steps 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# B's ways: A as a frozen LoRA (the default), A merged into the weights, and no A (the SVD route's B).
WAYS = {"frozen A": {}, "merged A": {"b__merge_base_weights": True}, "plain base (SVD route's B)": {"info__method": "svd-merge"}}


def worst_relative(got: dict, want: dict) -> float:
    return max(float((got[k].double() - want[k].double()).norm() / want[k].double().norm())
               for k in want if "alpha" not in k and float(want[k].norm()) > 0)


def measure(size: tuple[int, int], steps: int, optimizer: str, lr: float, work: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    from bench.gpu_acceptance import make_project, teacher_pictures
    from engine.merge.bake import bake_lora
    from engine.models.loading import load_base_model
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan
    from engine.train.trainer import train

    torch.set_num_threads(1)
    pictures = teacher_pictures(work / "pictures", *size)
    root = make_project(work / "project", pictures, "tiny", size=size, steps=steps, precision="no", optimizer=optimizer,
                        sample_steps=1, device="cpu", method="differential")

    original = (root / "copylora.toml").read_bytes()

    def plan_with(**changes):
        """The project as made, with ``changes`` (each plan starts from the original settings)."""
        (root / "copylora.toml").write_bytes(original)
        project = load_project(root)
        trained = {k.removeprefix("train__"): v for k, v in changes.items() if k.startswith("train__")}
        project.train = replace(project.train, learning_rate=lr, save_precision="float", **trained)
        for key, value in changes.items():
            if key.startswith("train__"):
                continue
            target, _, name = key.partition("__")
            setattr(getattr(project, target), name, value)
        save_project(project)
        return make_plan(load_project(root))

    quiet = lambda _line: None  # noqa: E731
    model = load_base_model("tiny")
    a_path = train(plan_with(), "a", model=model, log=quiet).lora_path
    runs, loras = {}, {}
    for name, changes in WAYS.items():
        started = time.perf_counter()
        result = train(plan_with(**changes), "b", model=model, log=quiet)
        runs[name] = (time.perf_counter() - started) / steps
        loras[name] = load_file(str(result.lora_path))
    kernels = {}
    if not torch.cuda.is_available():  # counted where no GPU is (bench/op_count.py)
        from bench.op_count import ops_per_step

        for name, changes in WAYS.items():
            short = plan_with(train__max_train_steps=6, **changes)
            ops, launched = ops_per_step(lambda c, p=short: train(p, "b", model=model, log=quiet, controls=c))
            kernels[name] = {"ops": round(ops), "kernels": round(launched)}
        plain = kernels["plain base (SVD route's B)"]["kernels"]
        for counted in kernels.values():
            counted["kernels_vs_plain"] = round(counted["kernels"] / plain, 3)
    baked = work / "tiny_plus_A"
    bake_lora("tiny", a_path, baked, save_precision="float")
    on_baked = load_base_model(str(baked))
    result = train(plan_with(info__method="svd-merge", info__base_model=str(baked)), "b", model=on_baked, log=quiet)
    loras["baked A"] = load_file(str(result.lora_path))
    return {
        "size": f"{size[0]}x{size[1]}", "steps": steps, "optimizer": optimizer, "lr": lr,
        "worst_relative": {
            "frozen vs baked": worst_relative(loras["frozen A"], loras["baked A"]),
            "merged vs frozen": worst_relative(loras["merged A"], loras["frozen A"]),
            "frozen vs plain base": worst_relative(loras["frozen A"], loras["plain base (SVD route's B)"]),
        },
        "seconds_per_step": {k: round(v, 4) for k, v in runs.items()},
        "per_step_counts": kernels,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="128x192")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--optimizer", default="SGDNesterov")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.5 for SGDNesterov, 1e-3 otherwise")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    lr = args.lr if args.lr is not None else (0.5 if args.optimizer.startswith("SGD") else 1e-3)
    with tempfile.TemporaryDirectory() as work:
        print(json.dumps(measure((width, height), args.steps, args.optimizer, lr, Path(work)), indent=1))
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    sys.exit(main())
