"""``[train] log_with = "tensorboard"`` / ``logging_dir`` (kohya's keys): where a side's TensorBoard
logs go, and whether this machine can write them. The queue's own history stays what the app and
``copylora queue`` show; these files are for TensorBoard (``tensorboard --logdir output/logs``).

As in sd-scripts, ``logging_dir`` alone turns TensorBoard logging on, and each run writes to a new
folder named by its start time (a resumed run too, so a restarted training never draws over the
curve of the one before); here under one folder per side, so A and B are two runs side by side.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from engine.errors import Problem

INSTALL = 'pip install "copylora[tensorboard]" (or pip install tensorboard)'


def tensorboard_wanted(params) -> bool:
    return params.log_with == "tensorboard" or bool(params.logging_dir)


def logs_folder(project, side: str) -> Path:
    """The folder of ``side``'s TensorBoard runs: ``logging_dir`` (relative to the project file), else OUTPUT/logs, then the side."""
    name = project.side_params(side).logging_dir
    if not name:
        return project.output_dir() / "logs" / side.upper()
    path = Path(name).expanduser()
    return (path if path.is_absolute() else project.root / path) / side.upper()


def run_folder(project, side: str, started: float | None = None) -> Path:
    """This run's folder: the side's folder, then the start time (kohya's %Y%m%d%H%M%S)."""
    return logs_folder(project, side) / time.strftime("%Y%m%d%H%M%S", time.localtime(started or time.time()))


def tensorboard_missing() -> bool:
    """True when the tensorboard package (torch.utils.tensorboard's writer) is not installed."""
    return importlib.util.find_spec("tensorboard") is None


def logging_problems(project) -> list[Problem]:
    """What stops a side's TensorBoard logs before any training: the package is missing."""
    for side in ("a", "b"):
        params = project.side_params(side)
        if tensorboard_wanted(params) and tensorboard_missing():
            key = "log_with" if params.log_with else "logging_dir"
            where = side if key in project.side(side).overrides else "train"
            return [Problem(f"{where}.{key}", f"TensorBoard logs need the tensorboard package, which is not installed: {INSTALL}")]
    return []
