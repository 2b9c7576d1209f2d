"""The copy-machine effect, measured on a toy model made by bench/pretrain_toy.py (a CPU, minutes).

For each route (svd-merge, differential) A and B are trained once on the toy world's one pair
(A: a yellow circle on blue, colours whose luminances differ; B: its exact grayscale; 64×64,
under its caption, as `copylora new --base toy` makes it; ``--project projects/example-toy`` for
the example's four pairs; ``--epochs``/``--lr``/``--noise-offset``/``--caption`` change its settings
to try the levers; or any ``--project``); the result is made at each new rank
(4, 8, 16); each result is sampled on held-out prompts (combinations the toy model never saw)
× seeds at strengths 0, 0.5 and 1, the same seed along a row, at each CFG of ``--guidance``
(5 and 7: 7 is what SD1.5 users sample at), and measured with :mod:`engine.train.effect`:

- effect: mean saturation at strength 1 ÷ at strength 0 (goal ≤ 0.35);
- collateral: luminance SSIM, strength 1 vs 0 (goal ≥ 0.8);
- copy check: PSNR of A at 1 (on the pair's caption, or the empty prompt) vs picture A, and of A at 1 + the result at 1 vs
  picture B;
- per prompt colour: the effect over the pictures whose prompt names that colour as the
  background's, and as the shape's (which colours go and which stay), a second Markdown table.

``--prompt-reference ", monochrome"`` adds the yardstick: the base asked for the change in words
(each prompt + the suffix, same seed) measured as if it were a LoRA at strength 1 — the
collateral of a base that knows the change (on the toy: SSIM 0.57 at CFG 7, about a LoRA's).
``--sampler`` draws every picture with another sampler (Euler a, the default, is ancestral).

    OMP_NUM_THREADS=1 python bench/effect_bench.py --base /tmp/toy --out /tmp/effect.json
    OMP_NUM_THREADS=2 python bench/effect_bench.py --base /tmp/toy --threads 2 --prompts 8 --seeds 1 --ranks 16   # quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def quiet(_line: str) -> None:
    pass


def copy_check(model, a_lora: Path | None, result: Path, picture_a: Path, picture_b: Path, *, seed: int, steps: int, size,
               guidance: float = 5.0, prompt: str = "", sampler: str = "euler_a") -> dict:
    """PSNR of A at 1 vs picture A and of A at 1 + result at 1 vs picture B, on the prompt the
    pair trained under (``[train] caption``; the empty prompt when caption-free). The one-LoRA
    routes train no A (``a_lora`` None): the base stands in for it."""

    from engine.lora.network import LoRANetwork
    from engine.train.effect import generate_rows, psnr

    a_network = LoRANetwork.from_file(a_lora, model.unet, model.text_encoders, model.family) if a_lora is not None else None
    result_network = LoRANetwork.from_file(result, model.unet, model.text_encoders, model.family)
    if a_network is not None:
        a_network.apply_to()
    try:
        (a_alone, a_with_result), = generate_rows(model, result_network, [prompt], [seed], [0.0, 1.0], steps=steps, size=size,
                                                       guidance=guidance, sampler=sampler).values()
    finally:
        if a_network is not None:
            a_network.remove()
    from engine.project.images import load_picture  # the teachers as training saw them

    return {"A vs picture A": psnr(a_alone, load_picture(picture_a)), "A + result vs picture B": psnr(a_with_result, load_picture(picture_b))}


EXAMPLE = REPO / "projects" / "example-toy"


def toy_project(dest: Path, base: str, epochs: int | None = None, lr: float | None = None, noise_offset: float | None = None,
                caption: str | None = None) -> Path:
    """The toy world's one pair (projects/example-toy's first: a yellow circle on blue, and its
    grayscale) as `copylora new --base toy` makes it (under its caption, 1000 steps a side at
    lr 2e-3: the example of runs 9–28 in docs/BENCHMARKS.md), in ``dest`` on ``base``, with the
    settings given here instead. The example itself (four pairs) is ``--project projects/example-toy``."""
    from engine.project.folder import load_project, save_project
    from engine.project.scaffold import create_project

    root = dest / "toy-monochrome"
    project = create_project(root, EXAMPLE / "a" / "colour.png", EXAMPLE / "b" / "monochrome.png", base_model="toy",
                             caption="a yellow circle on a blue background")
    changes = {"max_train_epochs": epochs, "learning_rate": lr, "noise_offset": noise_offset, "caption": caption}
    project.info = replace(project.info, base_model=str(base))
    project.merge = replace(project.merge, new_rank=16)  # the example's, when it was this pair
    project.train = replace(project.train, save_every_n_steps=0, **{k: v for k, v in changes.items() if v is not None})
    save_project(project)
    return load_project(root).root


def run_route(method: str, source: Path, work: Path, ranks: list[int], prompts: list[str], seeds: list[int], steps: int,
              model, guidance: tuple[float, ...] = (5.0,), settings: dict | None = None,
              block_weights: dict[str, list] | None = None, base_pictures: dict | None = None, sampler: str = "euler_a") -> list[dict]:
    """Train ``method`` on ``source`` (with ``settings``, [train] keys, instead of its own), make
    the result at each rank (and with each of ``block_weights``, named LBW vectors applied to
    both LoRAs: which blocks carry the change that reaches other prompts), measure it at each CFG.
    ``base_pictures`` (a dict kept across calls on one model): the strength-0 pictures, drawn once."""
    from engine.merge.project_result import make_result
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan
    from engine.train.effect import lora_effect
    from engine.train.trainer import train

    root = work / method
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("output"))
    project = load_project(root)
    project.info = replace(project.info, method=method)
    if settings:
        project.train = replace(project.train, **settings)
    save_project(project)
    plan = make_plan(load_project(root))
    started = time.perf_counter()
    steps_trained = 0
    if plan.trained == ("pair",):
        from engine.train.pair_training import train_pair

        steps_trained = train_pair(plan, model=model, log=quiet).step
    else:
        for side in ("a", "b"):
            steps_trained += train(plan, side, model=model, log=quiet).step
    trained = time.perf_counter() - started
    size = tuple(plan.project.sample.size)
    rows = []
    variants = [(rank, name, vector) for rank in ranks for name, vector in ({"": []} | (block_weights or {})).items()]
    for rank, blocks, vector in variants:
        project = load_project(root)
        project.merge = replace(project.merge, new_rank=rank, save_precision="float", lbws=[vector] if vector else [])
        save_project(project)
        plan = make_plan(load_project(root))
        lora, _, _ = make_result(plan, device="cpu")
        for cfg in guidance:
            base = base_pictures.setdefault((steps, size, cfg, sampler), {}) if base_pictures is not None else None
            report = lora_effect(model, lora, prompts, seeds, [0.0, 0.5, 1.0], steps=steps, size=size, guidance=cfg, base_pictures=base,
                                 sampler=sampler)
            a_lora = None if plan.trained == ("pair",) else plan.side("a").lora_path
            check = copy_check(model, a_lora, lora, plan.side("a").images[0].path, plan.side("b").images[0].path,
                               seed=seeds[0], steps=steps, size=size, guidance=cfg, prompt=first_prompt(plan), sampler=sampler)
            rows.append({"route": method, "settings": settings or {}, "steps_trained": steps_trained, "new_rank": rank, "guidance": cfg,
                         "blocks": blocks, "block_weights": vector, "sampler": sampler,
                         "caption": first_prompt(plan), "pictures": len(plan.side("a").images),
                         "effect": report.effect, "collateral_ssim": report.collateral_ssim,
                         "saturation": {str(k): v for k, v in report.saturation.items()}, "pairs": report.pairs,
                         "per_colour": report.per_colour, "copy_check_psnr": check, "train_seconds": round(trained, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def prompt_reference(model, suffix: str, prompts: list[str], seeds: list[int], steps: int, guidance: tuple[float, ...],
                     base_pictures: dict, sampler: str = "euler_a", size: tuple[int, int] = (64, 64)) -> list[dict]:
    """The base asked for the change in words (each prompt + ``suffix``, e.g. ", monochrome",
    on the same seed) measured as a LoRA at strength 1 is: what a base that knows the change does
    to its pictures, the yardstick for a LoRA's collateral on this base."""
    from engine.train.effect import generate_rows, measure_effect

    rows = []
    for cfg in guidance:
        sampling = {"steps": steps, "size": size, "guidance": cfg, "sampler": sampler}
        plain = generate_rows(model, None, prompts, seeds, [0.0], base_pictures=base_pictures.setdefault((steps, size, cfg, sampler), {}),
                              **sampling)
        asked = generate_rows(model, None, [p + suffix for p in prompts], seeds, [0.0], **sampling)
        report = measure_effect({(p, seed): [plain[(p, seed)][0], asked[(p + suffix, seed)][0]] for p, seed in plain}, [0.0, 1.0])
        rows.append({"route": "base", "settings": {}, "steps_trained": 0, "new_rank": "—", "guidance": cfg, "blocks": "", "block_weights": [],
                     "sampler": sampler, "prompt_suffix": suffix, "pictures": 0, "effect": report.effect,
                     "collateral_ssim": report.collateral_ssim, "saturation": {str(k): v for k, v in report.saturation.items()},
                     "pairs": report.pairs, "per_colour": report.per_colour, "copy_check_psnr": {}, "train_seconds": 0})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def first_prompt(plan) -> str:
    """The prompt A's first picture trained under: [train] caption, or with [reg] its instance
    prompt with that picture's caption in place of [filewords] (several captioned pairs)."""
    from engine.project.concepts import resolve_prompt

    reg = plan.project.reg
    if reg is None:
        return plan.side("a").params.caption
    return resolve_prompt(reg.instance_prompt, plan.side("a").images[0].path, reg.caption_extension)


