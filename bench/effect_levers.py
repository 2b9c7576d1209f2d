"""Levers on the copy-machine effect under CFG, on a toy model (issue 15's diagnostic).

Trains the toy world's pair (bench/effect_bench.py's ``toy_project``) once per ``--mode``, merges
it (SVD, rank 16), and measures :func:`engine.train.effect.lora_effect` at CFG 5 and 1 for the
whole result and for groups of its modules. The modes change only what A and B are conditioned
on while they train:

- ``empty``: the method as copylora runs it (the empty prompt);
- ``caption``: both sides under the pair's own caption (``[train] caption``; the same one, so it
  cancels in B - A);
- ``mixK``: each teacher item also under K random prompts of trained combinations.

    OMP_NUM_THREADS=2 python bench/effect_levers.py --base /tmp/toyrun8/toy --work /tmp/levers --mode caption

Results of 2026-11-28 in docs/BENCHMARKS.md ("Why nothing survives CFG 5").
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CAPTION = "a yellow circle on a blue background"  # effect_bench's toy pair
GROUPS = {
    "all": lambda name: True,
    "no attn2 k/v": lambda name: not ("attn2_to_k" in name or "attn2_to_v" in name),
    "attn2 k/v only": lambda name: "attn2_to_k" in name or "attn2_to_v" in name,
}


def condition_on(mode: str) -> str:
    """What the teacher pictures train under: ``[train] caption`` (returned) for ``empty`` and
    ``caption``; for ``mixK`` the trainer's data is extended in this process only."""
    import engine.train.side_run as side_run
    from engine.models.toy_data import all_combinations, is_held_out
    from engine.train.training_data import _prompt_index

    if mode == "empty":
        return ""
    if mode == "caption":
        return CAPTION
    if not mode.startswith("mix"):
        raise SystemExit(f"unknown mode {mode!r}: empty, caption or mixK")
    count = int(mode[3:] or 4)
    trained = [f"a {c} {s} on a {b} background" for c, s, b in all_combinations() if not is_held_out(c, s, b)]
    data_for = side_run.training_data

    def mixed(model, plan, side, log):
        data = data_for(model, plan, side, log)
        rng = random.Random(7)
        extra = [replace(item, cond_index=_prompt_index(data, prompt)) for item in data.items for prompt in rng.sample(trained, count)]
        data.items += extra
        return data

    side_run.training_data = mixed  # what SideRun calls
    return ""


def main(argv: list[str] | None = None) -> int:
    import torch

    from bench.effect_bench import copy_check, toy_project
    from engine.lora.files import load_lora_file, save_lora_file
    from engine.merge.project_result import make_result
    from engine.models.loading import load_base_model
    from engine.models.toy_data import held_out_prompts
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan
    from engine.train.effect import lora_effect
    from engine.train.trainer import train

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="a folder made by bench/pretrain_toy.py (or a built-in model)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--mode", default="empty", help="empty, caption or mixK (e.g. mix4)")
    parser.add_argument("--groups", default="all,no attn2 k/v,attn2 k/v only")
    parser.add_argument("--epochs", type=int, default=200, help="1 picture × 5 repeats × epochs steps per side")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    caption = condition_on(args.mode)
    model = load_base_model(args.base)
    work = args.work / args.mode
    shutil.rmtree(work, ignore_errors=True)
    root = toy_project(work / "source", args.base, args.epochs, args.lr, 0.5, caption)
    project = load_project(root)
    project.train = replace(project.train, resolution=[args.size, args.size])
    project.merge = replace(project.merge, new_rank=16, save_precision="float")
    project.sample = replace(project.sample, size=[args.size, args.size])
    save_project(project)
    plan = make_plan(load_project(root))
    started = time.perf_counter()
    for side in ("a", "b"):
        train(plan, side, model=model, log=lambda line: None)
    print(json.dumps({"mode": args.mode, "train_seconds": round(time.perf_counter() - started, 1)}), flush=True)
    result, _, _ = make_result(plan, device="cpu")
    modules = load_lora_file(result).modules
    prompts = held_out_prompts()[:: max(1, len(held_out_prompts()) // args.prompts)][: args.prompts]
    size = (args.size, args.size)
    rows = []
    for group in args.groups.split(","):
        kept = {name: w for name, w in modules.items() if GROUPS[group](name)}
        path = work / f"result-{len(rows)}.safetensors"
        save_lora_file(path, kept, {}, dtype="float")
        for guidance in (5.0, 1.0):
            report = lora_effect(model, path, prompts, [1], [0.0, 1.0], steps=args.steps, size=size, guidance=guidance)
            rows.append({"mode": args.mode, "group": group, "modules": len(kept), "cfg": guidance, "effect": round(report.effect, 3),
                         "ssim": round(report.collateral_ssim, 3), "saturation": {str(k): round(v, 3) for k, v in report.saturation.items()}})
            print(json.dumps(rows[-1]), flush=True)
    check = copy_check(model, plan.side("a").lora_path, result, plan.side("a").images[0].path, plan.side("b").images[0].path,
                       seed=1, steps=args.steps, size=size, prompt=caption)
    print(json.dumps({"mode": args.mode, "copy_check_psnr": check}), flush=True)
    (work / "levers.json").write_text(json.dumps({"rows": rows, "copy_check_psnr": check, "prompts": prompts}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    sys.exit(main())
