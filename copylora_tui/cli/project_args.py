"""A project named on the command line: its folder as given, or its NAME under ``--projects``.

``copylora new mono …`` makes ``projects/mono``; ``copylora check mono`` then said "mono: no such
project folder", and the user had to learn that every other command wants the path. A bare name
(no path separator) that is nothing here but a folder under ``--projects`` now means that
folder, for every command that takes a project. A path, or a name that exists here, is taken as
given, so nothing that worked before changes meaning.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# The arguments that name a project, by command (stats and sample also take files: a file that
# is here stays itself).
PROJECT_ARGUMENTS = {
    "check": ("project",),
    "train": ("project",),
    "run": ("paths",),
    "merge": ("project",),
    "stats": ("file",),
    "sample": ("target",),
    "import-kohya": ("into",),
}


def project_path(value: str, projects_dir: str) -> str:
    """``value`` itself, or ``projects_dir/value`` when ``value`` is a bare name that is not here
    and is there; either spelled as the folder on disk spells it when that is only another
    Unicode form of the same name (a Japanese folder copied from a Mac, engine.unicode_names)."""
    from engine.unicode_names import spelled_as_on_disk

    if not value or Path(value).exists():
        return value
    if "/" in value or os.sep in value:
        return str(spelled_as_on_disk(value) or value)
    named = Path(projects_dir) / value
    if named.is_dir():
        return str(named)
    for candidate in (Path(value), named):
        if (found := spelled_as_on_disk(candidate)) is not None and found.is_dir():
            return str(found)
    return value


def resolve_project_arguments(args: argparse.Namespace) -> None:
    """Each project argument of the parsed command line made a path (in place)."""
    for name in PROJECT_ARGUMENTS.get(getattr(args, "command", None) or "", ()):
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, project_path(value, args.projects))
        elif isinstance(value, list):
            setattr(args, name, [project_path(v, args.projects) if isinstance(v, str) else v for v in value])
