"""``copylora merge``, ``resize`` and ``stats``.

``merge`` takes kohya sd-scripts' ``svd_merge_lora.py`` flags with the same meanings, so a
batch file works by changing only the program name:

    copylora merge --save_to out.safetensors --models B.safetensors A.safetensors \\
        --ratios 1 -1 --new_rank 16 --device cuda --save_precision fp16
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from copylora_tui.cli.inputs import count, device_name
from engine.errors import Problem, ValidationError

KOHYA_PRECISIONS = ("float", "fp16", "bf16", "fp64")


def register(commands: argparse._SubParsersAction) -> None:
    merge = commands.add_parser(
        "merge",
        help="SVD merge of LoRAs (e.g. +1·B −1·A) into a new rank, exact",
        description=(
            "Merge LoRAs into one of a new rank: per module Σ ratio·ΔW, truncated by an exact low-rank SVD "
            "(no dense matrices). Flags as kohya's svd_merge_lora.py. Writes <save_to> and <stem>.stats.json."
        ),
    )
    merge.add_argument("--project", metavar="DIR", help="merge a project's B and A LoRAs with its [merge] settings (other flags override)")
    merge.add_argument("--save_to", metavar="OUT", help="output .safetensors")
    merge.add_argument("--models", nargs="+", metavar="LORA", help="input LoRA files")
    merge.add_argument("--ratios", nargs="+", type=float, metavar="R", help="one ratio per model (default: 1 each)")
    merge.add_argument("--new_rank", type=int, metavar="N", help="rank of the merged LoRA (default: 4, as kohya; with --project its new_rank)")
    merge.add_argument("--new_conv_rank", type=int, metavar="N", help="rank of 3x3 conv modules (default: new_rank)")
    merge.add_argument("--device", type=device_name, help="cpu, cuda or auto (default: cpu, as kohya; with --project its device)")
    merge.add_argument(
        "--precision", choices=KOHYA_PRECISIONS,
        help="arithmetic precision; fp16/bf16 are accepted for kohya batch files but computed in fp32 (exactness)",
    )
    merge.add_argument("--save_precision", choices=("float", "fp16", "bf16"), help="precision of the saved file (default: float)")
    merge.add_argument(
        "--clamp_quantile", type=float, metavar="Q",
        help="reproduce kohya's clamp of the factors at this quantile (kohya uses 0.99); default: exact, no clamp",
    )
    merge.add_argument(
        "--lbws", nargs="+", metavar="'[1,0,...]'",
        help="LoRA Block Weight vector per model, as kohya's --lbws: each model's change is scaled per block before the merge; "
             "12 or 20 weights (SDXL), 17 or 26 (SD1/SD2), blocks BASE, IN00…, M00, OUT00…; with --project its [merge] lbws",
    )
    merge.set_defaults(func=cmd_merge)

    resize = commands.add_parser(
        "resize",
        help="change a LoRA's rank (exact truncated SVD)",
        description="Re-rank one LoRA (a merge of one input with ratio 1). Writes <save_to> and its .stats.json.",
    )
    resize.add_argument("lora", metavar="LORA")
    resize.add_argument("--new_rank", type=int, required=True, metavar="N")
    resize.add_argument("--new_conv_rank", type=int, metavar="N")
    resize.add_argument("--save_to", metavar="OUT", help="default: <lora stem>_r<N>.safetensors beside the input")
    resize.add_argument("--device", type=device_name, default="cpu")
    resize.add_argument("--save_precision", choices=("float", "fp16", "bf16"), default="fp16")
    resize.set_defaults(func=cmd_resize)

    stats = commands.add_parser(
        "stats",
        help="per-layer table of a merge: energy kept, error, norms, cos(ΔA, ΔB)",
        description="Show the per-module statistics of a merged LoRA (its <stem>.stats.json) and a per-block summary.",
    )
    stats.add_argument("file", metavar="FILE|PROJECT", help="merged LoRA, its .stats.json, or a project folder (its result)")
    stats.add_argument("--sort", choices=("block", "cos", "energy", "error", "name", "norm"), default="energy",
                       help="energy (lowest first), error, norm, cos, name, block (BASE, IN00…, M00, OUT00…)")
    stats.add_argument("--blocks", choices=("lbw", "unet"), default="lbw",
                       help="group by LoRA Block Weight blocks (BASE, IN04, M00, OUT03…; default) or by U-Net level (te, in1, mid, out3…)")
    stats.add_argument("--block", metavar="B", help="only modules of this block or group, in either naming: IN04, OUT, BASE, M00, or te, in1, out3…")
    stats.add_argument("--kind", choices=("linear", "conv1x1", "conv3x3"), help="only this kind of module")
    stats.add_argument("--top", type=count, default=20, metavar="N", help="rows to show (0: all; default 20)")
    stats.add_argument("--json", action="store_true",
                       help="print the selected rows as JSON: block in the --blocks naming, lbw_block and unet_block both")
    stats.set_defaults(func=cmd_stats)


def _check_inputs(paths: list[str], save_to: str, problems: list[Problem], flag: str = "--models") -> None:
    from copylora_tui.cli.inputs import destination_problem, lora_problem

    problems += [p for p in (lora_problem(flag, path) for path in paths) if p]
    if not save_to.lower().endswith(".safetensors"):
        problems.append(Problem("--save_to", f"must end in .safetensors, got {save_to}"))
    elif problem := destination_problem("--save_to", save_to, inputs=tuple(paths)):  # before the work, not when the file is written
        problems.append(problem)


def _run_merge(paths, ratios, *, save_to, new_rank, new_conv_rank, device, precision, save_precision, clamp_quantile, lbws=None,
               route=None):
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from copylora_tui.cli.console import output_console
    from copylora_tui.cli.main import as_flags  # here: main imports this module
    from engine.merge.svd import merge_loras, save_merge

    console = output_console(stderr=True)
    with Progress(TextColumn("merge"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), console=console, transient=True,
                  disable=not console.is_terminal) as bar:  # a bar that goes leaves a blank line where nothing redraws it
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, description=escape(name[-48:]))  # a module's name, from the file

        result = as_flags(lambda: merge_loras(
            paths, ratios, new_rank=new_rank, new_conv_rank=new_conv_rank, device=device,
            precision=precision, clamp_quantile=clamp_quantile, progress=progress, lbws=lbws,
        ), {"ratios", "lbws"})
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if route is not None:  # a project's result, recorded as `copylora run` records it
        from engine.project.outputs import route_metadata

        result.metadata.update(route_metadata(route))
    lora_path, stats_path = save_merge(result, save_to, save_precision, extra={"route": route} if route else None)
    energies = [s.energy_kept for s in result.stats]
    worst = min(result.stats, key=lambda s: s.energy_kept)
    print(
        f"wrote {lora_path} ({len(result.stats)} modules, rank {result.rank}"
        f"{f', conv {result.conv_rank}' if result.conv_rank else ''}, {save_precision}) in {result.seconds:.2f} s; "
        f"energy kept: mean {sum(energies) / len(energies):.4f}, min {worst.energy_kept:.4f} ({worst.name})"
    )
    print(f"stats: {stats_path}  (copylora stats {shlex.quote(str(lora_path))})")
    return 0


def _project_defaults(args: argparse.Namespace) -> None:
    """Fill unset flags from a project's plan and [merge] table: B then A, as the recipe merges."""
    from engine.lbw_vectors import per_model_lbws
    from engine.project.folder import load_project
    from engine.project.outputs import Result
    from engine.project.plan import make_plan

    plan = make_plan(load_project(args.project))
    merge = plan.project.merge
    result = Result(plan)
    paths, ratios = result.inputs()  # [B, A] by the SVD route; [B] alone by the differential one
    if not args.models:  # the project's own result: recorded with its route, as `copylora run` makes it
        if missing := [p for p in paths if not p.exists()]:  # said as the project's state, not as a --models never given
            names = ", ".join(p.name for p in missing)
            raise ValidationError([Problem("--project", f"not trained yet: no {names} in {missing[0].parent}; "
                                                        f"`copylora run {args.project}` trains and merges")])
        args.route = result.route()
        args.lbws = args.lbws or result.lbws()
    args.models = args.models or [str(p) for p in paths]
    args.ratios = args.ratios or ratios
    args.save_to = args.save_to or str(plan.merged_path)
    # `is None`, not `or`: an explicit --new_rank 0 is an error to report, not "unset"
    args.new_rank = merge.new_rank if args.new_rank is None else args.new_rank
    args.new_conv_rank = merge.new_conv_rank if args.new_conv_rank is None else args.new_conv_rank
    args.device = args.device or merge.device
    args.precision = args.precision or merge.precision
    args.save_precision = args.save_precision or merge.save_precision
    args.lbws = args.lbws or per_model_lbws(merge.lbws, len(args.models))


