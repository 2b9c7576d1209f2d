"""How an output was made, as a record it carries: the records every up-to-date decision
compares. Torch-free (file hashes and the plan only), so `copylora check`, the queue and the app
can judge files without loading a model.

- :func:`training_fingerprint`: the identity of one side's training run. A checkpoint resumes
  only into the same fingerprint; a side's LoRA is current only when it carries it.
- :func:`base_weights_record`: which A (by content) at which strength the differential route's
  B trained on; in B's fingerprint and in the result's route.
- :func:`start_weights_record`: the file a side started from (``[train] network_weights``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.hashing import remembered_sha256
from engine.project.concepts import resolve_prompt
from engine.project.copy_rule import COPY_KEYS
from engine.project.network_weights import network_weights_path

if TYPE_CHECKING:
    from engine.project.plan import BaseWeights, Plan

# Keys of [train] that change how a run goes, not what it computes, so a checkpoint resumes
# across them: the total length (``max_train_steps`` may grow to train longer), bookkeeping
# intervals, compile and CUDA graphs, TensorBoard logs, the copy checks and their stop rule (they only end a run
# sooner: a stopped LoRA records its rule, engine.project.outputs); a start file counts by its content (below), not its path.
NOT_IN_FINGERPRINT = ("max_train_epochs", "max_train_steps", "save_every_n_steps", "sample_every_n_steps", "compile", "cuda_graphs",
                      "network_weights", "log_with", "logging_dir", *COPY_KEYS)


def training_fingerprint(plan: Plan, side: str) -> str:
    """Identity of a training run: what must match for a checkpoint to be resumed, and for a
    side's LoRA to be current. Everything that changes the result except the total length and
    bookkeeping (:data:`NOT_IN_FINGERPRINT`). The base model counts by its content, class folders
    by their place in the project: a project copied to another machine, where the same base sits
    at another path, resumes and stays current."""
    return run_fingerprints(plan, side)[0]


def accepted_fingerprints(plan: Plan, side: str) -> frozenset[str]:
    """The fingerprints a checkpoint or LoRA of this training may carry: this copylora's, and
    the one copylora wrote before the base model counted by its content (its path then, class
    folders by their absolute path), so an update leaves nothing stale."""
    return frozenset(run_fingerprints(plan, side))


def run_fingerprints(plan: Plan, side: str) -> tuple[str, str]:
    """(this copylora's fingerprint, the earlier one of the same run)."""
    from engine.project.plan import base_weights_for

    sp = plan.side(side)
    params = asdict(sp.params)
    for key in NOT_IN_FINGERPRINT:
        params.pop(key, None)
    if not params.get("caption"):  # checkpoints made before the key existed trained caption-free: they stay valid
        params.pop("caption", None)
    for key, default in (("min_timestep", 0), ("max_timestep", 1000), ("max_token_length", 75)):  # likewise: as before the keys
        if params.get(key) == default:
            params.pop(key, None)
    from engine.project.pair_route import PAIR

    if side.lower() != PAIR:  # only the one-LoRA routes train at it
        params.pop("pair_multiplier", None)
    images = [remembered_sha256(i.path) for i in sp.images]
    base = plan.project.base_model_path()
    payload: dict[str, Any] = {"params": params, "images": images, "base": base, "family": plan.project.info.model_family}
    if side.lower() == PAIR:  # one LoRA of both pictures, by its route
        payload["route"] = plan.project.info.method
        payload["b_images"] = [remembered_sha256(i.path) for i in plan.side("b").images]
    if plan.project.reg is not None:  # the DreamBooth flow: what each picture trains on is part of the run
        payload["dreambooth"] = dreambooth_record(plan, side)
    base_weights = base_weights_for(plan, side)
    if base_weights is not None:  # the differential route's B is trained on base + A: a new A makes it stale
        payload["base_weights"] = base_weights_record(base_weights)
    start = network_weights_path(plan.project, side)
    if start is not None:  # [train] network_weights: a changed start file makes the side stale
        payload["network_weights"] = start_weights_record(start)
    earlier = _hash(payload)
    payload["base"] = base_identity(base)
    if "dreambooth" in payload:
        payload["dreambooth"] = {**payload["dreambooth"], "classes": [{**c, "folder": _in_project(c["folder"], plan.project.root)}
                                                                      for c in payload["dreambooth"]["classes"]]}
    return _hash(payload), earlier


def _hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _in_project(folder: str, root: Path) -> str:
    """A folder as the project names it: relative to the project where it is inside it."""
    try:
        return Path(folder).relative_to(root).as_posix()
    except ValueError:
        return folder


def base_identity(spec: str) -> str:
    """The base model by its content (engine.project.model_identity), or ``spec`` itself where
    it is no file or folder here (a built-in model's name, a path not on this machine)."""
    from engine.project.model_identity import model_identity

    return model_identity(spec) or spec


def dreambooth_record(plan: Plan, side: str) -> dict[str, Any]:
    """A [reg] run's prompts and pictures beyond the side's own: each picture's resolved prompt
    (a changed caption file makes the checkpoints stale), each concept's pictures and repeats,
    the class folders and prompts."""
    from engine.project.concepts import class_sets

    sp = plan.side(side)
    reg = plan.project.reg
    assert reg is not None, "only a [reg] project has a DreamBooth record"
    extension = reg.caption_extension
    concepts = [{"images": [remembered_sha256(i.path) for i in c.images], "repeats": c.repeats,
                 "prompts": [resolve_prompt(c.instance_prompt, i.path, extension) for i in c.images]} for c in sp.concepts]
    return {
        "prompts": [resolve_prompt(reg.instance_prompt, i.path, extension) for i in sp.images],
        "concepts": concepts,
        "classes": [{"folder": str(c.folder), "prompt": c.prompt, "repeats": c.repeats} for c in class_sets(plan.project)],
        "prior_loss_weight": reg.prior_loss_weight,
    }


def base_weights_record(base_weights: BaseWeights) -> dict[str, Any]:
    """What B's fingerprint and the result's metadata record of A: which file (by content),
    at which strength, applied which way. A file not there yet records None (B is then stale)."""
    path = base_weights.path
    return {
        "file": path.name,
        "sha256": remembered_sha256(path) if path.is_file() else None,
        "multiplier": base_weights.multiplier,
        "merged": base_weights.merge,
    }


def start_weights_record(path: Path) -> dict[str, Any]:
    """What the fingerprint and the LoRA's metadata record of a start file: its name and content
    hash (None when it is missing: the side is then stale, and check says why)."""
    return {"file": path.name, "sha256": remembered_sha256(path) if path.is_file() else None}
