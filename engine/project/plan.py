"""The derived plan of a project, computed in one place.

Everything the CLI, the app, the queue and the trainer need to know *before* training: how
many steps each side runs (images x repeats x epochs / batch, the sd-scripts arithmetic), the
bucket each teacher image is trained at, and where every output file goes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from engine.project.folder import SIDES, Project
from engine.project.images import ImageInfo, image_files, read_image_info
from engine.project.params import TrainParams

BUCKET_STEP = 64
# Default [train].resolution of a new project (``copylora new``) by base-model family. SD1/SD2:
# the recipe's 600x900. SDXL: 832x1216, SDXL's own 2:3 bucket (about 1024x1024 pixels): the
# same portrait shape at SDXL's scale. [1024, 1024] would cap the longest side at 1024, so a
# 2:3 teacher would train at 640x1024, well below SDXL's native area.
DEFAULT_RESOLUTION = {"sdxl": [832, 1216]}
SD_RESOLUTION = [600, 900]


def default_resolution(family: str | None) -> list[int]:
    """The default ``[width, height]`` of training buckets (and previews) for a model family."""
    return list(DEFAULT_RESOLUTION.get(family or "", SD_RESOLUTION))


def bucket_size(width: int, height: int, resolution: list[int] | tuple[int, int], step: int = BUCKET_STEP) -> tuple[int, int]:
    """The training size for an image: aspect kept, area <= W*H, longest side <= max(W, H),
    both sides multiples of ``step`` (at least one step).

    The image is scaled (up or down) to the largest such size and then cropped by less than
    one ``step`` on each axis to land on the multiple of 64 that the U-Net needs.
    """
    max_w, max_h = resolution
    scale = min(math.sqrt(max_w * max_h / (width * height)), max(max_w, max_h) / max(width, height))
    w = max(step, int(width * scale) // step * step)
    h = max(step, int(height * scale) // step * step)
    return w, h


@dataclass(frozen=True)
class SidePlan:
    side: str
    folder: Path
    images: tuple[ImageInfo, ...]
    buckets: tuple[tuple[int, int], ...]
    repeats: int
    repeats_source: str
    batch_size: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    reg_images: int
    lora_path: Path
    run_dir: Path
    params: TrainParams


@dataclass(frozen=True)
class Plan:
    project: Project
    sides: dict[str, SidePlan]
    merged_path: Path
    stats_path: Path
    samples_dir: Path

    def side(self, side: str) -> SidePlan:
        return self.sides[side.lower()]


def output_paths(project: Project) -> dict[str, Path]:
    out = project.output_dir()
    name = project.name
    return {
        "a": out / f"{name}_A.safetensors",
        "b": out / f"{name}_B.safetensors",
        "merged": out / f"{name}.safetensors",
        "stats": out / f"{name}.stats.json",
        "samples": out / "samples",
        "runs": out / "runs",
    }


def steps_for(num_images: int, params: TrainParams, reg_images: int = 0) -> tuple[int, int, int]:
    """(steps_per_epoch, epochs, total_steps) as sd-scripts counts them.

    With regularisation images each epoch also shows as many class images as teacher images
    (sd-scripts pairs them), which doubles the steps per epoch.
    """
    samples = num_images * params.num_repeats * (2 if reg_images else 1)
    per_epoch = max(1, math.ceil(samples / params.train_batch_size))
    if params.max_train_steps is not None:
        return per_epoch, math.ceil(params.max_train_steps / per_epoch), params.max_train_steps
    epochs = params.max_train_epochs or 1
    return per_epoch, epochs, per_epoch * epochs


def make_plan(project: Project, *, max_steps: int | None = None) -> Plan:
    """The plan for a loaded (valid) project. ``max_steps`` caps both sides (CLI --max-steps)."""
    paths = output_paths(project)
    reg_images = 0
    if project.reg is not None:
        folder = project.root / project.reg.folder
        reg_images = max(project.reg.num_class_images, len(image_files(folder)) if folder.is_dir() else 0)
    sides = {}
    for side in SIDES:
        params = project.side_params(side)
        if max_steps is not None:
            params = _with_steps(params, max_steps)
        folder = project.side_folder(side)
        # headers only: load_project has decoded each picture once already
        images = tuple(read_image_info(p, decode=False) for p in image_files(folder))
        per_epoch, epochs, total = steps_for(len(images), params, reg_images)
        sides[side] = SidePlan(
            side=side,
            folder=folder,
            images=images,
            buckets=tuple(bucket_size(i.width, i.height, params.resolution) for i in images),
            repeats=params.num_repeats,
            repeats_source=project.repeats_source(side),
            batch_size=params.train_batch_size,
            steps_per_epoch=per_epoch,
            epochs=epochs,
            total_steps=total,
            reg_images=reg_images,
            lora_path=paths[side],
            run_dir=paths["runs"] / side.upper(),
            params=params,
        )
    return Plan(project=project, sides=sides, merged_path=paths["merged"], stats_path=paths["stats"], samples_dir=paths["samples"])


def plan_warnings(plan: Plan) -> list[str]:
    """What will train but probably not as meant (``check``, the form and the job log say it):
    pictures far smaller than their bucket, pictures so large they are slow to decode."""
    from engine.project.images import picture_warnings

    warnings: list[str] = []
    for side, sp in plan.sides.items():
        for info, bucket in zip(sp.images, sp.buckets):
            warnings += picture_warnings(info, bucket, f"{side}.folder")
    return warnings


def _with_steps(params: TrainParams, max_steps: int) -> TrainParams:
    from dataclasses import replace

    return replace(params, max_train_epochs=None, max_train_steps=max_steps)


@dataclass(frozen=True)
class BaseWeights:
    """What the differential route applies to the base while B trains: A's LoRA at a strength,
    as a frozen LoRA (exact, fp32) or merged into the weights (sd-scripts' way)."""

    path: Path
    multiplier: float
    merge: bool


def is_differential(project: Project) -> bool:
    return project.info.method == "differential"


def base_weights_for(plan: Plan, side: str) -> BaseWeights | None:
    """The LoRA applied under ``side``'s training: A's, for B in the differential route."""
    if side.lower() != "b" or not is_differential(plan.project):
        return None
    b = plan.project.b
    return BaseWeights(plan.side("a").lora_path, b.base_weights_multiplier, b.merge_base_weights)


def twin_problem(plan: Plan) -> str | None:
    """Why A and B cannot train together, or None when they can."""
    a, b = plan.side("a"), plan.side("b")
    if is_differential(plan.project):
        return "the differential route trains B on the base with A's finished LoRA applied"
    if plan.project.reg is not None:
        return "the project has [reg] class images"
    if a.params != b.params:
        differ = sorted(k for k in a.params.__dataclass_fields__ if getattr(a.params, k) != getattr(b.params, k))
        return f"[a] and [b] set different values ({', '.join(differ)})"
    if not a.params.network_train_unet_only:
        return "the text encoder is trained too (network_train_unet_only = false)"
    if list(a.buckets) != list(b.buckets):
        return f"the pictures have different training sizes ({a.buckets[0][0]}x{a.buckets[0][1]} vs {b.buckets[0][0]}x{b.buckets[0][1]})"
    if (a.total_steps, a.steps_per_epoch, a.repeats) != (b.total_steps, b.steps_per_epoch, b.repeats):
        return f"the sides train different step counts ({a.total_steps} vs {b.total_steps})"
    return None


def training_order(plan: Plan) -> str:
    """How the queue will train the sides, in words: together (twin) or one after the other, and why."""
    if is_differential(plan.project):
        return f"A, then B on the base with A applied at {plan.project.b.base_weights_multiplier:g} (differential route)"
    if not plan.project.info.twin_training:
        return "A, then B (twin_training = false)"
    problem = twin_problem(plan)
    return "A and B together, one batch of two" if problem is None else f"A, then B: {problem}"