def cmd_merge(args: argparse.Namespace) -> int:
    if args.project:
        _project_defaults(args)
    problems: list[Problem] = []
    if not args.models:
        problems.append(Problem("--models", "give the input LoRAs (or --project DIR)"))
    if not args.save_to:
        problems.append(Problem("--save_to", "give the output file (or --project DIR)"))
    if problems:
        raise ValidationError(problems)
    if args.new_rank is None:
        args.new_rank = 4  # kohya's default
    args.device = args.device or "cpu"
    args.precision = args.precision or "float"
    ratios = args.ratios if args.ratios is not None else [1.0] * len(args.models)
    if len(ratios) != len(args.models):
        problems.append(Problem("--ratios", f"{len(ratios)} ratio(s) for {len(args.models)} model(s): give one per model"))
    for flag, value in (("--new_rank", args.new_rank), ("--new_conv_rank", args.new_conv_rank)):
        if value is not None and value <= 0:
            problems.append(Problem(flag, f"must be greater than 0, got {value}"))
    if any(not math.isfinite(r) for r in ratios):
        problems.append(Problem("--ratios", f"must be finite numbers, got {' '.join(f'{r:g}' for r in ratios)}"))
    if args.clamp_quantile is not None and not 0 < args.clamp_quantile <= 1:
        problems.append(Problem("--clamp_quantile", f"must be in (0, 1] (kohya uses 0.99), got {args.clamp_quantile:g}"))
    lbws = _check_lbws(args.lbws, len(args.models), problems)
    _check_inputs(args.models, args.save_to, problems)
    if problems:
        raise ValidationError(problems)
    precision = "fp64" if args.precision == "fp64" else "float"
    if args.precision in ("fp16", "bf16"):
        print(f"note: --precision {args.precision} is computed in fp32 (the exact merge needs it; the file is saved as --save_precision)", file=sys.stderr)
    return _run_merge(
        args.models, ratios, save_to=args.save_to, new_rank=args.new_rank, new_conv_rank=args.new_conv_rank,
        device=args.device, precision=precision, save_precision=args.save_precision or "float", clamp_quantile=args.clamp_quantile,
        lbws=lbws, route=getattr(args, "route", None),
    )


