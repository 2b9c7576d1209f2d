"""The projects folder as the Projects screen shows it: one summary per concept project.

A summary says what is on disk (A/B LoRAs trained and current? merged and current? how big is
output/?). Whether an output is *current* is its artifact's ``status()``
(:mod:`engine.project.outputs`), which ``copylora run`` and ``check`` ask too, so "stale" here
means "run would make it again". That takes hashing the images and the LoRA files, so the app
scans in a thread.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from engine.errors import ValidationError
from engine.project.folder import PROJECT_FILE, load_project

# file states of one output: made and current, made from older settings, not made yet
DONE, STALE, MISSING = "done", "stale", "missing"
RESUMABLE = "resumable"  # no current LoRA, but a checkpoint of the current settings to continue


@dataclass(frozen=True)
class OutputState:
    state: str
    reason: str = ""


@dataclass(frozen=True)
class ProjectSummary:
    folder: Path
    name: str
    base_model: str = "?"
    problems: tuple[str, ...] = ()
    sides: dict[str, OutputState] = field(default_factory=dict)
    merge: OutputState = OutputState(MISSING)
    steps: dict[str, int] = field(default_factory=dict)
    output_dir: Path | None = None
    output_bytes: int = 0
    last_output: float | None = None  # newest mtime of a LoRA it made
    stats_path: Path | None = None
    method: str = "svd-merge"  # the route: the merge column says "merged" or "result"
    inputs: tuple[Path, ...] | None = None  # the folders its stamp watches (project_stamp); None: its own subfolders
    view_only: str | None = None  # why it can be looked at but not trained (its output folder cannot be written)

    @property
    def valid(self) -> bool:
        return not self.problems


Stamp = tuple[int, int, int] | None  # a file's (mtime_ns, size, inode); None where it cannot be read


def stamp(path: Path) -> Stamp:
    """What changes when ``path`` is written, whatever the writer (an editor's rename, a write in
    place, a copy over it): one stat, so that the list can follow the disk every few seconds."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


def project_stamps(folders: Mapping[Path, tuple[Path, ...]] | list[Path]) -> dict[Path, tuple]:
    """Each project's stamp (:func:`project_stamp`), of its file and of the folders its summary
    named (``folders`` a mapping; a list: its own subfolders)."""
    watched = folders if isinstance(folders, Mapping) else {}
    return {folder: project_stamp(folder, watched.get(folder)) for folder in folders}


def project_stamp(folder: Path, inputs: tuple[Path, ...] | None = None) -> tuple:
    """What changes when a project's file, a teacher picture or one of its outputs is written,
    replaced or removed beside the app: its file's :func:`stamp`, the files of ``inputs`` (its
    teacher folders and output folder, :func:`watched_folders`; default a/ and b/), each (name,
    mtime, size, inode), and every subfolder's own stamp (a picture added to or removed from a
    class folder of thousands: one stat, not thousands every DISK_CHECK_S). A picture replaced
    from a shell left "✓ trained" and "all outputs current" on the list, where `check` said stale."""
    files = tuple(sorted(inputs if inputs is not None else default_inputs(folder)))
    return stamp(folder / PROJECT_FILE), folder_files_stamp(files), tuple(stamp(sub) for sub in subfolders(folder))


def default_inputs(folder: Path) -> tuple[Path, ...]:
    """A project's folders as `copylora new` lays them out (before it is read)."""
    return folder / "a", folder / "b", folder / "output"


def subfolders(folder: Path) -> tuple[Path, ...]:
    try:
        with os.scandir(folder) as entries:
            return tuple(sorted(Path(e.path) for e in entries if e.is_dir(follow_symlinks=True)))
    except OSError:
        return ()


def folder_files_stamp(folders: tuple[Path, ...]) -> tuple:
    """The files directly in each folder, as (name, mtime_ns, size, inode); None for one that
    cannot be read. One stat per file: a class folder of a thousand pictures takes ~2 ms."""
    found: list = []
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                files = []
                for entry in entries:
                    if entry.is_file():
                        info = entry.stat()
                        files.append((entry.name, info.st_mtime_ns, info.st_size, info.st_ino))
            found.append((str(folder), tuple(sorted(files))))
        except OSError:
            found.append((str(folder), None))
    return tuple(found)


