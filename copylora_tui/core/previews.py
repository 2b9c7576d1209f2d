"""Which preview grid to show, and its one-line caption, from the files the engine writes.

The engine writes PNG grids into the project's ``output/samples/``: ``<name>-grid.png`` (the
merged LoRA at the [sample] strengths, by the preview job) and ``<name>_A-step000100.png``
(a training side at a step). Each carries a ``copylora`` PNG text chunk with the settings.
Finding the newest one is a directory listing and a stat per file, so the screens can poll it
twice a second; a picture is decoded again only when the newest file's name, time or size
changes (:class:`Found` compares equal otherwise).
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

EMPTY = "no preview yet — previews appear after the merge (copylora run) or every sample_every_n_steps during training"
TRAIN_EMPTY = EMPTY + " (v samples now)"
NO_PREVIEWS = "class-image jobs make no previews"
JOB_END_SLACK_S = 10.0  # a preview written as its job ended is still the job's (the end is recorded after)


@dataclass(frozen=True)
class PreviewTarget:
    """The PNGs of ``folder`` whose names match ``pattern`` (fnmatch), newest first."""

    folder: Path
    pattern: str = "*.png"
    empty: str = EMPTY  # what the pane says while there is none
    # written within these times (epoch seconds; None: any): a job's own previews, not one a later
    # run of the side (or a hand) left there with a step this job never reached
    after: float | None = None
    before: float | None = None


@dataclass(frozen=True)
class Found:
    path: Path
    mtime_ns: int
    size: int


def newest(target: PreviewTarget) -> Found | None:
    """The newest matching PNG (by modification time, then name: step000200 after step000100)."""
    best: Found | None = None
    try:
        entries = list(os.scandir(target.folder))
    except OSError:
        return None  # no samples folder yet
    for entry in entries:
        # The engine writes atomically through ".<name>.<random>.tmp": never a half-written PNG.
        if entry.name.startswith(".") or not fnmatch.fnmatchcase(entry.name, target.pattern):
            continue
        try:
            stat = entry.stat()
        except OSError:
            continue  # replaced or removed while listing
        if (target.after is not None and stat.st_mtime < target.after) or (target.before is not None and stat.st_mtime > target.before):
            continue
        found = Found(Path(entry.path), stat.st_mtime_ns, stat.st_size)
        if best is None or (found.mtime_ns, found.path.name) > (best.mtime_ns, best.path.name):
            best = found
    return best


def project_target(project) -> PreviewTarget:
    """Any preview of a project (engine.project.folder.Project)."""
    from engine.project.plan import output_paths

    return PreviewTarget(output_paths(project).samples)


def job_target(job) -> PreviewTarget | str:
    """The previews a queue job makes (engine.jobs.queue.Job), or why it makes none. Loads the
    job's project (a TOML read): call it in a thread."""
    from engine.project.folder import load_project
    from engine.project.plan import output_paths

    if job.kind == "reg":
        return NO_PREVIEWS
    paths = output_paths(load_project(job.project, writing=False))  # previews are read
    if job.kind == "train" and job.side:
        sides = ["a", "b"] if job.side == "ab" else [job.side.lower()]  # a twin job previews both sides; "pair": one LoRA
        stems = [paths.lora(side).stem for side in sides]
        # (a second's slack before: a file's mtime is the kernel's coarse clock, behind time.time() by some ms)
        when = {"after": job.created_at - 1.0, "before": job.finished_at + JOB_END_SLACK_S if job.finished_at else None}
        if len(stems) == 1:
            return PreviewTarget(paths.samples, f"{glob.escape(stems[0])}-step*.png", TRAIN_EMPTY, **when)
        # NAME_A and NAME_B differ in their last letter: one pattern for both
        return PreviewTarget(paths.samples, f"{glob.escape(stems[0][:-1])}[{stems[0][-1]}{stems[1][-1]}]-step*.png", TRAIN_EMPTY, **when)
    # merge and preview ("sample") jobs: the merged LoRA's strength grid
    return PreviewTarget(paths.samples, glob.escape(paths.grid.name))


def read_record(path: Path) -> dict:
    """The ``copylora`` text chunk, without decoding pixels: ``Image.info`` holds the text
    chunks read while opening (before the image data, where the engine writes them), whereas
    ``Image.text`` would decode the whole picture to look for chunks after it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            raw = image.info.get("copylora")
        return json.loads(raw) if isinstance(raw, str) else {}
    except (OSError, ValueError):
        return {}


def caption(record: dict) -> str:
    """'strength 0 | 1 · seed 1234 · 8 steps · step 100' (what is known of it)."""
    try:
        return _caption(record)
    except (AttributeError, TypeError, ValueError):  # a chunk some other program wrote
        return "unreadable copylora parameters"


def _caption(record: dict) -> str:
    settings = record.get("settings") or {}
    parts = []
    strengths = settings.get("strengths")
    if strengths:
        parts.append("strength " + " | ".join(f"{s:g}" for s in strengths))
    if settings.get("seed") is not None:
        parts.append(f"seed {settings['seed']}")
    if settings.get("steps") is not None:
        parts.append(f"{settings['steps']} steps")
    if record.get("step") is not None:
        parts.append(f"step {record['step']}")
    return " · ".join(parts) or "no copylora parameters in this PNG"