def _check_lbws(vectors, models: int, problems: list[Problem]) -> list | None:
    """The --lbws vectors parsed (one per model), or None; what is wrong goes to ``problems``.
    Whether their length suits the models' family (SD1/SD2 or SDXL) the merge checks."""
    from engine.lbw_vectors import BlockWeightError, check_lbws

    if not vectors:
        return None
    if len(vectors) != models:
        problems.append(Problem("--lbws", f"{len(vectors)} block-weight vector(s) for {models} model(s): give one per model"))
        return None
    try:
        return check_lbws(vectors, None, "--lbws")
    except BlockWeightError as exc:
        problems.append(Problem(exc.where, exc.message))
        return None


def cmd_resize(args: argparse.Namespace) -> int:
    problems: list[Problem] = []
    if not args.save_to and not Path(args.lora).name:  # "" or "/": nothing to name the output after
        from copylora_tui.cli.inputs import lora_problem

        raise ValidationError([lora_problem("LORA", args.lora) or Problem("LORA", "not a LoRA file")])
    save_to = args.save_to or str(Path(args.lora).with_name(f"{Path(args.lora).stem}_r{args.new_rank}.safetensors"))
    if args.new_rank <= 0:
        problems.append(Problem("--new_rank", f"must be greater than 0, got {args.new_rank}"))
    _check_inputs([args.lora], save_to, problems, flag="LORA")
    if problems:
        raise ValidationError(problems)
    return _run_merge(
        [args.lora], [1.0], save_to=save_to, new_rank=args.new_rank, new_conv_rank=args.new_conv_rank,
        device=args.device, precision="float", save_precision=args.save_precision, clamp_quantile=None,
    )


def _project_stats(path: str) -> str:
    """A project folder stands for its result's stats (``copylora stats projects/mono``)."""
    from pathlib import Path

    from engine.project.folder import PROJECT_FILE

    folder = Path(path)
    if not (folder / PROJECT_FILE).is_file():
        return path
    from engine.project.folder import load_project
    from engine.project.plan import output_paths

    return str(output_paths(load_project(folder, check_files=False, writing=False)).stats)  # read: a read-only project's too


def cmd_stats(args: argparse.Namespace) -> int:
    from copylora_tui.core.stats_table import load_stats, select_rows

    document = load_stats(_project_stats(args.file))
    if args.block is not None and (not args.block.strip() or not select_rows(document, block=args.block, top=0, view=args.blocks)):
        from copylora_tui.core.stats_table import VIEWS, block_filters

        # An unknown block used to print an empty table (exit 0), as if the block had no change.
        names = ", ".join(block_filters(document, args.blocks))
        raise ValidationError([Problem("--block", f"no module of this file is in {args.block!r}; "
                                                  f"its blocks ({VIEWS[args.blocks][0]} naming): {names}")])
    rows = select_rows(document, sort=args.sort, block=args.block, kind=args.kind, top=args.top, view=args.blocks)
    if args.json:
        print(json.dumps([_json_row(row, args.blocks) for row in rows], indent=1))
        return 0
    from copylora_tui.cli.stats_view import print_stats

    print_stats(document, rows, view=args.blocks)
    return 0


def _json_row(row: dict, view: str) -> dict:
    """A module's row as --json gives it: ``block`` in the naming --blocks chose (the table's),
    and both namings by name, so a script need not know which was asked for."""
    from copylora_tui.core.stats_table import block_of

    return {**row, "block": block_of(row, view), "lbw_block": row["lbw_block"], "unet_block": row["block"]}
