"""Entry point of the ``copylora`` command.

Exit codes: 0 ok, 2 usage or validation error (the input can be fixed), 1 the work failed.
Errors are printed as one clear line each; ``--debug`` adds the traceback. Nothing here
imports torch: commands that need it import their engine module when they run, so
``copylora --help`` and the app start fast.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from typing import Callable

from copylora_tui.cli.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: F401 (tests import them here)
from copylora_tui.cli.help_format import ParagraphHelpFormatter
from engine import __version__
from engine.errors import CopyloraError, InputError, Problem, ValidationError, os_error_text

# The commands that do torch work in this process: each sizes torch's thread pool to the cores
# that are free before torch loads (engine/threads.py). The others (queue, logs, run, check…)
# never import torch and skip the 0.3 s load sample.
WORKING_COMMANDS = {"train", "sample", "merge", "resize", "bake", "extract"}

DESCRIPTION = """\
Make copy-machine LoRAs (コピー機LoRA) for Stable Diffusion: train one LoRA on picture A and
one on picture B (the same picture changed only in the wanted way), then merge +1·B −1·A into
a LoRA that applies just that change (or, by the differential route, train B on the base with A
applied: B is the result). Run with no command to open the terminal app."""

EPILOG = """\
examples:
  copylora new mono --a colour.png --b gray.png   make projects/mono
  copylora check mono                             validate, show the plan
  copylora import-kohya my_kohya.json --into projects/mono

environment:
  COPYLORA_HOME            queue, worker, job logs (~/.local/state/copylora)
  COPYLORA_CACHE           the built-in models' cache (~/.cache/copylora)
  COPYLORA_THREADS         torch threads a job (default: free cores / jobs)
  COPYLORA_CLIP_TOKENIZER  tokenizer/ folder for single files, offline
  COPYLORA_FONT            .ttf/.otf/.ttc for labels the built-in font lacks
  COPYLORA_KEYMAP          the app's keys (~/.config/copylora/keymap.toml)
  COPYLORA_IMAGES          1 or 0: pictures in the terminal, or not (auto)
  COPYLORA_WARM_START      0: each job starts cold, importing torch (1)
  COPYLORA_ROOM_WAIT_S     seconds to wait for room on a full disk (1800)
  COPYLORA_SLURM_SQUEUE_EVERY_S  Slurm: seconds between squeue calls (5)
  COPYLORA_SLURM_GONE_AFTER_S    Slurm: grace (s) for a job squeue drops (60)
