"""What ``copylora run PROJECT`` puts in the queue: train A, train B, merge — minus what is
already up to date or already waiting.

A side's LoRA is up to date when its file carries the training fingerprint of the current
parameters and images and the planned step count. The merge is up to date when its file was
made from the current A and B files (by sha256) with the current [merge] settings. Anything
retrained makes the merge stale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.jobs.queue import ACTIVE, TWIN, Job, Queue
from engine.lbw_vectors import parse_lbw
from engine.merge.project_result import input_lbws, merge_inputs, result_route_matches
from engine.project.folder import load_project
from engine.project.network_weights import network_weights_path
from engine.project.plan import Plan, base_weights_for, is_differential, make_plan, twin_problem


@dataclass
class Step:
    what: str  # "class images", "train A", "train B", "merge", "preview"
    action: str  # "queued", "up to date", "already queued", "already running"
    job: Job | None = None
    reason: str = ""


def _metadata(path: Path) -> dict[str, str] | None:
    """The safetensors metadata, read from the header only (no torch needed)."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size < 100 * 2**20:
                return None
            header = json.loads(handle.read(size))
        return header.get("__metadata__", {})
    except (OSError, ValueError):
        return None


def side_up_to_date(plan: Plan, side: str) -> tuple[bool, str]:
    from engine.train.trainer import training_fingerprint

    sp = plan.side(side)
    meta = _metadata(sp.lora_path)
    if meta is None:
        return False, "no LoRA yet"
    if meta.get("copylora_fingerprint") != training_fingerprint(plan, side):
        base_weights = base_weights_for(plan, side)
        if base_weights is not None and meta.get("copylora_base_weights"):
            from engine.train.base_weights import base_weights_record

            try:
                trained_on = json.loads(meta["copylora_base_weights"])
            except ValueError:
                trained_on = None
            if trained_on != base_weights_record(base_weights):
                return False, "A or its multiplier changed since B was trained on it"
        start = network_weights_path(plan.project, side)
        recorded = meta.get("copylora_network_weights")
        if start is not None or recorded:  # [train] network_weights: the file the side starts from
            from engine.train.start_weights import start_weights_record

            try:
                started_from = json.loads(recorded) if recorded else None
            except ValueError:
                started_from = None
            if started_from != (start_weights_record(start) if start is not None else None):
                return False, "network_weights (the LoRA it starts from) changed since it was trained"
        if plan.project.reg is not None:
            return False, "parameters, images, prompts, captions or base model changed"
        return False, "parameters, images or base model changed"
    if meta.get("copylora_steps") != str(sp.total_steps):
        return False, f"trained {meta.get('copylora_steps', '?')} steps, plan says {sp.total_steps}"
    return True, str(sp.lora_path.name)


def merge_up_to_date(plan: Plan) -> tuple[bool, str]:
    from engine.hashing import file_sha256 as sha256_file

    meta = _metadata(plan.merged_path)
    if meta is None:
        return False, "no merged LoRA yet"
    try:
        made = json.loads(meta.get("copylora_merge", "{}"))
    except ValueError:
        return False, "merged file has no provenance"
    merge = plan.project.merge
    inputs, ratios = merge_inputs(plan)
    expected = [{"file": p.name, "sha256": sha256_file(p) if p.exists() else None, "ratio": r} for p, r in zip(inputs, ratios)]
    got = [{"file": i.get("file"), "sha256": i.get("sha256"), "ratio": i.get("ratio")} for i in made.get("inputs", [])]
    vectors = input_lbws(plan) or [None] * len(inputs)
    wanted_lbw = [None if v is None else [float(x) for x in parse_lbw(v)] for v in vectors]
    made_lbw = [i.get("lbw") for i in made.get("inputs", [])]
    route_ok, route_reason = result_route_matches(plan, meta)
    if not route_ok:
        return False, route_reason
    if got != expected:
        return False, "B changed since the result was made" if is_differential(plan.project) else "A or B changed since the merge"
    if made.get("new_rank") != merge.new_rank or made.get("new_conv_rank") != (merge.new_conv_rank or merge.new_rank):
        return False, "[merge] ranks changed"
    if [None if v is None else [float(x) for x in v] for v in made_lbw] != wanted_lbw:
        return False, "[merge] lbws changed"
    return True, plan.merged_path.name


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
    side_fresh = {side: side_up_to_date(plan, side) for side in ("a", "b")}
    merge_fresh = merge_up_to_date(plan)
    sample_fresh = sample_up_to_date(plan)
    with queue.transaction():
        return _enqueue_missing(queue, plan, key, missing, side_fresh, merge_fresh, sample_fresh, force, max_steps)


