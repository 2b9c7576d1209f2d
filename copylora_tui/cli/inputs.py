"""Checks of a command's files before any work: the LoRAs it reads and the place it writes.

A PNG passed as a LoRA, or an output under a file or on a read-only filesystem, used to be
found when the file was opened or written, seconds or minutes into the work, and reported as
"the work failed" (exit 1) or an internal error. They are the user's input to fix, so they are
problems of the command line (exit 2), said before the work starts. Reads headers only: no torch.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from engine.errors import Problem


def device_name(text: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N, said at the command line (exit 2) rather than
    by torch's "Expected one of cpu, cuda, …" once the model has loaded."""
    value = text.strip().lower()
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"use auto, cpu, cuda or cuda:N, got {text!r}")


def count(text: str) -> int:
    """A count of rows or items: 0 or more (``--top -5`` dropped the last five rows, Python's slicing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def lora_problem(flag: str, path: str | Path) -> Problem | None:
    """Why ``path`` cannot be read as a LoRA file, from its first bytes or its safetensors
    header (as engine.lora.files reads it), or None. Whether its keys make a LoRA the load
    decides; this catches the common mistakes: a picture, a missing or truncated file."""
    from engine.files import input_file_problem
    from engine.formats.safetensors_header import HeaderError, read_header, sniff

    path = Path(path)
    if path.is_dir():
        return Problem(flag, f"{path} is a folder, not a LoRA file")
    if problem := input_file_problem(path):  # missing, a link to nothing or to itself, a pipe
        return Problem(flag, problem)
    if path.suffix.lower() == ".safetensors":
        try:
            read_header(path)
        except HeaderError as exc:
            return Problem(flag, f"{path}: {exc}")
        return None
    kind = sniff(path)  # a .pt/.ckpt LoRA is a pickle or a zip; anything else is a mistake
    if kind is None or not ("pickle" in kind or "zip" in kind):
        return Problem(flag, f"{path}: not a LoRA file ({kind or 'neither safetensors nor a torch checkpoint'})")
    return None


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one existing file (links and hard links included)."""
    try:
        return Path(a).expanduser().samefile(Path(b).expanduser())
    except OSError:  # either does not exist (a built-in model name such as "tiny")
        return False


def destination_problem(flag: str, save_to: str | Path, *, folder: bool = False, inputs: tuple[str | Path | None, ...] = ()) -> Problem | None:
    """Why nothing could be written at ``save_to`` (a file, or a folder to create with
    ``folder``), or None: its parent must be a writable folder or creatable as one (not under
    a file, not on a read-only or kernel filesystem), and it must not be one of the command's
    ``inputs`` (writing the result over the LoRA or model it is made from loses that file).
    Nothing is created."""
    from engine.files import TEMP_NAME_EXTRA, long_name_problem, writable_folder_problem

    path = Path(save_to).expanduser()
    if problem := long_name_problem(path, TEMP_NAME_EXTRA):  # the file, or the folder staged beside it
        return Problem(flag, problem)
    if overwritten := next((source for source in inputs if source and same_file(path, source)), None):
        return Problem(flag, f"{save_to} is this command's input {overwritten}: writing there would lose it; give another file name")
    if not folder and path.is_dir():
        return Problem(flag, f"{save_to} is a folder; give a file name")
    problem = writable_folder_problem(path.parent)
    return Problem(flag, f"cannot write {save_to}: {problem}") if problem else None
