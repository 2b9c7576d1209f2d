"""Does the live copy figure tell when a side is copied? Validated over the checkpoints of one run.

The toy world's one pair (bench/effect_bench.py's ``toy_project``: projects/example-toy's first
pair, 1000 steps a side, under its caption) is trained once as
the queue trains it (A and B as one batch), with copy checks every ``--every`` steps (the live
figure, :mod:`engine.train.copy_check`) and a LoRA snapshot of each side at each check. Then,
for every snapshot:

- the live figure as the run logged it;
- the sampled copy check: the side's LoRA at strength 1 on its training prompt, sampled as
  the effect benchmark does (``--seeds`` seeds at CFG ``--guidance``), PSNR against its teacher
  picture;
- every ``--effect-every`` steps: the result of that step's A and B (the project's merge) on
  held-out prompts: effect (saturation at 1 ÷ at 0) and collateral (luminance SSIM).

It prints the Spearman rank correlation of the live figure with the sampled one per side, and,
for stop rules judged on the live history as the trainer judges them, the step each would stop
at and the effect there. The run with checks is the run without them (checks touch neither the
weights nor the random stream), so a rule's LoRA is the snapshot of its step.

    OMP_NUM_THREADS=1 python bench/copy_fidelity_bench.py --base toy --out /tmp/copy.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.effect_bench import toy_project  # noqa: E402

CHECK_LINE = re.compile(r"copy check at step (\d+): A (-?[\d.]+) dB B (-?[\d.]+) dB")


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (ties: average ranks)."""
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else float("nan")


