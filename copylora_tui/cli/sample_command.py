"""``copylora sample``: a strength-comparison grid of a project's LoRA (or any LoRA file)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from copylora_tui.cli.inputs import device_name
from engine.errors import Problem, ValidationError


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "sample",
        help="preview grid: same prompt and seed at LoRA strengths 0 … 1",
        description=(
            "Generate one image per (prompt, strength) with the same seed and combine them into a labelled grid PNG "
            "(parameters in its PNG text). TARGET is a project (its [sample] settings; the merged LoRA unless --lora) "
            "or a LoRA file (then --base is needed)."
        ),
    )
    cmd.add_argument("target", metavar="PROJECT|LORA")
    cmd.add_argument("--lora", metavar="merged|a|b|pair|none|FILE",
                     help="with a project: which LoRA (default merged; pair: the one LoRA of the addift and slider routes)")
    cmd.add_argument("--base", metavar="MODEL", help="base model for a LoRA file (tiny, .safetensors or diffusers folder)")
    cmd.add_argument("--prompt", action="append", metavar="P", help="prompt (repeat for several rows)")
    cmd.add_argument("--negative", metavar="N", help="negative prompt")
    cmd.add_argument("--strengths", metavar="0,0.5,1", help="comma-separated LoRA strengths")
    cmd.add_argument("--seed", type=int)
    cmd.add_argument("--steps", type=int)
    cmd.add_argument("--guidance", type=float)
    cmd.add_argument("--size", metavar="WxH", help="picture size, e.g. 832x1216, or one number for a square (default: [sample] size)")
    cmd.add_argument("--sampler", help="euler_a, euler, ddim, dpmsolver++, dpmpp_2m_karras, dpmpp_sde_karras, pndm, lms, heun, "
                     'dpm_2, dpm_2_a, dpmsolver, dpmsingle (or A1111\'s and kohya\'s names, e.g. "DPM++ 2M Karras", k_euler_a)')
    cmd.add_argument("--clip_skip", type=int, metavar="N",
                     help="the CLIP layer prompts are read from, A1111's clip skip (default: the project's [train] clip_skip, as it "
                          "trained; 1 for a LoRA file)")
    cmd.add_argument("--save_to", metavar="PNG", help="output file, as every command names it (default: the project's output/samples/)")
    cmd.hidden_aliases["--out"] = "--save_to"  # its name before flags were spelled one way
    cmd.add_argument("--device", type=device_name, default="auto", help="auto, cpu or cuda")
    cmd.set_defaults(func=cmd_sample)


def _settings(args: argparse.Namespace, base, problems: list[Problem]):
    """Flags over [sample] (or over the defaults for a bare LoRA file), checked by the rules a
    project's [sample] obeys: `--size 0x0`, `--guidance nan` or an empty `--strengths` reached the
    model (or drew nothing) where the same values in the TOML were refused."""
    from engine.project.folder import sample_table_problems

    table = {name: getattr(base, name) for name in SAMPLE_FLAGS}
    if args.prompt:
        table["prompts"] = list(args.prompt)
    if args.negative is not None:
        table["negative_prompt"] = args.negative
    if args.strengths is not None:
        try:
            items = args.strengths.split(",")
            # "0,,1" (a value typed over, a shell variable empty) is a mistake, not a request for
            # two columns: it drew two, the missing one without a word. A trailing comma is fine.
            if items and not items[-1].strip():
                items.pop()
            table["strengths"] = [float(s) for s in items]
        except ValueError:
            problems.append(Problem("--strengths", f"must be numbers separated by commas, got {args.strengths!r}"))
    for name in ("seed", "steps", "guidance", "sampler"):
        if getattr(args, name) is not None:
            table[name] = getattr(args, name)
    if args.size:
        try:
            sides = [int(v) for v in args.size.lower().split("x")]
            if len(sides) not in (1, 2):
                raise ValueError
            table["size"] = sides * (3 - len(sides))  # "512": square, as [sample] size = 512 reads
        except ValueError:
            problems.append(Problem("--size", f"must be WIDTHxHEIGHT or one number for a square, got {args.size!r}"))
    if args.clip_skip is not None and not 1 <= args.clip_skip <= 12:
        problems.append(Problem("--clip_skip", f"must be between 1 and 12, got {args.clip_skip}"))
    elif args.clip_skip is not None:
        base = replace(base, clip_skip=args.clip_skip)
    params, found = sample_table_problems(table)
    for problem in found:  # sample.strengths[1] -> --strengths: what the user typed (a bad format kept [sample]'s value)
        key = problem.where.removeprefix("sample.").split("[")[0]
        problems.append(Problem(SAMPLE_FLAGS.get(key, key), problem.message))
    if params is None:
        return base
    return replace(base, **{name: getattr(params, name) for name in SAMPLE_FLAGS})


# SampleSettings' fields and the flags that set them.
SAMPLE_FLAGS = {"prompts": "--prompt", "negative_prompt": "--negative", "seed": "--seed", "steps": "--steps",
                "guidance": "--guidance", "size": "--size", "strengths": "--strengths", "sampler": "--sampler"}


def resolve(args: argparse.Namespace):
    """(base model spec, family, LoRA path or None, settings, output path); every problem at once."""
    from copylora_tui.cli.inputs import destination_problem, lora_problem
    from engine.project.outputs import grid_name
    from engine.train.sample import SampleSettings

    problems: list[Problem] = []
    inputs: tuple[Path | str, ...] = ()
    extra: dict | None = None  # what the grid records beyond its settings (the project's preview: engine.project.outputs.Grid)
    target = Path(args.target)
    if target.is_dir() or target.name == "copylora.toml":
        from engine.project.folder import load_project
        from engine.project.outputs import Grid
        from engine.project.plan import make_plan

        # --save_to elsewhere writes nothing into the project: a read-only one (a mount, another user's) samples too
        plan = make_plan(load_project(target, writing=args.save_to is None))
        project = plan.project
        own = SampleSettings.from_params(project.sample, plan.side(plan.trained[0]).params.clip_skip)  # the training's clip skip
        settings = _settings(args, own, problems)
        choice = args.lora or "merged"
        trained = {side: plan.side(side).lora_path for side in plan.trained}  # a, b; or pair (addift, slider: one LoRA)
        lora = {"merged": plan.merged_path, **trained, "none": None}.get(choice, Path(choice))
        if choice in ("a", "b", "pair") and choice not in trained:
            problems.append(Problem("--lora", f"this project's route ({project.info.method}) trains "
                                    + ("one LoRA on the pair: --lora pair, or merged (its result)" if "pair" in trained
                                       else "A and B: --lora a, b or merged")))
        elif lora is not None and choice not in ("merged", *trained) and (problem := lora_problem("--lora", lora)):
            # a FILE of the user's (a kohya or A1111 LoRA): "train/merge first" was said of a mistyped path
            problems.append(problem)
        elif lora is not None and not lora.is_file():
            problems.append(Problem("--lora", f"{lora} does not exist yet (train/merge first: copylora run {shlex.quote(str(args.target))})"))
        elif lora is not None and (problem := lora_problem("--lora", lora)):  # a picture given as the LoRA: exit 2, before the model loads
            problems.append(problem)
        out = Path(args.save_to) if args.save_to else plan.samples_dir / grid_name(lora if lora is not None else Path("base"))
        managed = Grid(plan)
        if _same_file(out, managed.path):
            if settings == own:  # the project's own preview: drawn now, current
                extra = managed.record()
            elif not args.save_to:
                # Other settings than [sample]: a grid of its own. Written over the project's, it
                # replaced that grid (and `run` then called it stale and drew it over this one).
                out = plan.samples_dir / f"{lora.stem if lora else 'base'}-sample-{time.strftime('%Y%m%d-%H%M%S')}.png"
        base, family = args.base or project.base_model_path(), project.info.model_family
        # the project's teacher pictures are PNGs too: a grid written over one would replace it
        sides = plan.sides.values()
        inputs += tuple(info.path for sp in sides for info in (*sp.images, *(i for c in sp.concepts for i in c.images)))
    else:
        settings = _settings(args, SampleSettings(), problems)
        lora = target
        if not lora.exists() and not lora.is_symlink():  # a broken link is said as one, below
            problems.append(Problem("PROJECT|LORA", f"no such project folder or LoRA file: {target}"))
        elif problem := lora_problem("PROJECT|LORA", lora):  # a picture, a link to nothing, a pipe: said as what it is
            problems.append(problem)
        if not args.base:
            problems.append(Problem("--base", "a LoRA file needs the base model to sample on (e.g. --base /models/sd15.safetensors)"))
        out = Path(args.save_to) if args.save_to else lora.with_name(grid_name(lora))
        base, family = args.base, "auto"
    if args.save_to and out.suffix.lower() != ".png":
        problems.append(Problem("--save_to", f"the grid is a PNG: give a .png file name, got {args.save_to}"))
    elif problem := destination_problem("--save_to", out, inputs=(*inputs, *([lora] if lora else []), base)):
        problems.append(problem)
    if not problems:  # the canvas with its labels (the flags' own check counts the pictures): before the model loads
        from engine.train.sample import grid_size_problem

        if size := grid_size_problem(settings, lora.name if lora is not None else "none"):
            problems.append(Problem("--strengths", size))
    if problems:
        raise ValidationError(problems)
    return base, family, lora, settings, out, extra


def _same_file(one: Path, other: Path) -> bool:
    try:
        return one.resolve() == other.resolve()
    except (OSError, RuntimeError):
        return False


def cmd_sample(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from copylora_tui.cli.console import output_console

    base, family, lora, settings, out, extra = resolve(args)
    import torch

    from engine.models.loading import load_base_model
    from engine.quiet import quiet_libraries

    quiet_libraries()
    from engine.devices import resolve_device
    from engine.threads import govern
    from engine.train.sample import sample_lora

    device = resolve_device(args.device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = load_base_model(base, family, dtype=dtype, device=device)
    notes: list[str] = []  # said after the progress bar, which would draw over them
    console = output_console(stderr=True)
    with Progress(TextColumn("sample"), BarColumn(), MofNCompleteColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:  # a bar that goes leaves a blank line where nothing redraws it
        task = bar.add_task("", total=len(settings.prompts) * len(settings.strengths))
        path = sample_lora(model, lora, settings, out, model_name=Path(base).name, extra=extra,
                           progress=lambda done, total: (govern(), bar.update(task, completed=done)), log=notes.append)
    for note in notes:
        print(f"copylora: {note}", file=sys.stderr)
    print(f"wrote {path} ({len(settings.prompts)} prompt(s) x strengths {', '.join(f'{s:g}' for s in settings.strengths)}, seed {settings.seed})")
    return 0