def markdown(rows: list[dict]) -> str:
    lines = ["| route | setting | steps | train s | new rank | CFG | effect (S₁/S₀, goal ≤ 0.35) | collateral SSIM (goal ≥ 0.8) | "
             "S at 0 / 0.5 / 1 | PSNR A vs A | PSNR A+result vs B |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    def number(value, form: str) -> str:
        return "—" if value is None else format(value, form)

    for r in rows:
        s, check = r["saturation"], r.get("copy_check_psnr") or {}
        saturations = " / ".join(number(s.get(k), ".3f") for k in ("0.0", "0.5", "1.0"))
        lines.append(f"| {r['route']} | {setting_label(r)} | {r.get('steps_trained', '?')} | {r.get('train_seconds', '?')} | {r['new_rank']} | "
                     f"{r['guidance']:g} | {r['effect']:.3f} | {r['collateral_ssim']:.3f} | {saturations} | "
                     f"{number(check.get('A vs picture A'), '.1f')} dB | {number(check.get('A + result vs picture B'), '.1f')} dB |")
    return "\n".join(lines) + "\n\n" + colour_markdown(rows)


def setting_label(r: dict) -> str:
    """What a row changed from the project as given, in a few words (both tables name rows by it)."""
    shown = [f"{k} {v}" for k, v in r.get("settings", {}).items() if k != "max_train_epochs"]
    shown += ["caption-free"] if r.get("caption") == "" else []
    shown += [f"{r['pictures']} pairs"] if r.get("pictures", 1) > 1 else []
    shown += [f"blocks {r['blocks']}"] if r.get("blocks") else []
    shown += [f"sampler {r['sampler']}"] if r.get("sampler", "euler_a") != "euler_a" else []
    shown += [f"prompt + {r['prompt_suffix']!r} as strength 1"] if r.get("prompt_suffix") else []
    return ", ".join(shown) or "the example's"


def colour_markdown(rows: list[dict]) -> str:
    """Per prompt colour, each row's effect (S₁/S₀) over the pictures naming it as the
    background's colour, then as the shape's: which colours go and which stay."""
    colours = [c for c in (rows[0].get("per_colour") or {})] if rows else []
    if not colours:
        return ""
    head = "| route | setting | new rank | CFG | " + " | ".join(colours) + " |"
    lines = ["Per prompt colour, effect S₁/S₀ as background / as shape:", "", head,
             "|---|---|---:|---:|" + "---:|" * len(colours)]

    def cell(entry: dict | None) -> str:
        return "—" if not entry else f"{entry['effect']:.2f}"

    for r in rows:
        per = r.get("per_colour") or {}
        cells = [f"{cell(per.get(c, {}).get('background'))} / {cell(per.get(c, {}).get('shape'))}" for c in colours]
        lines.append(f"| {r['route']} | {setting_label(r)} | {r['new_rank']} | {r['guidance']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_settings(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs as [train] values (TOML-typed: 200, 1e-3, "plateau"; a bare word is a string)."""
    import tomllib

    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            settings[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key.strip()] = value
    if "max_train_steps" in settings:
        settings.setdefault("max_train_epochs", None)
    return settings


def parse_block_weights(pairs: list[str], parser: argparse.ArgumentParser) -> dict[str, list]:
    """``NAME=VECTOR`` pairs as named LBW vectors (checked here, before any training: a bad one is one line)."""
    from engine.lbw_vectors import BlockWeightError, parse_lbw

    vectors = {}
    for index, pair in enumerate(pairs):
        name, _, vector = pair.partition("=")
        if not name.strip() or not vector.strip():
            parser.error(f"--lbws {pair!r}: give NAME=VECTOR, e.g. out=[0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1]")
        if name.strip() in vectors:  # a second vector of one name would silently replace the first row
            parser.error(f"--lbws {pair!r}: the name {name.strip()!r} is given twice")
        try:
            vectors[name.strip()] = list(parse_lbw(vector, f"--lbws[{index}]"))
        except BlockWeightError as exc:
            parser.error(str(exc))
    return vectors


def main(argv: list[str] | None = None) -> int:
    import torch

    from engine.models.loading import load_base_model
    from engine.models.toy_data import held_out_prompts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, help="a project to train (default: the toy world's pair, made here)")
    parser.add_argument("--epochs", type=int, help="of the default project (the one pair): 1 image × 5 repeats × epochs steps (200)")
    parser.add_argument("--lr", type=float, help="of the default project (the example's)")
    parser.add_argument("--noise-offset", type=float,
                        help="of the default project ([train] noise_offset, the example's 0.5): a toy model pretrained with offset "
                             "noise needs it too, or the LoRA also learns to read the colour from the noise")
    parser.add_argument("--caption", help='of the default project ([train] caption, the example\'s; "" = caption-free)')
    parser.add_argument("--routes", default="svd-merge,differential", help="svd-merge, differential, addift, slider (comma-separated)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a [train] key for every route trained here (a TOML value: --set max_train_steps=200 --set "
                             "min_timestep=500); repeatable")
    parser.add_argument("--lbws", action="append", default=[], metavar="NAME=VECTOR",
                        help="also make each result with this LoRA Block Weight vector on both LoRAs ([merge] lbws; 17 or 26 "
                             "weights, e.g. out=[0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1]): which blocks' change reaches other "
                             "prompts; repeatable, named in the tables")
    parser.add_argument("--ranks", default="4,8,16")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--guidance", default="5,7",
                        help="CFG scales, comma-separated: each result is sampled at each (7 is what SD1.5 users sample at; "
                             "1 = no guidance: a caption-free LoRA acts on the empty prompt, which CFG extrapolates away from)")
    parser.add_argument("--sampler", default="euler_a",
                        help="the sampler of every picture ([sample] sampler's names; euler_a, the default, is ancestral: a "
                             "deterministic one such as dpmpp_2m_karras shows how much of the collateral is the sampler's)")
    parser.add_argument("--prompt-reference", metavar="SUFFIX",
                        help='also measure the base asked for the change in words (each prompt + SUFFIX, e.g. ", monochrome", as '
                             "strength 1): the collateral of a base that knows the change, the yardstick for a LoRA's")
    parser.add_argument("--routes-off", action="store_true", help="train nothing (with --prompt-reference: the reference alone)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tables", type=Path, nargs="+", metavar="JSON",
                        help="print the Markdown tables of earlier --out files together (one table: every route and setting) and exit")
    parser.add_argument("--base", help="a folder made by bench/pretrain_toy.py (or a built-in model)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.tables:
        rows = [row for path in args.tables for row in json.loads(path.read_text())["rows"]]
        print(markdown(rows))  # the per-colour table is in it
        return 0
    if not args.base:
        parser.error("--base is needed to measure (or --tables to print earlier results)")
    block_weights = parse_block_weights(args.lbws, parser)
    from engine.project.params import canonical_sampler, sampler_hint

    sampler = canonical_sampler(args.sampler)
    if sampler is None:
        parser.error(f"--sampler {args.sampler!r}: unknown{sampler_hint(args.sampler)}")
    torch.set_num_threads(args.threads)
    model = load_base_model(args.base)
    prompts = held_out_prompts()[:: max(1, len(held_out_prompts()) // args.prompts)][: args.prompts]
    seeds = list(range(1, args.seeds + 1))
    rows: list[dict] = []
    base_pictures: dict = {}  # the base's pictures (strength 0), drawn once for every route and rank
    with tempfile.TemporaryDirectory() as work:
        source = args.project or toy_project(Path(work) / "source", args.base, args.epochs, args.lr, args.noise_offset,
                                                    args.caption)
        settings = parse_settings(args.set)
        if args.prompt_reference:
            from engine.project.folder import load_project

            rows += prompt_reference(model, args.prompt_reference, prompts, seeds, args.steps, tuple(float(g) for g in args.guidance.split(",")),
                                     base_pictures, sampler, tuple(load_project(source).sample.size))
        for method in ([] if args.routes_off else args.routes.split(",")):
            rows += run_route(method, source, Path(work), [int(r) for r in args.ranks.split(",")], prompts, seeds, args.steps, model,
                              tuple(float(g) for g in args.guidance.split(",")), settings, block_weights, base_pictures, sampler)
    text = markdown(rows)
    print(text)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "prompts": prompts, "seeds": seeds}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    sys.exit(main())
