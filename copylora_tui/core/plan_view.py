"""A project's plan as one Rich renderable: what ``copylora check`` prints and what the app's
project screen shows, in the same words. Torch-free; planning reads the pictures' headers, and
``statuses`` (each output's :meth:`status`, which hashes files) are read by the caller, in a
thread in the app.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from engine.formats.model_files import describe_base_model

ROUTES = {
    "svd-merge": "svd-merge: A and B each trained on the base, then +1·B −1·A merged (exact SVD)",
    "differential": "differential: B trains on the base with A applied; B is the result",
    "addift": "addift (ADDifT): one LoRA learns the change from the pair, A and B under one noise; it is the result",
    "slider": "slider (Concept Sliders' image pairs): one LoRA denoises B at +m and A at -m; it is the result",
}


def result_label(method: str) -> str:
    """What the outputs call the result: "merged" when A and B are merged, else "result"."""
    return "merged" if method == "svd-merge" else "result"


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


# each output's state, in its colour
STATE_STYLES = {"current": "green", "stale": "yellow", "missing": "dim", "resumable": "cyan"}


def output_statuses(plan) -> dict:
    """Each output's status (engine.project.outputs), by the name the plan shows it under; a
    side with no current LoRA but a checkpoint `run` continues is "resumable" (the Projects
    list said so while this screen said B· missing)."""
    from copylora_tui.core.projects import RESUMABLE, checkpoint_state
    from engine.project.outputs import Status, artifacts

    statuses = {name: artifact.status() for name, artifact in artifacts(plan).items()}
    for side in plan.trained:
        now = statuses[side.upper()]
        if now.current or (found := checkpoint_state(plan, side)) is None:
            continue
        if found.state == RESUMABLE:
            statuses[side.upper()] = Status(RESUMABLE, found.reason.split(", resumable")[0] + " trained, run continues it")
        else:  # a checkpoint of other settings (run starts over and drops it): said before, not found gone after
            statuses[side.upper()] = Status(now.state, f"{now.reason}; {found.reason}")
    return statuses


SYMBOLS = {"current": "✓", "stale": "↻", "missing": "·", "resumable": "◐"}


def outputs_line(plan, statuses: dict) -> Text:
    """The outputs' states in one line (the app's status, above the pictures): ``A✓ B✓ merged↻ …``
    (✓ current, ↻ stale: run makes it again, · missing, ◐ a checkpoint run continues)."""
    result = result_label(plan.project.info.method)
    line = Text("outputs:", style="bold")
    for key, status in statuses.items():  # fits the app's 40-cell side column
        line.append(f" {result if key == 'result' else key}{SYMBOLS.get(status.state, '?')}", style=STATE_STYLES.get(status.state, ""))
    return line


def _copy_text(params) -> str:
    """The copy checks and the stop rule of one side, in words."""
    from engine.project.copy_rule import stop_rule

    if not params.copy_check_every_n_steps:
        return "not checked (copy_check_every_n_steps = 0); runs the full length"
    rule = stop_rule(params)
    if not rule.active:
        return f"checked every {params.copy_check_every_n_steps} steps; runs the full length (stop_when_copied off)"
    return f"stops when copied: {rule.text()}"


def plan_view(plan, statuses: dict | None = None, *, header: bool = True) -> Group:
    """The plan: base, each side's steps, settings, route, merge, outputs (with their status when
    ``statuses`` is given, see :func:`output_statuses`). Label/value rows whose values wrap in
    their own column, so the app's side panel (about 40 cells) shows the same words as
    ``copylora check`` in a terminal."""
    from engine.project.plan import training_order

    project = plan.project
    root = project.root
    parts: list = []
    if header:  # the app says the project's name in its own header
        parts.append(Text.from_markup(f"[bold]{escape(project.name)}[/bold]  [green]valid[/green]  {escape(str(project.toml_path))}"))
    rows = _Rows()
    base = project.info.base_model
    said = None if base in BUILTIN_DESCRIPTIONS else describe_base_model(project.base_model_path(), project.info.model_family == "auto")
    rows.add("base", f"{BUILTIN_DESCRIPTIONS.get(base, base)}, family {project.info.model_family}" + (f" ({said})" if said else ""))
    for side, p in plan.sides.items():
        if side == "pair":  # the one-LoRA routes' LoRA, shown with its steps below A's and B's pictures
            rows.add("A→B", f"{p.total_steps} steps: one LoRA on the pair (its steps count pairs), batch {p.batch_size}", bold=True)
            continue
        buckets = ", ".join(f"{w}x{h}" for w, h in sorted(set(p.buckets))) or "no picture"
        images = f"{len(p.images)} image{'' if len(p.images) == 1 else 's'}"
        if side not in plan.trained:  # a one-LoRA route's A and B: pictures of the pair, trained together
            rows.add(side.upper(), f"{images}, bucket {buckets}, {_rel(p.folder, root)}/", bold=True)
            continue
        rows.add(side.upper(), f"{p.total_steps} steps ({p.epochs} epochs of {p.steps_per_epoch}): {images} × {p.repeats} repeats, "
                 f"batch {p.batch_size}, bucket {buckets}, {_rel(p.folder, root)}/", bold=True)
        if p.repeats_source != "[train].num_repeats":
            rows.add("", f"repeats from {p.repeats_source}")
        if p.batch_size > 1 and len(p.epoch_buckets) > 1:  # why the epoch is more steps than items / batch
            counts = ", ".join(f"{n} at {w}x{h}" for (w, h), n in p.epoch_buckets)
            rows.add("", f"a batch holds one bucket: an epoch's {counts} make {p.steps_per_epoch} batches")
    settings: dict[str, list[str]] = {}
    for side in plan.trained:
        params = plan.side(side).params
        rank = f"rank {params.network_dim} alpha {params.network_alpha:g}"
        if params.conv_dim:
            rank += f", conv {params.conv_dim} alpha {params.conv_alpha:g}"
        precision = "fp32" if params.mixed_precision == "no" else params.mixed_precision
        line = f"{params.optimizer_type} lr {params.learning_rate:g} {params.lr_scheduler}, {rank}, {precision}, seed {params.seed}"
        settings.setdefault(line, []).append("A→B" if side == "pair" else side.upper())
    for line, sides in settings.items():  # one row when A and B train alike (the usual case)
        rows.add(" and ".join(sides), line)
    copies: dict[str, list[str]] = {}
    one_lora = plan.trained == ("pair",)  # addift, slider: no copier LoRA, so no copy checks
    for side in plan.trained if not one_lora else ():
        copies.setdefault(_copy_text(plan.side(side).params), []).append(side.upper())
    for line, sides in copies.items():
        rows.add("copy", line if len(copies) == 1 else f"{' and '.join(sides)}: {line}")
    _kohya_options(plan, rows)
    merge = project.merge
    rows.add("route", ROUTES[project.info.method])
    rows.add("training", training_order(plan))
    # the 3x3 conv rank only where a side trains 3x3 convs (conv_dim): "(3x3 conv 16)" beside conv_dim = 0 read as if it did
    convs = any(plan.side(side).params.conv_dim for side in plan.trained)
    conv = f" (3x3 conv {merge.new_conv_rank or merge.new_rank})" if convs else ""
    if one_lora:
        p = plan.side("pair").params
        rows.add("", f"trains at ±{p.pair_multiplier:g} (pair_multiplier), timesteps {p.min_timestep}–{p.max_timestep}"
                 + (" swept" if project.info.method == "addift" else ""))
        rows.add("result", f"the LoRA at {p.pair_multiplier:g}, so strength 1 applies the change once; re-ranked to at most "
                 f"{merge.new_rank}{conv}, saved {merge.save_precision}")
    elif project.info.method == "differential":
        how = "merged into the base weights" if project.b.merge_base_weights else "as a frozen LoRA"
        rows.add("", f"B trains with A at {project.b.base_weights_multiplier:g} applied {how}")
        rows.add("result", f"B itself, re-ranked to at most {merge.new_rank}{conv}, saved {merge.save_precision}")
    else:
        b_ratio, a_ratio = merge.ratios
        rows.add("merge", f"{b_ratio:+g}·B {a_ratio:+g}·A → rank {merge.new_rank}{conv}, {merge.precision} math, "
                 f"saved {merge.save_precision}")
    parts.append(rows.table)
    if project.reg is not None:
        parts += _concepts(plan)
    parts += _outputs(plan, statuses)
    return Group(*parts)


class _Rows:
    """Label/value rows: the label column as wide as its longest label, the values wrapping."""

    def __init__(self) -> None:
        self.table = Table.grid(padding=(0, 2, 0, 0))
        self.table.add_column(no_wrap=True)
        self.table.add_column()

    def add(self, label: str, value: str, *, bold: bool = False) -> None:
        self.add_text(label, Text(value, style="bold" if bold else ""))

    def add_text(self, label: str, value: Text) -> None:
        self.table.add_row(Text(label, style="bold"), value)


def _outputs(plan, statuses: dict | None) -> list:
    """Each output: its name, its state (why, when stale) and its file under the output folder."""
    project, outputs = plan.project, plan.outputs
    rows = _Rows()
    result = result_label(project.info.method)
    shown = [(side.upper(), side.upper(), outputs.lora(side)) for side in plan.trained]
    shown += [(result, "result", outputs.result),
             ("stats", "stats", outputs.stats), ("grid", "grid", outputs.grid)]
    if project.info.method == "differential":
        shown.append(("check", "check", outputs.check))
    states = {key: _state_text(statuses[key]) for _, key, _ in shown if statuses and key in statuses}
    width = max((len(state) for state in states.values()), default=0)
    for label, key, path in shown:
        state = states.get(key)
        value = Text() if state is None else state + Text(" " * (width - len(state) + 2))  # the files in one column
        rows.add_text(label, value + Text(_rel(path, outputs.folder), style="dim"))
    return [Text(f"outputs in {_rel(outputs.folder, project.root)}/", style="bold"), rows.table]


def _state_text(status) -> Text:
    why = f": {status.reason}" if status.state in ("stale", "resumable") and status.reason else ""  # "missing" says it all
    if status.state == "current" and getattr(status, "note", ""):
        why = f": {status.note}"
    return Text(f"{status.state}{why}", style=STATE_STYLES.get(status.state, ""))


def _kohya_options(plan, rows: _Rows) -> None:
    """[train] network_weights (the LoRA a side starts from) and TensorBoard logs, per side."""
    from engine.project.network_weights import network_weights_path
    from engine.project.training_logs import logs_folder, tensorboard_wanted

    project = plan.project
    starts: dict[str, list[str]] = {}  # one row for A and B when they say the same
    for side, p in plan.sides.items():
        start = network_weights_path(project, side)
        if start is not None:
            starts.setdefault(f"{_rel(start, project.root)} (network_weights)", []).append(side.upper())
    for line, sides in starts.items():
        rows.add(" and ".join(sides), f"start{'' if len(sides) > 1 else 's'} from {line}")
    folders = [_rel(logs_folder(project, side), project.root) + "/" for side, p in plan.sides.items() if tensorboard_wanted(p.params)]
    if folders:
        rows.add("logs", f"loss and lr of each step for TensorBoard: {', '.join(folders)}")


def _concepts(plan) -> list:
    """[reg] projects: each concept's pictures, prompt and steps per epoch, then the class folders."""
    from engine.project.plan import concept_rows

    reg = plan.project.reg
    root = plan.project.root
    prior = f"prior preservation (weight {reg.prior_loss_weight:g})" if reg.folder else 'no class pictures (reg.folder = "")'
    heading = Text(f"dreambooth  {prior}; "
                   f"captions from {reg.caption_extension} files where a prompt says [filewords]")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("concept", "folder", "images", "repeats", "steps/epoch", "prompt"):
        table.add_column(column, justify="right" if column in ("images", "repeats", "steps/epoch") else "left")
    for row in concept_rows(plan):
        images = str(row["images"]) + (f" ({row['to_generate']} to generate)" if row.get("to_generate") else "")
        steps = "paired" if row.get("is_reg") else str(row["steps_per_epoch"])
        table.add_row(escape(row["concept"]), escape(_rel(Path(row["folder"]), root) + "/"), images, str(row["repeats"]), steps,
                      escape(repr(row["prompt"])))
    return [heading, table]
