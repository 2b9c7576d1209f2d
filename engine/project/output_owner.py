"""An output folder shared by several projects (``output_dir = "/data/loras"``, all LoRAs in
one place, as kohya users keep them) keeps each project's checkpoints apart, and refuses two
projects of one name.

Measured before: projects p1 and p2 with one absolute output_dir shared ``runs/A``. p2's
training found p1's checkpoints and offered to write p2's LoRA from them (`--resume`); its
`--restart` would have deleted them; and the two could not train at once (one side lock). Now
a project whose output folder is outside its own folder keeps its run folders in
``runs/NAME/`` (kohya names its state folders after the output name too; a project's own
``output/`` keeps ``runs/A``, so copying a project folder copies its checkpoints with it).
Two projects of one [project] name in one shared folder would still write the same files:
``runs/NAME/project`` records whose they are, and another project of that name is refused
(at check, and when its training starts), unless the first one's folder is gone (moved: the
new place takes over).
"""

from __future__ import annotations

import os
from pathlib import Path

OWNER_FILE = "project"


def shared_output(root: Path, output: Path) -> bool:
    """Whether ``output`` is outside the project folder ``root`` (so other projects may use it)."""
    try:
        return not output.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL: the folder check says what is wrong with it
        return False


def other_project_around(root: Path, output: Path) -> Path | None:
    """The folder of another project that ``output`` is in (or is), if any: a copy of a project
    whose output_dir points at the original's own output/ (that folder keeps no owner record:
    it is not shared) read the original's LoRAs as its own, all "current"."""
    from engine.project.folder import PROJECT_FILE

    try:
        mine, folder = root.resolve(), output.resolve()
        # up to the folder the two share, not beyond: a stray copylora.toml above the projects
        # folder made every project with an output outside its own folder "inside" it
        shared = Path(os.path.commonpath([mine, folder]))
        for place in (folder, *folder.parents):
            if place == shared or place in shared.parents:
                return None
            if (place / PROJECT_FILE).is_file():
                return place
    except (OSError, RuntimeError, ValueError):
        return None
    return None


def owner_problem(root: Path, name: str, runs: Path) -> str | None:
    """Why the outputs named ``name`` under ``runs``' folder belong to another project, or None."""
    from engine.project.folder import PROJECT_FILE

    try:
        owner = Path((runs / OWNER_FILE).read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return None
    try:
        mine = root.resolve()
        if not owner.is_absolute() or owner == mine or not (owner / PROJECT_FILE).is_file():
            return None  # not written by us, this project, or a project that is gone (moved): this one takes over
    except (OSError, ValueError):
        return None
    return (f"{runs.parent.parent} already holds the outputs of another project named {name!r} ({owner}): both would write "
            f"{name}_A.safetensors and its checkpoints; give this project another [project] name, or its own output_dir")


def claim(root: Path, name: str, runs: Path) -> str | None:
    """Record this project as the one whose outputs ``runs`` holds, unless another project of
    its name holds them (then why, and nothing is written). The look and the write are one step
    under an flock: two projects of one name starting their trainings at once cannot both pass."""
    import fcntl

    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / f".{OWNER_FILE}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held for a read and a rename: never long
        if problem := owner_problem(root, name, runs):
            return problem
        temporary = runs / f".{OWNER_FILE}.{os.getpid()}"
        temporary.write_text(f"{root.resolve()}\n", encoding="utf-8")
        os.replace(temporary, runs / OWNER_FILE)  # a reader sees the old name or the new one
    return None
