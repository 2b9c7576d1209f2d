"""Resumable training state, written so that a kill at any instant never leaves a broken one.

A state is one ``state-<step>.pt`` file in the run folder: LoRA weights, optimizer and
scheduler state, RNG states and the step. It is written to a temp file in the same folder,
flushed and fsynced, then renamed over (rename is atomic on POSIX), and the folder is
fsynced so the rename itself survives a power cut. Loading tries the newest file first and
skips any that fails to load or lacks a key (a truncated file fails: a zip's directory is at
its end). Files are loaded with ``weights_only=True``: only tensors and plain data, never
arbitrary pickled objects.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

from engine.files import atomic_write

STATE_RE = re.compile(r"^state-(\d{8})\.pt$")
REQUIRED_KEYS = ("step", "lora", "optimizer", "scheduler", "rng", "fingerprint")
KEEP_STATES = 2  # the newest two: if the newest turns out unreadable, the previous one is there


def state_step(path: Path) -> int:
    """The step of a state file (a name :data:`STATE_RE` matches, as :func:`list_states` lists)."""
    found = STATE_RE.match(path.name)
    if found is None:
        raise ValueError(f"{path.name} is not a training state's name")
    return int(found.group(1))


def state_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"state-{step:08d}.pt"


def save_state(run_dir: Path, state: dict[str, Any]) -> Path:
    import torch

    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"training state lacks {missing}")
    path = state_path(run_dir, int(state["step"]))
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    # What the app and `copylora run` show of a checkpoint, readable without torch.
    facts = {"step": int(state["step"]), "total": state.get("total"), "fingerprint": state["fingerprint"]}
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(facts)))
    step = int(state["step"])
    # A run writes increasing steps: a state past this one is another training's (a longer
    # plan's, or one with other settings), and kept by step it would outlive this run's own
    # states, pruned as the older ones (a crash would then find nothing of this run to resume).
    for old in list_states(run_dir):
        if state_step(old) > step:
            remove_state(old)
    for old in list_states(run_dir)[KEEP_STATES:]:
        remove_state(old)
    return path


def remove_state(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)


@dataclass(frozen=True)
class StateFacts:
    step: int
    total: int | None
    fingerprint: str | None  # None: a state written before the facts file existed


def newest_state_facts(run_dir: Path, at_most: int | None = None) -> StateFacts | None:
    """Step, total and fingerprint of the newest checkpoint (at or before step ``at_most`` if
    given), from its ``.json`` beside it (no torch, no unpickling); None when there is none."""
    states = [p for p in list_states(run_dir) if at_most is None or state_step(p) <= at_most]
    if not states:
        return None
    step = state_step(states[0])
    try:
        facts = json.loads(states[0].with_suffix(".json").read_text())
        return StateFacts(step, facts.get("total"), facts.get("fingerprint"))
    except (OSError, ValueError, AttributeError):
        return StateFacts(step, None, None)


def adopt_earlier_layout(old_dir: Path, run_dir: Path, fingerprints: Collection[str], log: Callable[[str], None]) -> int:
    """Checkpoints of this training (its fingerprint, in their ``.json``) that an earlier
    copylora wrote to ``old_dir`` — a shared output folder's ``runs/A``, before run folders
    there were per project (``runs/NAME/A``) — moved into ``run_dir``. A job paused before the
    update and resumed after it started again from 0; ``check`` alone said where the checkpoints
    were. Another project's (another fingerprint) stay; so does all of it while an earlier
    copylora trains there (its lock). Newest first, each ``.pt`` before its ``.json``: a kill
    midway leaves the newest moved, the rest found next time. A move the system refuses (another
    disk) is said, and the training goes on without it."""
    import os

    from engine.files import take_lock

    try:
        if not old_dir.is_dir() or old_dir.resolve() == run_dir.resolve():
            return 0
    except OSError:
        return 0
    mine = []
    for path in list_states(old_dir):
        try:
            if json.loads(path.with_suffix(".json").read_text()).get("fingerprint") in fingerprints:
                mine.append(path)
        except (OSError, ValueError, AttributeError):
            continue  # no facts file: whose it is cannot be told without loading it
    if not mine:
        return 0
    try:
        lock, holder = take_lock(old_dir / "training.lock", "moving this run's checkpoints to its own run folder\n")
    except OSError:
        lock, holder = None, "a folder that cannot be written"
    if lock is None:
        log(f"checkpoints of this training are in {old_dir}, where an earlier copylora kept them; not moved: {holder.strip()} holds it")
        return 0
    moved = 0
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for path in mine:
            if (run_dir / path.name).exists():
                continue
            os.replace(path, run_dir / path.name)
            facts = path.with_suffix(".json")
            if facts.exists():
                os.replace(facts, run_dir / facts.name)
            moved += 1
    except OSError as exc:
        log(f"could not move the checkpoints of this training from {old_dir} (where an earlier copylora kept them) to {run_dir}: "
            f"{exc.strerror or exc}; move them by hand to resume from them")
    finally:
        lock.close()
    if moved:
        log(f"moved {moved} checkpoint(s) of this training from {old_dir} (where an earlier copylora kept them) to {run_dir}")
    return moved


def list_states(run_dir: Path) -> list[Path]:
    """State files, newest step first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if STATE_RE.match(p.name)]
    return sorted(found, key=state_step, reverse=True)


def load_latest_state(run_dir: Path, fingerprint: str | Collection[str] | None = None, log: Callable[[str], None] = print,
                      at_most: int | None = None) -> dict[str, Any] | None:
    """The newest loadable state, or None. Unreadable ones are reported and skipped.

    With ``fingerprint`` (or the fingerprints a state of this run may carry), a state made with
    other training parameters is skipped too: resuming
    a run whose rank or learning rate changed would silently mix two trainings. ``at_most``:
    the newest at or before that step (twin training resumes both sides from a step they share).
    """
    import torch

    for path in list_states(run_dir):
        if at_most is not None and state_step(path) > at_most:
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, corrupt, or not ours
            log(f"skipping unreadable training state {path.name}: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else list(REQUIRED_KEYS)
        if missing:
            log(f"skipping incomplete training state {path.name} (missing {', '.join(missing)})")
            continue
        if fingerprint is not None and state["fingerprint"] not in ({fingerprint} if isinstance(fingerprint, str) else fingerprint):
            log(f"skipping training state {path.name}: made with other parameters")
            continue
        return state
    return None


def newest_step(run_dir: Path, at_most: int | None = None) -> int:
    """The newest state's step (at or before ``at_most`` if given), 0 when there is none."""
    steps = [state_step(p) for p in list_states(run_dir)]
    return next((s for s in steps if at_most is None or s <= at_most), 0)