def _enqueue_missing(queue, plan, key, missing, side_fresh, merge_fresh, sample_fresh, force, max_steps) -> list[Step]:
    project = plan.project
    active = {(j.kind, j.side): j for j in queue.jobs(ACTIVE, project=key)}
    steps: list[Step] = []
    train_ids: list[int] = []
    retrained = False
    before_training: list[int] = []
    if missing:
        waiting = active.get(("reg", None))
        job = waiting or queue.enqueue("reg", key, label="class images", total=missing)
        steps.append(Step("class images", f"already {waiting.status}" if waiting else "queued", job, f"{missing} missing"))
        before_training.append(job.id)
    twin = active.get(("train", TWIN))
    needed = [side for side in ("a", "b") if force or not side_fresh[side][0]]
    if (twin is None and needed == ["a", "b"] and project.info.twin_training and not active.get(("train", "a"))
            and not active.get(("train", "b")) and twin_problem(plan) is None):
        # Both sides, trained the same way: one job, one batch of two (engine.train.twin).
        reason = "; ".join(side_fresh[side][1] for side in ("a", "b") if side_fresh[side][1])
        twin = queue.enqueue(
            "train", key, side=TWIN, label="train A+B",
            params={"max_steps": max_steps, "restart": force},
            total=plan.side("a").total_steps, depends_on=before_training,
        )
        steps.append(Step("train A+B", "queued", twin, reason))
        train_ids.append(twin.id)
        retrained = True
    elif twin is not None:
        steps.append(Step("train A+B", f"already {twin.status}", twin))
        train_ids.append(twin.id)
        retrained = True
    differential = is_differential(project)
    for side in ("a", "b") if twin is None else ():
        what = f"train {side.upper()}"
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
            "train", key, side=side, label=f"train {side.upper()}" + (" on A" if differential and side == "b" else ""),
            params={"max_steps": max_steps, "restart": force},
            total=plan.side(side).total_steps, depends_on=depends,
        )
        steps.append(Step(what, "queued", job, reason))
        train_ids.append(job.id)
        retrained = True
    merge_id = None
    # The differential route's B is the result: this step only re-ranks it and writes its stats.
    what = "result" if differential else "merge"
    waiting = active.get(("merge", None))
    if waiting is not None:
        steps.append(Step(what, f"already {waiting.status}", waiting))
        merge_id = waiting.id
    else:
        fresh, reason = merge_fresh if not retrained else (False, "A or B is being trained")
        if fresh and not force:
            steps.append(Step(what, "up to date", reason=reason))
        else:
            job = queue.enqueue("merge", key, label=what, depends_on=train_ids, total=None)
            steps.append(Step(what, "queued", job, reason))
            merge_id = job.id
    waiting = active.get(("sample", None))
    if waiting is not None:
        steps.append(Step("preview", f"already {waiting.status}", waiting))
    else:
        fresh, reason = sample_fresh if merge_id is None else (False, "the merge is being made")
        if fresh and not force:
            steps.append(Step("preview", "up to date", reason=reason))
        else:
            total = len(project.sample.prompts) * len(project.sample.strengths) + (CHECK_IMAGES if differential else 0)
            job = queue.enqueue("sample", key, label="preview", depends_on=[merge_id] if merge_id else [], total=total)
            steps.append(Step("preview", "queued", job, reason))
    return steps


def grid_path(plan: Plan) -> Path:
    return plan.samples_dir / f"{plan.merged_path.stem}-grid.png"


# The differential route's preview adds one check row (engine.train.sample.route_check): A, then
# A with the result (which should draw picture B); the third column is picture B itself.
CHECK_IMAGES = 2


def check_path(plan: Plan) -> Path:
    return plan.samples_dir / f"{plan.merged_path.stem}-check.png"


def _png_record(path: Path) -> dict | None:
    try:
        from PIL import Image

        with Image.open(path) as image:
            return json.loads(image.text.get("copylora", "{}"))
    except (OSError, ValueError):
        return None


def sample_up_to_date(plan: Plan) -> tuple[bool, str]:
    """The preview grid is up to date when it shows the current merged file with the current [sample]."""
    from dataclasses import asdict

    from engine.hashing import file_sha256 as sha256_file

    path = grid_path(plan)
    if not path.is_file() or not plan.merged_path.is_file():
        return False, "no preview yet"
    record = _png_record(path)
    if record is None:
        return False, "unreadable preview"
    merged_sha = sha256_file(plan.merged_path)
    if record.get("lora_sha256") != merged_sha:
        return False, "the merged LoRA changed"
    if record.get("project_sample") != asdict(plan.project.sample):  # older grids lack it: drawn again once
        return False, "[sample] changed"
    if is_differential(plan.project):
        check = _png_record(check_path(plan)) if check_path(plan).is_file() else None
        a_path = plan.side("a").lora_path
        if check is None or check.get("lora_sha256") != merged_sha or check.get("a_sha256") != (sha256_file(a_path) if a_path.is_file() else None):
            return False, "no check picture of the current A and result"
    return True, path.name
