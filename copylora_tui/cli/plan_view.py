"""Rich rendering of a project's plan for ``copylora check``."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from copylora_tui.cli.console import output_console

ROUTES = {
    "svd-merge": "svd-merge: A and B each trained on the base, then +1·B −1·A merged (exact SVD)",
    "differential": "differential: B trains on the base with A applied; B is the result",
}


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


BUILTIN_DESCRIPTIONS = {
    "tiny": "tiny (built-in, SD1.5 topology, random weights)",
    "tiny-sdxl": "tiny-sdxl (built-in, SDXL topology, random weights)",
    "toy": "toy (built-in, SD1.5 topology, pretrained on 64x64 coloured shapes)",
}


def print_plan(plan, console: Console | None = None) -> None:
    console = console or output_console()
    project = plan.project
    root = project.root
    base = project.info.base_model
    base_text = BUILTIN_DESCRIPTIONS.get(base, base)
    console.print(f"[bold]{escape(project.name)}[/bold]  [green]valid[/green]  {escape(str(project.toml_path))}")
    console.print(escape(f"base model  {base_text}   family: {project.info.model_family}"))

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("side", "folder", "images", "bucket", "repeats", "batch", "epochs", "steps"):
        table.add_column(column, justify="left" if column in ("side", "folder", "bucket") else "right")
    for side, p in plan.sides.items():
        buckets = ", ".join(f"{w}x{h}" for w, h in sorted(set(p.buckets)))
        table.add_row(side.upper(), _rel(p.folder, root) + "/", str(len(p.images)), buckets,
                      str(p.repeats), str(p.batch_size), str(p.epochs), str(p.total_steps))
    console.print(table)
    lines: dict[str, list[str]] = {}
    for side, p in plan.sides.items():
        params = p.params
        rank = f"rank {params.network_dim} alpha {params.network_alpha:g}"
        if params.conv_dim:
            rank += f", conv {params.conv_dim} alpha {params.conv_alpha:g}"
        precision = "fp32" if params.mixed_precision == "no" else params.mixed_precision
        line = f"{params.optimizer_type} lr {params.learning_rate:g} {params.lr_scheduler}, {rank}, {precision}, seed {params.seed}"
        lines.setdefault(line, []).append(side.upper())
    for line, sides in lines.items():  # one line when A and B train alike (the usual case)
        console.print(f"  {' and '.join(sides)}: {line}")
    for side, p in plan.sides.items():
        if p.repeats_source != "[train].num_repeats":
            console.print(escape(f"  {side.upper()} repeats from {p.repeats_source}"))
    _print_kohya_options(plan, console)
    if project.reg is not None:
        _print_concepts(plan, console)
    merge = project.merge
    from engine.project.plan import training_order

    console.print(f"route     {ROUTES[project.info.method]}")
    console.print(f"training  {escape(training_order(plan))}")
    conv = merge.new_conv_rank or merge.new_rank
    if project.info.method == "differential":
        how = "merged into the base weights" if project.b.merge_base_weights else "as a frozen fp32 LoRA"
        console.print(f"  B trains with A at {project.b.base_weights_multiplier:g} applied {how}")
        console.print(f"result  B itself, re-ranked to at most {merge.new_rank} (3x3 conv {conv}), saved {merge.save_precision}")
    else:
        b_ratio, a_ratio = merge.ratios
        console.print(
            f"merge  {b_ratio:+g}·B {a_ratio:+g}·A → rank {merge.new_rank} (3x3 conv {conv}), "
            f"{merge.precision} math, saved {merge.save_precision}"
        )
    console.print("outputs")
    a, b = plan.side("a"), plan.side("b")
    result = "result" if project.info.method == "differential" else "merged"
    for label, path in (("A", a.lora_path), ("B", b.lora_path), (result, plan.merged_path), ("stats", plan.stats_path), ("previews", plan.samples_dir)):
        console.print(f"  {label:<9}{_rel(path, root)}")


def _print_kohya_options(plan, console: Console) -> None:
    """[train] network_weights (the LoRA a side starts from) and TensorBoard logs, per side."""
    from engine.project.network_weights import network_weights_path
    from engine.project.training_logs import logs_folder, tensorboard_wanted

    project = plan.project
    lines: dict[str, list[str]] = {}  # one line for A and B when they say the same
    for side, p in plan.sides.items():
        start = network_weights_path(project, side)
        if start is not None:
            lines.setdefault(f"starts from {_rel(start, project.root)} (network_weights)", []).append(side.upper())
    for line, sides in lines.items():
        console.print(escape(f"  {' and '.join(sides)} {line.replace('starts', 'start') if len(sides) > 1 else line}"))
    folders = [_rel(logs_folder(project, side), project.root) + "/" for side, p in plan.sides.items() if tensorboard_wanted(p.params)]
    if folders:
        console.print(escape(f"logs      loss and lr of each step for TensorBoard: {', '.join(folders)}"))


def _print_concepts(plan, console: Console) -> None:
    """[reg] projects: each concept's pictures, prompt and steps per epoch, then the class folders."""
    from engine.project.plan import concept_rows

    reg = plan.project.reg
    root = plan.project.root
    console.print(escape(f"dreambooth  prior preservation (weight {reg.prior_loss_weight:g}); "
                         f"captions from {reg.caption_extension} files where a prompt says [filewords]"))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("concept", "folder", "images", "repeats", "steps/epoch", "prompt"):
        table.add_column(column, justify="right" if column in ("images", "repeats", "steps/epoch") else "left")
    for row in concept_rows(plan):
        images = str(row["images"]) + (f" ({row['to_generate']} to generate)" if row.get("to_generate") else "")
        steps = "paired" if row.get("is_reg") else str(row["steps_per_epoch"])
        table.add_row(escape(row["concept"]), escape(_rel(Path(row["folder"]), root) + "/"), images, str(row["repeats"]), steps,
                      escape(repr(row["prompt"])))
    console.print(table)