def project_folders(projects_dir: Path) -> list[Path]:
    """The folders in ``projects_dir`` that hold a project file, even one that cannot be read: a
    copylora.toml that is a link to nothing or to itself is listed (invalid, saying so) rather
    than left out, which glob does, and the project vanished from the list without a word."""
    try:
        children = list(projects_dir.iterdir()) if projects_dir.is_dir() else []
    except OSError:  # a projects folder this user cannot read: nothing to list
        return []
    found = [Path(os.path.realpath(child)) for child in children if is_project_folder(child)]
    return sorted(set(found))  # a link to a project folder beside it is that project, listed once


def is_project_folder(folder: Path) -> bool:
    """A folder holding a project file, even one that cannot be read (see :func:`project_folders`)."""
    try:
        return folder.is_dir() and os.path.lexists(folder / PROJECT_FILE)
    except OSError:  # a name too long, a folder that cannot be entered
        return False


def summarise(folder: Path) -> ProjectSummary:
    """Everything the Projects screen needs about one folder. Never raises for a bad project."""
    from engine.project.outputs import Result, SideLora
    from engine.project.plan import make_plan

    try:
        project = load_project(folder, decode_images=False, writing=False)  # headers only: the list must come quickly
    except ValidationError as exc:
        return ProjectSummary(folder=folder, name=folder.name, problems=tuple(str(p) for p in exc.problems))
    try:
        plan = make_plan(project)
        sides = {}
        for side in plan.trained:
            sides[side] = _state(SideLora(plan, side).status())
            if sides[side].state != DONE:
                sides[side] = checkpoint_state(plan, side) or sides[side]
        if "pair" in sides:  # a one-LoRA route (addift, slider): its LoRA is both columns' state
            sides["a"] = sides["b"] = sides["pair"]
        merge = _state(Result(plan).status())
    except (OSError, ValueError) as exc:  # an image vanished between load and plan, …
        return ProjectSummary(folder=folder, name=project.name, base_model=project.info.base_model, problems=(str(exc),))
    loras = [plan.side(side).lora_path for side in plan.trained] + [plan.merged_path]
    times = [p.stat().st_mtime for p in loras if p.is_file()]
    out = project.output_dir()
    return ProjectSummary(
        folder=folder,
        name=project.name,
        base_model=project.info.base_model,
        sides=sides,
        merge=merge,
        steps={side: plan.side(plan.trained[0] if plan.trained == ("pair",) else side).total_steps for side in ("a", "b")},
        output_dir=out,
        output_bytes=folder_bytes(out),
        last_output=max(times) if times else None,
        stats_path=plan.stats_path if plan.stats_path.is_file() else None,
        method=project.info.method,
        inputs=watched_folders(project),
        view_only=view_only_reason(project),
    )


def view_only_reason(project) -> str | None:
    """Why a project loaded to be looked at (``writing=False``) cannot be trained: its output
    folder cannot be written (a read-only mount, another user's project). None: it can."""
    from engine.files import writable_folder_problem

    problem = writable_folder_problem(project.output_dir())
    return f"view only: {problem} (copy the project where you can write, or point output_dir there)" if problem else None


def watched_folders(project) -> tuple[Path, ...]:
    """The folders whose every file a project's row follows: its teacher folders (A, B, further
    concepts: a picture rewritten in place changes no folder's time) and its output folder (its
    LoRAs and stats; not runs/, whose checkpoints change every few steps). Class folders, often
    thousands of pictures, count by their own stamp (project_stamp)."""
    folders = {project.output_dir(), *(project.side_folder(side) for side in ("a", "b"))}
    folders |= {project.root / concept.folder for concept in project.concepts if concept.folder}
    return tuple(sorted(folders))


def checkpoint_state(plan, side: str) -> OutputState | None:
    """A side with no current LoRA but a checkpoint that ``run`` would continue."""
    from engine.project.outputs import SideLora
    from engine.train.checkpoint import newest_state_facts

    total = plan.side(side).total_steps
    facts = newest_state_facts(plan.side(side).run_dir, at_most=total)  # one past the plan is never resumed
    if facts is None:
        return None
    if facts.fingerprint is not None and facts.fingerprint not in SideLora(plan, side).record().accepted:
        return OutputState(STALE if plan.side(side).lora_path.is_file() else MISSING,
                           f"its checkpoint (step {facts.step}) was made with other settings: run starts over")
    return OutputState(RESUMABLE, f"step {facts.step}/{total}, resumable (r continues it)")


