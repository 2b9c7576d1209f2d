"""``copylora train``: one side's LoRA (or both, ``--side ab``) in the foreground, with a Rich progress bar.

Ctrl-C or SIGTERM does not kill the run: the trainer finishes its step, writes a resumable
state and stops; ``--resume`` continues it. (Background runs that survive the terminal are the
queue's job: ``copylora run``.)
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys

from copylora_tui.cli.exit_codes import EXIT_INTERRUPTED
from copylora_tui.cli.inputs import device_name


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "train",
        help="train one side's LoRA (or both) in the foreground",
        description=(
            "Train the LoRA of side A or B of a project in this terminal, writing <output>/<name>_A.safetensors "
            "(or _B). Checkpoints go to <output>/runs/A (runs/<name>/A in an output folder outside the project) every "
            "save_every_n_steps; Ctrl-C saves one and stops. "
            "--side ab trains both as one batch of two (twin training), when they train alike. The addift and slider "
            "routes train one LoRA on the pair: --side pair (<name>_PAIR.safetensors)."
        ),
    )
    cmd.add_argument("project", metavar="PROJECT", help="project folder, or the NAME of one under --projects")
    cmd.add_argument("--side", required=True, choices=["a", "b", "ab", "pair", "A", "B", "AB", "PAIR"],
                     help="which teacher image to train on; ab: both, as one batch of two; pair: the addift/slider route's one LoRA")
    cmd.add_argument("--max_steps", type=int, metavar="N", help="train N steps instead of the planned count")
    group = cmd.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    group.add_argument("--restart", action="store_true", help="discard existing checkpoints and start from step 0")
    cmd.add_argument("--device", type=device_name, default="auto", help="auto (cuda if present), cpu, cuda or cuda:N")
    cmd.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from engine.errors import Problem, ValidationError
    from engine.project.folder import load_project
    from engine.project.plan import make_plan

    if args.max_steps is not None and args.max_steps <= 0:
        raise ValidationError([Problem("--max_steps", f"must be greater than 0, got {args.max_steps}")])
    side = args.side.lower()
    plan = make_plan(load_project(args.project), max_steps=args.max_steps)
    method = plan.project.info.method
    if (side == "pair") != (plan.trained == ("pair",)):
        raise ValidationError([Problem("--side", f"the {method} route trains one LoRA on the pair: use --side pair" if side != "pair"
                                       else f"--side pair is the addift and slider routes' one LoRA; the {method} route trains a and b")])
    if side == "ab":
        from engine.project.plan import twin_problem

        problem = twin_problem(plan)
        if problem:
            raise ValidationError([Problem("--side ab", f"A and B cannot train as one batch: {problem}; train --side a, then --side b")])
    if side == "b":
        from engine.project.plan import base_weights_for

        base_weights = base_weights_for(plan, "b")  # the differential route trains B on A's LoRA
        if base_weights is not None and not base_weights.path.is_file():
            raise ValidationError([Problem("--side b", f"the differential route trains B on A's LoRA, and {base_weights.path.name} "
                                           "does not exist yet: train --side a first")])
    finished = _finished_sides(plan, side, args)
    if finished and len(finished) == len(_sides(side)):  # nothing to train, as `copylora run` says "up to date"
        for one, (step, lora) in finished.items():
            print(f"{one.upper()} is already trained: {lora} is up to date (step {step} of {step}); --restart trains it again, "
                  f"or --max_steps N (more than {step}) with --resume trains it on")
        return 0
    if finished:  # --side ab with one side done: the twin batch trains both or neither
        one = next(iter(finished))
        other = "b" if one == "a" else "a"
        raise ValidationError([Problem("--side ab", f"{one.upper()} is already trained (its LoRA is up to date): train --side {other} alone, "
                                                    "or add --restart to train both again")])

    from engine.train.class_images import generate_class_images, missing_class_images

    if missing_class_images(plan.project):  # as the queue's "class images" job does before training
        from engine.quiet import quiet_libraries

        quiet_libraries()
        generate_class_images(plan.project, log=lambda line: print(line, file=sys.stderr))
        plan = make_plan(load_project(args.project), max_steps=args.max_steps)

    stop = {"asked": False}

    def ask_stop(signum, _frame):
        if stop["asked"]:  # second Ctrl-C: the user really wants out now
            raise KeyboardInterrupt
        stop["asked"] = True
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint (again to abort)", file=sys.stderr)

    previous = {s: signal.signal(s, ask_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = _run_with_progress(plan, side, args, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    results = result if isinstance(result, dict) else {side: result}
    first = next(iter(results.values()))
    if first.status == "stopped":
        steps = f" --max_steps {args.max_steps}" if args.max_steps is not None else ""  # without it, on to the plan's count
        print(f"stopped at step {first.step}/{first.total}; continue with: copylora train {shlex.quote(str(args.project))} --side {side}{steps} --resume")
        return EXIT_INTERRUPTED
    for one in results.values():
        # A resume from a finished checkpoint trains no step: it has no loss of its own to show.
        loss = f"final loss {one.final_loss:.4f}" if one.final_loss is not None else "written from its finished checkpoint"
        print(f"wrote {one.lora_path}  ({one.step} steps, {one.seconds:.1f} s, {loss})")
    return 0


def _sides(side: str) -> list[str]:
    """The LoRAs ``--side`` trains: a, b, both, or the one-LoRA routes' pair."""
    return ["pair"] if side == "pair" else list(side)


