"""One trainer per side at a time: a lock in the side's run folder (``output/runs/A/training.lock``).

`copylora train mono --side a` typed while the worker's job trained A of mono ran beside it:
both wrote the same checkpoints and LoRA, the last writer won, and the next resume read a
mixture. The lock is an flock, so it goes with the process however the process ends.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import IO, Iterator

from engine.files import take_lock
from engine.train.results import TrainingError

LOCK_NAME = "training.lock"


def _holder() -> str:
    """This process as the message to another trainer names it."""
    args = sys.argv[1:]
    if "--job" in args[:-1]:  # the queue's runner: engine.jobs.runner --home H --job N
        return f"queue job #{args[args.index('--job') + 1]} (pid {os.getpid()})"
    return f"`copylora {' '.join(args)}` (pid {os.getpid()})"[:300]


@contextmanager
def side_locks(plan, sides: list[str]) -> Iterator[None]:
    """Hold the lock of each of ``sides`` (all, or none: TrainingError naming who trains it)."""
    held: list[IO[str]] = []
    try:
        for side in sides:
            run_dir = plan.side(side).run_dir
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                handle, who = take_lock(run_dir / LOCK_NAME, _holder() + "\n")
            except OSError:  # an output folder that cannot be written: the training says so where it writes
                continue
            if handle is None:
                raise TrainingError(f"side {side.upper()} of {plan.project.name} is being trained right now by {who or 'another process'}; "
                                    "two trainings of one side would write over each other's checkpoints and LoRA: wait for it, or "
                                    "stop it first (`copylora cancel JOB` for a queue job, Ctrl-C where `copylora train` runs)")
            held.append(handle)
        yield
    finally:
        for lock in held:
            lock.close()