def train_with_snapshots(root: Path, every: int, model) -> tuple[dict[int, tuple[float, float]], float]:
    """Train A and B together with copy checks and a snapshot of each side every ``every``
    steps; the live figures ({step: (A, B)}) and the training seconds."""
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan
    from engine.train.controls import TrainControls
    from engine.train.twin import train_twin

    project = load_project(root)
    project.train = replace(project.train, copy_check_every_n_steps=every, save_every_n_steps=0)
    save_project(project)
    plan = make_plan(load_project(root))
    live: dict[int, tuple[float, float]] = {}
    due = {"save": False}

    def log(line: str) -> None:
        found = CHECK_LINE.search(line)
        if found:
            live[int(found.group(1))] = (float(found.group(2)), float(found.group(3)))

    def on_progress(p) -> None:
        due["save"] = p.step % every == 0

    def save_requested() -> bool:
        asked, due["save"] = due["save"], False
        return asked

    started = time.perf_counter()
    train_twin(plan, model=model, controls=TrainControls(on_progress=on_progress, save_requested=save_requested), log=log)
    return live, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    import torch

    from engine.lora.network import LoRANetwork
    from engine.merge.svd import merge_loras, save_merge
    from engine.models.loading import load_base_model
    from engine.models.toy_data import held_out_prompts
    from engine.project.folder import load_project
    from engine.project.images import load_picture
    from engine.project.plan import make_plan
    from engine.train.effect import generate_rows, lora_effect, psnr

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="toy")
    parser.add_argument("--epochs", type=int, help="of the one pair (1 image × 5 repeats × epochs steps; its default: 200)")
    parser.add_argument("--caption", help='of the one pair ([train] caption; "" = caption-free, the published method)')
    parser.add_argument("--keep", type=Path, help="keep the trained project (its snapshots) in this folder")
    parser.add_argument("--every", type=int, default=50, help="copy checks and snapshots every N steps")
    parser.add_argument("--effect-every", type=int, default=100, help="the effect of A and B merged every N steps")
    parser.add_argument("--seeds", type=int, default=8, help="seeds of the sampled copy check")
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts of the effect (× 2 seeds)")
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--sample-steps", type=int, default=20, help="sampling steps of every picture drawn (the tests draw with few)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.sample_steps < 1:
        parser.error(f"--sample-steps must be 1 or more, got {args.sample_steps}")
    torch.set_num_threads(args.threads)
    model = load_base_model(args.base)
    prompts = held_out_prompts()[:: max(1, len(held_out_prompts()) // args.prompts)][: args.prompts]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        root = toy_project(Path(work), args.base, args.epochs, caption=args.caption)
        live, seconds = train_with_snapshots(root, args.every, model)
        plan = make_plan(load_project(root))
        size = tuple(plan.project.sample.size)
        caption = plan.side("a").params.caption
        pictures = {side: plan.side(side).images[0].path for side in ("a", "b")}
        seeds = list(range(1, args.seeds + 1))
        for step in sorted(live):
            row: dict = {"step": step, "live": {"a": live[step][0], "b": live[step][1]}, "sampled": {}}
            snaps = {side: plan.outputs.step_snapshot(side, step) for side in ("a", "b")}
            for side in ("a", "b"):
                network = LoRANetwork.from_file(snaps[side], model.unet, model.text_encoders, model.family) if step else None
                if network is not None:
                    network.apply_to()
                try:
                    drawn = generate_rows(model, None, [caption], seeds, [0.0], size=size, guidance=args.guidance, steps=args.sample_steps)
                finally:
                    if network is not None:
                        network.remove()
                teacher = load_picture(pictures[side])
                row["sampled"][side] = sum(psnr(image, teacher) for (image,) in drawn.values()) / len(drawn)
            if step and step % args.effect_every == 0:
                merged = merge_loras([snaps["b"], snaps["a"]], list(plan.project.merge.ratios), new_rank=plan.project.merge.new_rank,
                                     device="cpu")
                result, _ = save_merge(merged, Path(work) / f"result-{step}.safetensors", "float")
                report = lora_effect(model, result, prompts, [1, 2], [0.0, 0.5, 1.0], size=size, guidance=args.guidance, steps=args.sample_steps)
                row["effect"], row["collateral_ssim"] = report.effect, report.collateral_ssim
            rows.append(row)
            print(json.dumps(row), flush=True)
        summary = summarise(rows, args.every)
        for rule in summary["rules"]:  # the pair a run under the rule ends with: each side's snapshot at its own stop
            stops = rule["stops"]
            merged = merge_loras([plan.outputs.step_snapshot("b", stops["b"]), plan.outputs.step_snapshot("a", stops["a"])],
                                 list(plan.project.merge.ratios), new_rank=plan.project.merge.new_rank, device="cpu")
            result, _ = save_merge(merged, Path(work) / f"result-{stops['a']}-{stops['b']}.safetensors", "float")
            report = lora_effect(model, result, prompts, [1, 2], [0.0, 0.5, 1.0], size=size, guidance=args.guidance, steps=args.sample_steps)
            rule["effect"], rule["collateral_ssim"] = report.effect, report.collateral_ssim
            print(json.dumps(rule), flush=True)
    summary.update({"train_seconds": round(seconds, 1), "guidance": args.guidance, "sample_steps": args.sample_steps,
                    "caption": args.caption, "epochs": args.epochs,
                    "seeds": args.seeds, "prompts": len(prompts), "base": args.base})
    print(markdown(rows, summary))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")
    return 0


def summarise(rows: list[dict], every: int) -> dict:
    from engine.project.copy_rule import StopRule

    out: dict = {"spearman": {}, "rules": []}
    trained = [r for r in rows if r["step"] > 0]
    for side in ("a", "b"):
        sampled = [r["sampled"][side] for r in trained]
        out["spearman"][side] = spearman([r["live"][side] for r in trained], sampled)
    rules = [StopRule(every, plateau=True), StopRule(every, plateau=True, gain_db=0.1, window=3),
             StopRule(every, plateau=True, gain_db=0.3, window=4)]
    effects = {r["step"]: r for r in rows if "effect" in r}
    for rule in rules:
        stops = {}
        for side in ("a", "b"):
            history = [(r["step"], r["live"][side]) for r in rows]
            ends = [end for end in range(2, len(history) + 1) if rule.reached(history[:end]) is not None]  # never at step 0
            stops[side] = history[ends[0] - 1][0] if ends else rows[-1]["step"]
        out["rules"].append({"rule": rule.text(), "stops": stops})
    out["effect_by_step"] = {step: [r["effect"], r["collateral_ssim"]] for step, r in effects.items()}
    return out


def markdown(rows: list[dict], summary: dict) -> str:
    lines = ["| step | live A dB | live B dB | sampled A dB | sampled B dB | effect S₁/S₀ | SSIM |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        effect = f"{r['effect']:.3f}" if "effect" in r else ""
        ssim = f"{r['collateral_ssim']:.3f}" if "effect" in r else ""
        lines.append(f"| {r['step']} | {r['live']['a']:.2f} | {r['live']['b']:.2f} | {r['sampled']['a']:.2f} | {r['sampled']['b']:.2f} "
                     f"| {effect} | {ssim} |")
    lines.append("")
    lines.append(f"Spearman (live vs sampled, trained checkpoints): A {summary['spearman']['a']:.2f}, B {summary['spearman']['b']:.2f}")
    for rule in summary["rules"]:
        lines.append(f"rule {rule['rule']}: stops A at {rule['stops']['a']}, B at {rule['stops']['b']}: "
                     f"effect {rule.get('effect', float('nan')):.3f}, SSIM {rule.get('collateral_ssim', float('nan')):.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    sys.exit(main())
