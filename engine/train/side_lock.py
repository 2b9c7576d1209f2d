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
        # which queue: another state folder's worker (COPYLORA_HOME) is not in `copylora queue` here
        home = f" of the queue in {args[args.index('--home') + 1]}" if "--home" in args[:-1] else ""
        return f"queue job #{args[args.index('--job') + 1]}{home} (pid {os.getpid()})"
    return f"`copylora {' '.join(args)}` (pid {os.getpid()})"[:300]


# What a holder does with the side, written after its name (a tab between): the refusal says it.
TRAINS, TRAINS_B_ON_IT = "trains", "trains B on it"


def _refusal(plan, side: str, wanted: str, held_by: str | None) -> TrainingError:
    holder, _tab, role = (held_by or "").partition("\t")
    holder = holder or "another process"
    name, upper = plan.project.name, side.upper()
    if role == TRAINS_B_ON_IT:  # a training of A while the differential route's B learns on A's LoRA
        return TrainingError(f"side {upper} of {name} is in use right now: {holder} trains B on A's LoRA (the differential "
                             f"route), and B is right only on the A it learned on: wait for it, or stop it first "
                             f"(`copylora cancel JOB` for a queue job, Ctrl-C where `copylora train` runs)")
    if wanted == TRAINS_B_ON_IT:  # B of the differential route while A trains: B would learn on an A about to change
        return TrainingError(f"side {upper} of {name} is being trained right now by {holder}, and B trains on A's finished "
                             "LoRA (the differential route): wait for A to finish, or stop it first")
    return TrainingError(f"side {upper} of {name} is being trained right now by {holder}; two trainings of one side would "
                         "write over each other's checkpoints and LoRA: wait for it, or stop it first (`copylora cancel JOB` "
                         "for a queue job, Ctrl-C where `copylora train` runs)")


@contextmanager
def side_locks(plan, sides: list[str], learns_on: str | None = None) -> Iterator[None]:
    """Hold the lock of each of ``sides`` (all, or none: TrainingError naming who holds one).
    ``learns_on``: the side whose finished LoRA the training applies under its own (A, for the
    differential route's B), held too, so that A is not trained again under B's feet: B would
    learn on one A and be merged with, or used beside, another."""
    held: list[IO[str]] = []
    wanted = [(side, TRAINS) for side in sides] + ([(learns_on, TRAINS_B_ON_IT)] if learns_on else [])
    try:
        for side, role in wanted:
            run_dir = plan.side(side).run_dir
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                handle, who = take_lock(run_dir / LOCK_NAME, f"{_holder()}\t{role}\n")
            except OSError:  # an output folder that cannot be written: the training says so where it writes
                continue
            if handle is None:
                raise _refusal(plan, side, role, who)
            held.append(handle)
        yield
    finally:
        for lock in held:
            lock.close()
