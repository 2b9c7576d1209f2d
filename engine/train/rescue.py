"""Where a training's weights go when the folder they belong in breaks or goes away.

Every write makes its parent folders (:func:`engine.files.atomic_write`), so a project folder
removed while its side trains (deleted in a file manager or the app, ``rm -r``, a disk
unmounted) would come back at the next checkpoint as an ``output/runs`` with nothing else in
it, and the training would go on for hours into it. :class:`FolderWatch` notices instead
(about once a second, and before anything is written); the trainer then stops and writes each
side's checkpoint and LoRA to :func:`rescue_folder`, as it does for a finished training whose
LoRA cannot be written, and its error says where they are.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

WATCH_EVERY_S = 1.0  # a stat per watched folder: nothing next to a training step, yet prompt


def rescue_folder(project_root: Path | None = None) -> Path:
    """Where a training's weights go when their own folder cannot take them: one folder per
    project (its name and where it was), so two projects of one name (a copied folder) do not
    write over each other's rescued LoRA, nor prune each other's checkpoints. ``None``: the
    folder that holds them all."""
    import hashlib
    import os

    from engine.models.tiny import cache_root

    top = cache_root() / "rescue"
    if project_root is None:
        return top
    where = os.path.abspath(project_root)
    return top / f"{Path(where).name}-{hashlib.sha256(where.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


_ATTEMPT: list[str] = []


def rescue_target(project_root: Path) -> Path:
    """This process's folder in the project's rescue folder: one per training attempt, named by
    when it began rescuing, so a later attempt's partial weights never replace an earlier
    finished training's rescued LoRA, nor mix their checkpoints."""
    import os
    import time

    if not _ATTEMPT:
        _ATTEMPT.append(f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    return rescue_folder(project_root) / _ATTEMPT[0]


def rescued_files(project_root: Path) -> list[Path]:
    """What a failed training of this project left in its rescue folder (check says so: it
    was said once, in the job's error, and the folder is never cleaned by copylora)."""
    folder = rescue_folder(project_root)
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def nearest_existing(path: Path) -> Path:
    """``path``, or the nearest of its parents that exists (where writing would create it)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


class FolderWatch:
    """The folders a training writes under, as they were when it started: the project folder
    and, for each output folder, itself or the nearest parent that existed. One that is no
    longer a folder was removed during the run (a folder the run creates later is not
    watched: its removal re-creates nothing the user took away)."""

    def __init__(self, project_root: Path, outputs: Iterable[Path]) -> None:
        self.project_root = Path(project_root).absolute()
        found = [self.project_root, *(nearest_existing(p) for p in outputs)]
        self.watched = [p for p in dict.fromkeys(found) if p.is_dir()]
        self.last = time.monotonic()

    def gone(self, force: bool = False) -> str | None:
        """"the project folder X" (or "the output folder X") if it was removed; None while all
        are there. Looked at about once a :data:`WATCH_EVERY_S`, or now with ``force``."""
        if not force and time.monotonic() - self.last < WATCH_EVERY_S:
            return None
        self.last = time.monotonic()
        for folder in self.watched:
            if not folder.is_dir():
                what = "project" if folder == self.project_root or folder in self.project_root.parents else "output"
                return f"the {what} folder {folder}"
        return None


def rescue_side(step: int, write_state: Callable[[int, Path], Path], write_lora: Callable[[int, Path], Path], lora_path: Path,
                run_dir: Path, project_root: Path) -> str:
    """Write one side's checkpoint and LoRA of ``step`` to the rescue folder; what was kept
    (or not), as one phrase for the error."""
    folder = rescue_target(project_root)
    kept = []
    try:
        kept.append(f"the LoRA of step {step} was written to {write_lora(step, folder / lora_path.name)}")
    except OSError as exc:
        kept.append(f"the LoRA could not be written to {folder} either ({exc})")
    try:
        state = write_state(step, folder / f"{lora_path.stem}-run")
        try:
            home = run_dir.relative_to(project_root)
        except ValueError:
            home = run_dir
        kept.append(f"its checkpoint to {state} (to go on: with the project where it belongs and room on its disk, copy "
                    f"{state.name} into {home}, then `copylora retry` or `copylora train --resume`)")
    except OSError as exc:
        kept.append(f"its checkpoint could not be written to {folder} either ({exc})")
    return ", ".join(kept)


def removed_message(gone: str, step: int, total: int, kept: list[str], finished: bool) -> str:
    """The error of a training stopped because its folder was removed."""
    when = f"training finished ({step} steps), but {gone} was removed or moved during the run" if finished else (
        f"{gone} was removed or moved while training (noticed at step {step} of {total}): training stopped")
    return f"{when}; nothing was written there (it is not re-created): " + "; ".join(kept)