"""


_NUMBER = r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
NUMBERS = re.compile(rf"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(\s*,\s*{_NUMBER})*,?$")


class Parser(argparse.ArgumentParser):
    """argparse that exits with 2 and one line on a usage error (argparse's own convention).

    Flags are spelled one way, kohya's (``--save_to``, ``--max_steps``: what users' batch files
    carry over from sd-scripts); the other spelling of a flag (``--max-steps``) is taken as a
    hidden alias, and so are the names in ``hidden_aliases`` (an old flag's new name)."""

    hidden_aliases: dict[str, str]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_aliases = {}
        # A value that starts with a minus is an option to argparse unless it is one number:
        # `sample --strengths -1,0,1` (the way to look at a slider or a difference LoRA) said
        # "expected one argument". A list of numbers is a value too (no flag looks like one).
        self._negative_number_matcher = NUMBERS


    def error(self, message: str) -> None:  # type: ignore[override]
        import re

        # `new mono --a -dash.png`: argparse takes the value for an option and says "expected one
        # argument" after the flag the user did give one to
        args = getattr(self, "_args", [])
        if (flag := re.fullmatch(r"argument (--?\w+)(?:/\S+)?: expected one argument", message)) and flag[1] in args[:-1]:
            value = args[args.index(flag[1]) + 1]
            if value.startswith("-") and value not in self._option_string_actions:
                message += f" ({value} starts with '-': write {flag[1]}={value} or {flag[1]} ./{value})"
        self.exit(EXIT_USAGE, f"copylora: error: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        args = sys.argv[1:] if args is None else list(args)
        self._args = args  # for error()
        return super().parse_known_args([self._canonical(a) for a in args], namespace)

    def _canonical(self, arg: str) -> str:
        """``--max-steps`` (or ``--max-steps=4``) as this parser's ``--max_steps``; anything else as
        it is (values, flags it knows, and unknown flags, which argparse then reports)."""
        if not arg.startswith("--") or arg == "--":
            return arg
        flag, eq, value = arg.partition("=")
        if flag in self._option_string_actions:
            return arg
        for spelling in (self.hidden_aliases.get(flag), flag.replace("-", "_").replace("__", "--", 1)):
            if spelling and spelling in self._option_string_actions:
                return spelling + eq + value
        return arg


def build_parser() -> argparse.ArgumentParser:
    from copylora_tui.cli import (
        bake_commands,
        merge_commands,
        project_commands,
        queue_commands,
        sample_command,
        train_command,
    )

    parser = Parser(
        prog="copylora",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=ParagraphHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"copylora {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--projects", metavar="DIR", default="projects", help="folder of concept projects (default: ./projects)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    project_commands.register(commands)
    train_command.register(commands)
    merge_commands.register(commands)
    bake_commands.register(commands)
    sample_command.register(commands)
    queue_commands.register(commands)
    for command in commands.choices.values():
        _take_global_options(command)
    return parser


def _take_global_options(command: argparse.ArgumentParser) -> None:
    """``--projects`` and ``--debug`` after the command too: `copylora new --projects ~/loras mono`
    said "unrecognized arguments: --projects mono". Unset there (SUPPRESS), they leave the value
    given before the command, or its default, as it is."""
    group = command.add_argument_group("global options (also before the command)")
    group.add_argument("--projects", metavar="DIR", default=argparse.SUPPRESS, help="folder of concept projects (default: ./projects)")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")


def as_flags(call, flags: set[str], names: dict[str, str] | None = None):
    """Run ``call()``; the engine's problems name its parameters (``save_to``), the user typed
    flags (``--save_to``): rename the ones in ``flags`` (or in ``names``, for others)."""
    try:
        return call()
    except ValidationError as exc:
        names = {**{f: f"--{f}" for f in flags}, **(names or {})}
        raise ValidationError([Problem(names.get(p.where, p.where), p.message) for p in exc.problems], exc.source) from None


class UsageError(InputError):
    """A command line that names something that is not there (``copylora logs 99``): the
    input to fix, exit 2, said in one line."""


def validation_text(exc: ValidationError) -> str:
    """One problem in one line (``--save_to: …``); several as the engine lists them."""
    if len(exc.problems) == 1:
        return f"{exc.source}: {exc.problems[0]}" if exc.source else str(exc.problems[0])
    return str(exc)


def _removed_folder_text(exc: OSError) -> str | None:
    """What a bare "No such file or directory" (no file named) meant, when it was that the
    shell's current folder was removed after it entered it and a relative path was asked for."""
    if not isinstance(exc, FileNotFoundError) or exc.filename:
        return None
    import os

    try:
        os.getcwd()
    except FileNotFoundError:
        return "the current folder was removed after this shell entered it: cd to a folder that exists (or give absolute paths)"
    return None


def run_guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args) or EXIT_OK
    except ValidationError as exc:
        print(f"copylora: {validation_text(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as exc:  # a flag, picture, LoRA or base model that cannot be used: the input to fix
        print(f"copylora: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CopyloraError as exc:
        print(f"copylora: error: {exc}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return EXIT_FAILED
    except BrokenPipeError:
        # `copylora queue --json | head`: the reader left; stop quietly like other CLI tools.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("copylora: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # the system said no: a read-only folder, a full disk, a name too long
        if args.debug:
            traceback.print_exc()
        print(f"copylora: error: {_removed_folder_text(exc) or os_error_text(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug: still one line, the traceback on request
        if args.debug:
            traceback.print_exc()
        print(f"copylora: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    from copylora_tui.cli.terminal_text import guarded_output

    parser = build_parser()
    with guarded_output():  # argparse echoes what was typed: a pasted escape sequence too
        args = parser.parse_args(argv)
    if args.command is None:
        if problem := _no_terminal():
            print(problem, file=sys.stderr)
            return EXIT_USAGE
        from copylora_tui.teacher_images import start_preload

        start_preload()  # asks the terminal about pictures while Textual is imported
        from copylora_tui.app import run_app

        return run_guarded(lambda a: run_app(projects_dir=a.projects), args)
    with guarded_output():  # on a terminal, a name from a shared project cannot drive it (terminal_text)
        return _command(args)


def _no_terminal() -> str | None:
    """Why the app cannot open here, or None. `ssh box copylora` (no -t), a cron job or a Slurm
    batch script that ran `copylora` drew the app into a pipe or a file and waited for keys from
    nowhere until it was killed."""
    from copylora_tui.cli.terminal_text import is_terminal

    missing = [name for name, stream in (("input", sys.stdin), ("output", sys.stdout)) if not is_terminal(stream)]
    if not missing:
        # TERM=dumb: Emacs' shell-mode, an IDE's console; the app drew full-screen colour escapes into it as text
        if os.environ.get("TERM") == "dumb":
            return ("copylora: the app needs a terminal that draws (TERM=dumb here, e.g. Emacs' shell or an IDE's console); "
                    "run it in a terminal (in Emacs: vterm or ansi-term), or use the commands (`copylora --help`: run, queue, logs, …)")
        return None
    return (f"copylora: the app needs a terminal, and this {' and '.join(missing)} is not one; over SSH: `ssh -t HOST copylora`; "
            "in a script, use the commands (`copylora --help`: run, queue, logs, …)")


def _command(args: argparse.Namespace) -> int:
    from engine.quiet import quiet_libraries

    quiet_libraries()  # every command: library chatter (e.g. bitsandbytes' import warning) is not the user's output
    if args.command in WORKING_COMMANDS:
        from engine.threads import configure_threads

        choice = configure_threads(log=lambda line: print(f"copylora: {line}", file=sys.stderr))
        if args.command == "train":  # the long one: say the width, as a job's log does
            print(f"copylora: {choice.describe()}", file=sys.stderr)
    from copylora_tui.cli.project_args import resolve_project_arguments

    resolve_project_arguments(args)  # `copylora check mono` after `copylora new mono`: projects/mono
    return run_guarded(args.func, args)


def console() -> int:
    """The ``copylora`` command: :func:`main` in a process of its own, so diffusers loads without
    the bitsandbytes and PEFT integrations no command uses (engine.lean_imports: ~1.2 s of a
    `train`, `sample` or `merge` start). Not in :func:`main`, which a caller's process may run."""
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()
    _tolerate_narrow_encodings()
    return main()


def _tolerate_narrow_encodings() -> None:
    """On a terminal or pipe whose encoding is not UTF-8 (a legacy locale such as ja_JP.eucJP or
    en_US.ISO-8859-1, PYTHONIOENCODING=ascii), a character it cannot hold is written as "?"
    instead of ending the command: every command, `--help` included, stopped with a
    UnicodeEncodeError at the first "·", "━" or "コピー機"."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):  # a closed or detached stream: nothing to write to anyway
                pass


if __name__ == "__main__":
    sys.exit(console())
