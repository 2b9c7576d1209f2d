"""What ``copylora run PROJECT`` puts in the queue: train A, train B, merge, preview — minus
what is already up to date (each output's ``status()``, :mod:`engine.project.outputs`) or
already waiting. Anything retrained makes what is made from it stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.jobs.queue import ACTIVE, TWIN, Job, JobStatus, Queue
from engine.project.folder import load_project
from engine.project.outputs import Check, Result, SideLora, preview_status
from engine.project.pair_route import PAIR
from engine.project.plan import Plan, is_differential, make_plan, twin_problem


@dataclass
class Step:
    what: str  # "class images", "train A", "train B", "merge", "preview"
    action: str  # "queued", "up to date", "already queued", "already running"
    job: Job | None = None
    reason: str = ""


def enqueue_project(queue: Queue, project_dir: str | Path, *, force: bool = False, max_steps: int | None = None) -> list[Step]:
    """Queue the missing steps of one (already validated) project; returns what happened."""
    from engine.train.class_images import missing_class_images

    project = load_project(project_dir)
    plan = make_plan(project, max_steps=max_steps)
    key = str(project.root)
    # What is up to date is decided first: it hashes files (seconds for big LoRAs), and no
    # write lock may be held that long. Then what is already waiting is read and the missing
    # jobs are inserted in one transaction, so two `copylora run` of one project at once (two
    # terminals, a script and the app) queue its jobs once.
    missing = missing_class_images(project)
    side_fresh = {side: SideLora(plan, side).status().pair() for side in plan.trained}
    merge_fresh = Result(plan).status().pair()
    sample_fresh = preview_status(plan).pair()
    from engine.project.provenance import accepted_fingerprints

    fingerprints = {side: accepted_fingerprints(plan, side) for side in plan.trained}
    with queue.transaction():
        return _enqueue_missing(queue, plan, key, missing, side_fresh, merge_fresh, sample_fresh, force, max_steps, fingerprints)


def outdated_trainings(plan: Plan, jobs: list[Job]) -> list[Job]:
    """The running trainings among ``jobs`` that train other settings than ``plan``'s (a save in
    the app while it trains: it goes on training what it started with)."""
    from engine.project.provenance import accepted_fingerprints

    if not any(j.kind == "train" and j.status is JobStatus.RUNNING for j in jobs):
        return []
    fingerprints = {side: accepted_fingerprints(plan, side) for side in plan.trained}
    return [j for j in jobs if _outdated(j, fingerprints)]


def _outdated(job: Job, fingerprints: dict[str, frozenset[str]]) -> bool:
    """Whether a running training trains other settings than the project's now (its runner
    noted its fingerprints at its start; a job queued, not started, reads the project then)."""
    noted = (job.params or {}).get("fingerprints")
    return (job.kind == "train" and job.status is JobStatus.RUNNING and isinstance(noted, dict)
            and any(side in fingerprints and print_ not in fingerprints[side] for side, print_ in noted.items()))


def _enqueue_missing(queue, plan, key, missing, side_fresh, merge_fresh, sample_fresh, force, max_steps, fingerprints) -> list[Step]:
    project = plan.project
    jobs = queue.jobs(ACTIVE, project=key)
    # A training that runs settings changed since it started is no training of them: queued again
    # (it waits for the old one: the worker runs one job of an output at a time). It was reused,
    # its LoRAs came out stale, and `run --wait` said all was done.
    outdated = {(j.kind, j.side): j for j in jobs if _outdated(j, fingerprints)}
    active = {(j.kind, j.side): j for j in jobs if (j.kind, j.side) not in outdated}
    steps: list[Step] = []
    train_ids: list[int] = []
    retrained = False
    trained_anew = False  # a training queued by this call: a merge or preview already waiting is of the LoRAs before it
    before_training: list[int] = []
    if missing:
        waiting = active.get(("reg", None))
        job = waiting or queue.enqueue("reg", key, label="class images", total=missing)
        steps.append(Step("class images", f"already {waiting.status}" if waiting else "queued", job, f"{missing} missing"))
        before_training.append(job.id)
    if plan.trained == (PAIR,):
        train_ids, retrained = _enqueue_pair(queue, plan, key, active, side_fresh[PAIR], before_training, force, max_steps, steps)
        trained_anew = bool(train_ids) and not active.get(("train", PAIR))
        twin = None
    else:
        twin = active.get(("train", TWIN))
    needed = [side for side in plan.trained if force or not side_fresh[side][0]]
    if (plan.trained != (PAIR,) and twin is None and needed == ["a", "b"] and project.info.twin_training and not active.get(("train", "a"))
            and not active.get(("train", "b")) and twin_problem(plan) is None):
        # Both sides, trained the same way: one job, one batch of two (engine.train.twin).
        reasons = {side: side_fresh[side][1] for side in ("a", "b") if side_fresh[side][1]}
        # each side's own words ("A: …; B: …"), once where both have the same ("no LoRA yet")
        reason = (next(iter(reasons.values())) if len(set(reasons.values())) == 1
                  else "; ".join(f"{side.upper()}: {why}" for side, why in reasons.items()))
        twin = queue.enqueue(
            "train", key, side=TWIN, label="train A+B",
            params={"max_steps": max_steps, "restart": force, **({"restarted": []} if force else {})},
            total=plan.side("a").total_steps, depends_on=before_training,
        )
        steps.append(Step("train A+B", "queued", twin, _after_outdated(outdated, reason)))
        trained_anew = True
        train_ids.append(twin.id)
        retrained = True
    elif twin is not None:
        steps.append(Step("train A+B", f"already {twin.status}", twin))
        train_ids.append(twin.id)
        retrained = True
    differential = is_differential(project)
    for side in ("a", "b") if twin is None and plan.trained != (PAIR,) else ():
        what = f"train {side.upper()}" + (" on A" if differential and side == "b" else "")  # as its job is named
        waiting = active.get(("train", side))
        if waiting is not None:
            steps.append(Step(what, f"already {waiting.status}", waiting))
            train_ids.append(waiting.id)
            retrained = True
            continue
        fresh, reason = side_fresh[side]
        if differential and side == "b" and retrained:
            fresh, reason = False, "A is being trained, and B trains on it"
        if fresh and not force:
            steps.append(Step(what, "up to date", reason=reason))
            continue
        # The differential route's B trains on A's finished LoRA: it waits for A's job.
        depends = before_training + (train_ids if differential and side == "b" else [])
        job = queue.enqueue(
            "train", key, side=side, label=what,
            params={"max_steps": max_steps, "restart": force, **({"restarted": []} if force else {})},
            total=plan.side(side).total_steps, depends_on=depends,
        )
        steps.append(Step(what, "queued", job, _after_outdated(outdated, reason)))
        trained_anew = True
        train_ids.append(job.id)
        retrained = True
    merge_id = None
    # The differential route's B (a one-LoRA route's LoRA) is the result: this step only re-ranks it and writes its stats.
    what = "result" if differential or plan.trained == (PAIR,) else "merge"
    waiting = None if trained_anew else active.get(("merge", None))
    if waiting is not None:
        steps.append(Step(what, f"already {waiting.status}", waiting))
        merge_id = waiting.id
    else:
        fresh, reason = merge_fresh if not retrained else (False, "its LoRAs are being trained")
        if fresh and not force:
            steps.append(Step(what, "up to date", reason=reason))
        else:
            job = queue.enqueue("merge", key, label=what, depends_on=train_ids, total=None)
            steps.append(Step(what, "queued", job, reason))
            merge_id = job.id
    # a preview of the result before this call's merge, or one started before the result on disk was written, is of another result
    waiting = active.get(("sample", None))
    if waiting is not None and ((merge_id is not None and waiting.id < merge_id) or _began_before(waiting, plan.outputs.result)):
        waiting = None
    if waiting is not None:
        steps.append(Step("preview", f"already {waiting.status}", waiting))
    else:
        fresh, reason = sample_fresh if merge_id is None else (False, "the merge is being made")
        if fresh and not force:
            steps.append(Step("preview", "up to date", reason=reason))
        else:
            total = len(project.sample.prompts) * len(project.sample.strengths) + (Check.IMAGES if differential else 0)
            job = queue.enqueue("sample", key, label="preview", depends_on=[merge_id] if merge_id else [], total=total)
            steps.append(Step("preview", "queued", job, reason))
    return steps


def _enqueue_pair(queue: Queue, plan: Plan, key: str, active: dict, fresh: tuple[bool, str], before: list[int], force: bool,
                  max_steps: int | None, steps: list[Step]) -> tuple[list[int], bool]:
    """The one-LoRA routes' one training job (side ``pair``); (its id to wait for, whether it trains)."""
    what = f"train A→B ({plan.project.info.method})"
    waiting = active.get(("train", PAIR))
    if waiting is not None:
        steps.append(Step(what, f"already {waiting.status}", waiting))
        return [waiting.id], True
    if fresh[0] and not force:
        steps.append(Step(what, "up to date", reason=fresh[1]))
        return [], False
    job = queue.enqueue("train", key, side=PAIR, label=what, params={"max_steps": max_steps, "restart": force, **({"restarted": []} if force else {})},
                        total=plan.side(PAIR).total_steps, depends_on=before)
    steps.append(Step(what, "queued", job, fresh[1]))
    return [job.id], True


def _after_outdated(outdated: dict, reason: str) -> str:
    old = next(iter(outdated.values()), None)
    if old is None:
        return reason
    return f"#{old.id} trains the settings from before your change: this one trains again after it (cancel #{old.id} to stop it now)"


def _began_before(job: Job, made: Path) -> bool:
    """Whether a running job started before ``made`` was last written (it read the one before)."""
    if job.status is not JobStatus.RUNNING or not job.started_at:
        return False
    try:
        return made.stat().st_mtime > job.started_at
    except OSError:
        return False