def _state(status) -> OutputState:
    """An artifact's status (engine.project.outputs.Status) as the Projects screen says it."""
    return OutputState(DONE if status.current else status.state, status.reason)


def scan_projects(projects_dir: Path, stamps: dict[Path, Stamp] | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> list[ProjectSummary]:
    """Every project's summary (see :func:`read_projects`)."""
    return read_projects(project_folders(projects_dir), stamps, on_progress)


def read_projects(folders: list[Path], stamps: dict[Path, Stamp] | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> list[ProjectSummary]:
    """These projects' summaries; ``stamps`` gets each project file's stamp, taken before it is
    read (a change made while it is read shows at the next look); ``on_progress(done, total)`` is
    called after each project."""
    summaries: list[ProjectSummary] = []
    for folder in folders:
        if stamps is not None:
            stamps[folder] = project_stamp(folder)
        summaries.append(summarise_project(folder))
        inputs = summaries[-1].inputs
        if stamps is not None and inputs is not None and set(inputs) != set(default_inputs(folder)):
            # folders of its own (an output folder elsewhere): stamped now, as read (the usual
            # layout's were stamped before, so a change while it was read shows at the next look)
            stamps[folder] = (stamps[folder][0], folder_files_stamp(tuple(sorted(inputs))), stamps[folder][2])
        if on_progress is not None:
            on_progress(len(summaries), len(folders))
    return summaries


def summarise_project(folder: Path) -> ProjectSummary:
    """:func:`summarise`, and for what it did not foresee (a TOML whose integer has 5000 digits,
    a merged LoRA with odd metadata) the folder listed as invalid with the error: one broken
    project must not keep the list, and every other project, from showing."""
    try:
        return summarise(folder)
    except Exception as exc:
        return ProjectSummary(folder=folder, name=folder.name, problems=(f"cannot read it: {type(exc).__name__}: {exc}",))


def folder_bytes(folder: Path | None) -> int:
    """The bytes under ``folder``; what cannot be read (another user's files, a file that
    vanishes while counting) counts as nothing: a size is shown, never an error."""
    try:
        if folder is None or not folder.is_dir():
            return 0
    except OSError:
        return 0
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def output_inside(summary: ProjectSummary) -> Path | None:
    """The project's output folder when it lies inside the project folder (else None)."""
    out = summary.output_dir or summary.folder / "output"
    try:  # realpath, not Path.resolve: an output/ that links to itself made resolve raise, and `d` end the app
        Path(os.path.realpath(out)).relative_to(os.path.realpath(summary.folder))
    except ValueError:
        return None
    return out


def delete_project(summary: ProjectSummary, *, also_outputs: bool) -> list[Path]:
    """Delete a project; its output folder only when ``also_outputs`` says so.

    Without it, everything but output/ goes and output/ stays where it was (the LoRAs a user
    trained for hours are never lost to one key press). An output folder outside the project
    folder is never touched. Returns what was removed.
    """
    folder = summary.folder
    keep = None if also_outputs else output_inside(summary)
    if keep is None or not keep.exists():
        shutil.rmtree(folder)
        return [folder]
    removed = []
    for child in sorted(folder.iterdir()):
        if os.path.realpath(child) == os.path.realpath(keep):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
        removed.append(child)
    return removed


def sides_apart(job, summary: ProjectSummary) -> tuple[int, int] | None:
    """(A's steps, B's) of a twin job that trains A, then B (the sides could not go as one
    batch: engine.jobs.runner counts its steps over both); None where the job is not that."""
    from engine.jobs.queue import TWIN

    a, b = summary.steps.get("a"), summary.steps.get("b")
    if (asked := (job.params or {}).get("max_steps")) is not None:  # `run --max_steps N`: N a side, the plan aside
        a = b = asked
    if job.side != TWIN or not a or not b or job.total != a + b or job.smooth_loss_b is not None:
        return None
    return a, b
