"""``copylora new``, ``check`` and ``import-kohya``: concept-project commands (no torch)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from engine.errors import Problem, ValidationError
from engine.project.params import METHODS


def register(commands: argparse._SubParsersAction) -> None:
    new = commands.add_parser(
        "new",
        help="create a concept project from two teacher images",
        description="Create a concept project folder: copylora.toml (commented) plus a/ and b/ with copies of the images.",
    )
    new.add_argument("name", metavar="NAME", help="project name; created under --projects unless it is a path")
    new.add_argument("--a", required=True, metavar="IMG", help="teacher image A (the original picture)")
    new.add_argument("--b", required=True, metavar="IMG", help="teacher image B (the same picture, changed)")
    new.add_argument("--base", default="tiny", metavar="MODEL", help=f"base model: {_builtin_help()}, a .safetensors checkpoint or a diffusers folder "
                     "(default: tiny)")
    new.add_argument("--method", choices=METHODS, default="svd-merge",
                     help="svd-merge: train A and B on the base, merge +1·B −1·A (default); "
                          "differential: train B on the base with A applied, B is the result; "
                          "addift, slider: one LoRA trained on the pair (ADDifT, Concept Sliders' image pairs), in far fewer steps")
    new.set_defaults(func=cmd_new)

    check = commands.add_parser(
        "check",
        help="validate a project and show its plan",
        description="Validate a project (every problem at once) and print the derived plan: steps, buckets, outputs.",
    )
    check.add_argument("project", metavar="PROJECT", help="project folder (or its copylora.toml), or the NAME of one under --projects")
    check.add_argument("--json", action="store_true", help="print the plan as JSON")
    check.set_defaults(func=cmd_check)

    keymap = commands.add_parser(
        "keymap",
        help="print the app's key bindings as a keymap file to edit",
        description="Print every key binding of the app (id, keys, screen) as a keymap.toml to start from; "
                    "the app reads it from ~/.config/copylora/keymap.toml ($COPYLORA_KEYMAP for another file).",
    )
    keymap.set_defaults(func=cmd_keymap)

    imp = commands.add_parser(
        "import-kohya",
        help="read kohya_ss / sd-scripts settings into a project's [train]",
        description=(
            "Read a kohya_ss GUI .json config, an sd-scripts --config_file TOML or an sd-scripts dataset TOML. "
            "Every key is reported as used, ignored (with the reason) or unknown. Without --into, print the [train] table."
        ),
    )
    imp.add_argument("config", metavar="CONFIG", help="kohya_ss .json or sd-scripts .toml")
    imp.add_argument("--into", metavar="PROJECT", help="project to update (validated, then written atomically)")
    imp.add_argument("--quiet", action="store_true", help="do not print the key report")
    imp.set_defaults(func=cmd_import_kohya)


# What each built-in base model is, for `new --help`; the list itself is the engine's, so a
# model added there is listed even before it gets its words here.
BUILTIN_WORDS = {
    "tiny": "random weights, SD1.5 layout",
    "tiny-sdxl": "random weights, SDXL layout",
    "toy": "draws 64x64 coloured shapes",
}


def _builtin_help() -> str:
    from engine.formats.model_files import BUILTIN_MODELS

    return ", ".join(f'"{name}" ({BUILTIN_WORDS[name]})' if name in BUILTIN_WORDS else f'"{name}"' for name in BUILTIN_MODELS)


def project_dest(name: str, projects_dir: str) -> Path:
    return Path(name) if ("/" in name or name.startswith(".")) else Path(projects_dir) / name


def cmd_new(args: argparse.Namespace) -> int:
    from copylora_tui.cli.main import as_flags
    from engine.models.toy import new_project_caption
    from engine.project.scaffold import TOY_CAPTION_WHY, create_project

    empty = [Problem(flag, "is empty") for flag, value in (("NAME", args.name), ("--base", args.base)) if not str(value).strip()]
    if empty:  # "" named the projects folder itself ("already exists") and the current folder as a base
        raise ValidationError(empty)
    dest = project_dest(args.name, args.projects)
    names = {"dest": "NAME", "a_image": "--a", "b_image": "--b", "base_model": "--base"}
    caption = new_project_caption(args.base, args.a)
    project = as_flags(lambda: create_project(dest, args.a, args.b, name=Path(args.name).name, base_model=args.base,
                                              method=args.method, caption=caption), set(), names)
    shown = _relative(project.root)
    print(f"created {shown}/ (A: {args.a}, B: {args.b}, base: {project.info.base_model}, route: {project.info.method})")
    if project.train.caption:  # what the project holds (a route's preset may leave it caption-free: addift on the toy)
        print(f"A and B train under the caption {project.train.caption!r} ({TOY_CAPTION_WHY}); [train] caption changes it")
    elif caption:
        print(f"A and B train caption-free, as the {project.info.method} route's preset for this base has it; [train] caption changes it")
    print(f"edit {shlex.quote(f'{shown}/copylora.toml')}, then: copylora check {shlex.quote(str(shown))}")  # pasted into a shell as shown
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from copylora_tui.core.plan_view import output_statuses
    from engine.project.folder import load_project
    from engine.project.outputs import artifacts
    from engine.project.plan import make_plan, plan_warnings

    try:
        plan = make_plan(load_project(args.project))
    except ValidationError as exc:
        if args.json:  # a script reading stdout gets the verdict there too, with every problem
            print(json.dumps({"valid": False, "source": exc.source,
                              "problems": [{"where": p.where, "message": p.message} for p in exc.problems]}, indent=2))
        raise
    warnings = plan_warnings(plan)
    from engine.project.names import namesakes

    same = namesakes(plan.project.root, plan.project.name)
    if same:  # beside it only: the app's form and the job log need not read every other project
        warnings.append(f"project.name: {plan.project.name!r} is also the name of {', '.join(f'{f.name}/' for f in same[:3])} "
                        f"beside it (a copied project keeps its [project] name): their LoRAs and grids have the same file names "
                        f"({plan.project.name}_A.safetensors …); set [project] name in {plan.project.toml_path}")
    from engine.train.rescue import rescue_folder, rescued_files

    if rescued := rescued_files(plan.project.root):  # said once in a failed job's error; never cleaned by copylora
        warnings.append(f"trainings of this project whose folder failed left their weights in {rescue_folder(plan.project.root)} "
                        f"({', '.join(p.name + '/' for p in rescued[:3])}{' …' if len(rescued) > 3 else ''}: one folder per attempt): "
                        "put them back (README, Troubleshooting) or delete them")
    statuses = output_statuses(plan)  # what `run` would make again, and why
    if args.json:
        outputs = {name: {"path": str(artifact.path), "state": statuses[name].state, "reason": statuses[name].reason,
                          **({"note": statuses[name].note} if statuses[name].note else {})}
                   for name, artifact in artifacts(plan).items()}
        print(json.dumps({"valid": True, **plan_as_dict(plan), "outputs": outputs, "warnings": warnings}, indent=2))
    else:
        from copylora_tui.cli.console import output_console
        from copylora_tui.core.plan_view import plan_view

        output_console().print(plan_view(plan, statuses))
        for warning in warnings:  # valid, and it will train; probably not as meant
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_keymap(args: argparse.Namespace) -> int:
    from copylora_tui.app import binding_owners
    from copylora_tui.core.keymap import default_keymap_text

    print(default_keymap_text(binding_owners()), end="")
    return 0


def cmd_import_kohya(args: argparse.Namespace) -> int:
    from engine.project.kohya_import import apply_import, format_report, import_kohya

    result = import_kohya(args.config)  # the file's problems first, then the project's
    into = None
    if args.into is not None:  # read again with the project's family, where the file does not say it (an sdxl_train_network config)
        from engine.formats.model_files import peek_family
        from engine.project.folder import load_project

        into = load_project(args.into)
        family = into.info.model_family if into.info.model_family != "auto" else peek_family(into.base_model_path())
        result = import_kohya(args.config, family)
    if not args.quiet:
        print(format_report(result), file=sys.stderr)
    if args.into is None:
        from engine.project.kohya_import import concept_tables
        from engine.project.toml_writer import toml_value

        print("[train]")
        for key, value in result.train.items():
            print(_toml_line(key, value, toml_value))
        for table, heading in [(name, name) for name in ("project", "b", "reg", "sample") if result.extra.get(name)] + [
                (name, "[concept]") for name in concept_tables(result.extra)]:
            print(f"\n[{heading}]")
            for key, value in result.extra[table].items():
                print(_toml_line(key, value, toml_value))
        return 0
    from engine.project.folder import save_project

    assert into is not None
    path = save_project(apply_import(into, result))
    print(f"updated {_relative(path)} ({import_summary(into, result)})")
    return 0


def import_summary(before, result) -> str:
    """What an import changed, table by table: a second import replaced the concepts added in the
    app since, and said only "4 [train] keys"."""
    from engine.project.kohya_import import concept_tables

    parts = [f"{len(result.train)} [train] key{'s' * (len(result.train) != 1)}"]
    parts += [f"[{name}] {', '.join(result.extra[name])}" for name in ("project", "b", "reg", "sample") if result.extra.get(name)]
    concepts = concept_tables(result.extra)
    if concepts:
        replaced = f", replacing the project's {len(before.concepts)}" if before.concepts else ""
        parts.append(f"{len(concepts)} [[concept]] table{'s' * (len(concepts) != 1)}{replaced}")
    return "; ".join(parts)


def _toml_line(key: str, value, toml_value) -> str:
    """One key of the printed tables. None is what the import *unsets* (kohya's
    max_train_epochs chosen, so max_train_steps is cleared): TOML has no null, so it is
    written as the project file writes an unset key, commented out, and the text still pastes."""
    if value is None:
        return f"# {key} =   (unset)"
    return f"{key} = {toml_value(value)}"


def plan_as_dict(plan) -> dict:
    from engine.project.copy_rule import stop_rule
    from engine.project.network_weights import network_weights_path
    from engine.project.plan import concept_rows, training_order
    from engine.project.training_logs import logs_folder, tensorboard_wanted

    project = plan.project
    return {
        "name": project.name,
        "project_file": str(project.toml_path),
        "base_model": project.info.base_model,
        "model_family": project.info.model_family,
        "sides": {
            side: {
                "folder": str(p.folder),
                "images": [{"path": str(i.path), "width": i.width, "height": i.height} for i in p.images],
                "buckets": [list(b) for b in p.buckets],
                "repeats": p.repeats,
                "repeats_source": p.repeats_source,
                "batch_size": p.batch_size,
                "steps_per_epoch": p.steps_per_epoch,
                "epochs": p.epochs,
                "total_steps": p.total_steps,
                "lora": str(p.lora_path),
                "run_dir": str(p.run_dir),
                "network_weights": _optional_path(network_weights_path(project, side)),
                "tensorboard_logs": str(logs_folder(project, side)) if tensorboard_wanted(p.params) else None,
                "copy_check_every_n_steps": p.params.copy_check_every_n_steps,
                "stop_when_copied": stop_rule(p.params).text(),
            }
            for side, p in plan.sides.items()
        },
        "merge": {
            "ratios": project.merge.ratios,
            "new_rank": project.merge.new_rank,
            "new_conv_rank": project.merge.new_conv_rank or project.merge.new_rank,
            "output": str(plan.merged_path),
            "stats": str(plan.stats_path),
        },
        "samples_dir": str(plan.samples_dir),
        **({"concepts": concept_rows(plan)} if project.reg is not None else {}),
        "method": project.info.method,
        "training": training_order(plan),
        **({"base_weights": {"lora": str(plan.side("a").lora_path), "multiplier": project.b.base_weights_multiplier,
                             "merged": project.b.merge_base_weights}} if project.info.method == "differential" else {}),
    }


def _optional_path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):  # elsewhere; or the current folder was removed: the path as it is
        return str(path)


__all__ = ["register", "Problem", "ValidationError"]