def _finished_sides(plan, side: str, args: argparse.Namespace) -> dict[str, tuple[int, str]]:
    """Of the sides to train, those whose checkpoint is the finished training and whose LoRA
    is up to date: {side: (step, LoRA path)}. A side with a checkpoint to act on without
    --resume/--restart is refused here, saying what its checkpoint is."""
    from copylora_tui.cli.project_commands import _relative
    from engine.errors import Problem, ValidationError
    from engine.project.outputs import SideLora
    from engine.train.checkpoint import newest_step

    finished: dict[str, tuple[int, str]] = {}
    for one in _sides(side):
        sp = plan.side(one)
        existing = newest_step(sp.run_dir, at_most=sp.total_steps)  # one past the plan is never resumed (SideRun.resume_or_reset)
        if not existing or args.resume or args.restart:
            continue
        if existing < sp.total_steps:
            raise ValidationError([Problem(str(sp.run_dir), f"holds a checkpoint at step {existing} of {sp.total_steps}: "
                                                            "add --resume to continue it or --restart to start over")])
        fresh, reason = SideLora(plan, one).status().pair()
        if not fresh:  # the finished run's LoRA is missing or was made with other settings
            raise ValidationError([Problem(str(sp.run_dir), f"holds {one.upper()}'s finished training (step {existing} of {sp.total_steps}) "
                                                            f"but its LoRA is not up to date ({reason}): add --resume to write it from that checkpoint "
                                                            "(no training when the settings are the checkpoint's), or --restart to train it again")])
        finished[one] = (existing, _relative(sp.lora_path))
    return finished


def _run_with_progress(plan, side: str, args: argparse.Namespace, stop: dict):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from copylora_tui.cli.console import output_console
    from engine.quiet import quiet_libraries
    from engine.threads import govern
    from engine.train.controls import TrainControls
    from engine.train.progress import format_duration
    from engine.train.trainer import train
    from engine.train.twin import train_twin

    quiet_libraries()

    console = output_console(stderr=True)  # full lines when stderr is a file
    columns = (
        TextColumn(f"[bold]{'A+B' if side == 'ab' else 'A→B' if side == 'pair' else side.upper()}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} it/s  ETA {task.fields[eta]}  loss {task.fields[loss]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=plan.side(_sides(side)[0]).total_steps, rate="-", eta="--:--", loss="-")

        def on_progress(p) -> None:
            govern()  # on the training thread: follows other work starting and stopping (engine/threads.py)
            # The trainer's own ETA (windowed it/s), not Rich's: it survives a resume correctly.
            loss = f"{p.smooth_loss:.4f}" if p.smooth_loss_b is None else f"A {p.smooth_loss:.4f} B {p.smooth_loss_b:.4f}"
            if p.copy_db is not None:  # the newest copy check (engine.train.copy_check)
                loss += f"  copy {p.copy_db:.1f} dB" if p.copy_db_b is None else f"  copy A {p.copy_db:.1f} B {p.copy_db_b:.1f} dB"
            bar.update(task, completed=p.step, rate=f"{p.it_per_s:.1f}", eta=format_duration(p.eta_s), loss=loss)

        hooks = dict(resume=args.resume, device=args.device, controls=TrainControls(on_progress=on_progress, should_stop=lambda: stop["asked"]),
                     log=lambda line: bar.console.print(line, highlight=False, markup=False))
        if side == "ab":
            return train_twin(plan, **hooks)
        if side == "pair":
            from engine.train.pair_training import train_pair

            return train_pair(plan, **hooks)
        return train(plan, side, **hooks)
