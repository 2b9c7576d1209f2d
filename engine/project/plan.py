"""The derived plan of a project, computed in one place.

Everything the CLI, the app, the queue and the trainer need to know *before* training: how
many steps each side runs (images x repeats x epochs / batch, the sd-scripts arithmetic), the
bucket each teacher image is trained at, and where every output file goes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import Problem, ValidationError
from engine.project.epoch_buckets import batches_per_epoch, class_pool, teacher_buckets, with_class_items
from engine.project.folder import SIDES, Project
from engine.project.images import ImageInfo, image_files, read_image_info
from engine.project.outputs import OutputPaths
from engine.project.params import MAX_SIDE, MAX_STEPS, MIN_SIDE, TrainParams

BUCKET_STEP = 64
# Default [train].resolution of a new project (``copylora new``) by base-model family. SD1/SD2:
# the recipe's 600x900. SDXL: 832x1216, SDXL's own 2:3 bucket (about 1024x1024 pixels): the
# same portrait shape at SDXL's scale. [1024, 1024] would cap the longest side at 1024, so a
# 2:3 teacher would train at 640x1024, well below SDXL's native area.
DEFAULT_RESOLUTION = {"sdxl": [832, 1216]}
SD_RESOLUTION = [600, 900]


def default_resolution(family: str | None) -> list[int]:
    """The default ``[width, height]`` of training buckets (and previews) for a model family."""
    return list(DEFAULT_RESOLUTION.get((family or "").split("-")[0], SD_RESOLUTION))  # sdxl-v: SDXL's


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
class ConceptPlan:
    """A further concept ([[concept]] N) as one side trains it: its pictures at the side's
    buckets, its repeats, its instance prompt (``[filewords]`` unresolved)."""

    number: int
    folder: Path
    images: tuple[ImageInfo, ...]
    buckets: tuple[tuple[int, int], ...]
    repeats: int
    repeats_source: str
    instance_prompt: str

    @property
    def samples(self) -> int:
        return len(self.images) * self.repeats


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
    concepts: tuple[ConceptPlan, ...] = ()
    # The items one epoch shows, by bucket (class pictures included): (bucket, count), largest first.
    epoch_buckets: tuple[tuple[tuple[int, int], int], ...] = ()

    @property
    def teacher_samples(self) -> int:
        """Teacher pictures shown per epoch: the side's own × repeats, plus each concept's."""
        return len(self.images) * self.repeats + sum(c.samples for c in self.concepts)


@dataclass(frozen=True)
class Plan:
    project: Project
    sides: dict[str, SidePlan]
    outputs: OutputPaths  # where every output goes (engine.project.outputs: also whether each is current)

    def side(self, side: str) -> SidePlan:
        return self.sides[side.lower()]

    @property
    def trained(self) -> tuple[str, ...]:
        """The LoRAs the route trains: A and B, or the one-LoRA routes' ``pair``
        (engine.project.pair_route); ``sides`` also holds A and B there, for their pictures."""
        from engine.project.pair_route import PAIR

        return (PAIR,) if PAIR in self.sides else ("a", "b")

    @property
    def merged_path(self) -> Path:
        return self.outputs.result

    @property
    def stats_path(self) -> Path:
        return self.outputs.stats

    @property
    def samples_dir(self) -> Path:
        return self.outputs.samples


def output_paths(project: Project) -> OutputPaths:
    from engine.project.output_owner import shared_output

    return OutputPaths(project.output_dir(), project.name, shared_output(project.root, project.output_dir()))


def steps_for(items_per_bucket: Mapping[tuple[int, int], int], params: TrainParams) -> tuple[int, int, int]:
    """(steps_per_epoch, epochs, total_steps) as sd-scripts counts them, from the items one
    epoch shows by bucket (engine.project.epoch_buckets): each bucket's in batches of its own."""
    per_epoch = batches_per_epoch(items_per_bucket, params.train_batch_size)
    if params.max_train_steps is not None:
        return per_epoch, math.ceil(params.max_train_steps / per_epoch), params.max_train_steps
    epochs = params.max_train_epochs or 1
    return per_epoch, epochs, per_epoch * epochs


def epoch_items(project: Project, params: TrainParams, buckets: tuple, concepts: tuple[ConceptPlan, ...], reg_images: int) -> Counter:
    """The items one epoch shows a side, by bucket: its teacher pictures × repeats, each further
    concept's, and about as many class pictures (sd-scripts pools every class subset and draws it
    up to the teacher count, engine.project.epoch_buckets.class_draws: about twice the items)."""
    teachers = teacher_buckets(buckets, params.num_repeats, ((c.buckets, c.repeats) for c in concepts))
    return with_class_items(teachers, class_pool(project, params.resolution)) if reg_images else teachers


def make_plan(project: Project, *, max_steps: int | None = None) -> Plan:
    """The plan for a loaded (valid) project. ``max_steps`` caps both sides (CLI --max_steps),
    within the range [train] max_train_steps allows."""
    if max_steps is not None and not 1 <= max_steps <= MAX_STEPS:
        raise ValidationError([Problem("--max_steps", f"must be between 1 and {MAX_STEPS:,}, got {max_steps}")])
    paths = output_paths(project)
    from engine.project.concepts import class_sets

    reg_images = sum(s.size() for s in class_sets(project))
    sides = {}
    for side in SIDES:
        params = project.side_params(side)
        if max_steps is not None:
            params = _with_steps(params, max_steps)
        folder = project.side_folder(side)
        # headers only: load_project has decoded each picture once already
        images = tuple(read_image_info(p, decode=False) for p in image_files(folder))
        concepts = _concept_plans(project, params)
        buckets = tuple(bucket_size(i.width, i.height, params.resolution) for i in images)
        items = epoch_items(project, params, buckets, concepts, reg_images)
        per_epoch, epochs, total = steps_for(items, params)
        sides[side] = SidePlan(
            side=side,
            folder=folder,
            images=images,
            buckets=buckets,
            repeats=params.num_repeats,
            repeats_source=project.repeats_source(side),
            batch_size=params.train_batch_size,
            steps_per_epoch=per_epoch,
            epochs=epochs,
            total_steps=total,
            reg_images=reg_images,
            lora_path=paths.lora(side),
            run_dir=paths.run_dir(side),
            params=params,
            concepts=concepts,
            epoch_buckets=tuple(items.most_common()),
        )
    from engine.project.pair_route import PAIR, is_pair_route

    if is_pair_route(project):  # one LoRA on the pair: A's pictures, buckets and settings (B's must match: check says so)
        from dataclasses import replace

        sides[PAIR] = replace(sides["a"], side=PAIR, lora_path=paths.lora(PAIR), run_dir=paths.run_dir(PAIR))
    return Plan(project=project, sides=sides, outputs=paths)


def concept_rows(plan: Plan) -> list[dict]:
    """The DreamBooth flow's concepts as ``check`` shows them: each side's own pictures under
    [reg]'s instance prompt, then each [[concept]] (the same for both sides), with the pictures
    each adds per epoch and their share of the steps (class pictures double it, as sd-scripts
    pairs one with each teacher picture).

    A share is the batches the concept's own items make, bucket by bucket (a batch holds one
    bucket); with several buckets and batches over 1, batches of one bucket may mix concepts,
    so the shares can add up to more than the side's steps per epoch (the plan's count)."""
    from engine.project.concepts import class_sets

    project = plan.project
    if project.reg is None:
        return []
    doubled = 2 if plan.side("a").reg_images else 1

    def share(buckets, repeats: int, batch: int) -> int:
        return sum(math.ceil(n * doubled / batch) for n in teacher_buckets(buckets, repeats, ()).values())

    rows = []
    for side, sp in plan.sides.items():
        rows.append({"concept": f"{side.upper()}'s pictures", "key": "reg", "folder": str(sp.folder), "images": len(sp.images),
                     "repeats": sp.repeats, "prompt": project.reg.instance_prompt, "samples_per_epoch": len(sp.images) * sp.repeats,
                     "steps_per_epoch": share(sp.buckets, sp.repeats, sp.batch_size)})
    a = plan.side("a")
    for concept in a.concepts:
        rows.append({"concept": f"concept[{concept.number}]", "key": f"concept[{concept.number}]", "folder": str(concept.folder),
                     "images": len(concept.images), "repeats": concept.repeats, "prompt": concept.instance_prompt,
                     "samples_per_epoch": concept.samples,
                     "steps_per_epoch": share(concept.buckets, concept.repeats, a.batch_size)})
    for class_set in class_sets(project):
        rows.append({"concept": f"class ({class_set.key})", "key": class_set.key, "folder": str(class_set.folder),
                     "images": class_set.size(), "to_generate": class_set.missing(), "repeats": class_set.repeats,
                     "prompt": class_set.prompt, "is_reg": True})
    return rows


def _concept_plans(project: Project, params: TrainParams) -> tuple[ConceptPlan, ...]:
    from engine.project.concepts import concept_repeats

    plans = []
    for number, concept in enumerate(project.concepts, start=1):
        folder = project.root / concept.folder
        images = tuple(read_image_info(p, decode=False) for p in image_files(folder)) if folder.is_dir() else ()
        repeats, source = concept_repeats(concept)
        plans.append(ConceptPlan(number, folder, images, tuple(bucket_size(i.width, i.height, params.resolution) for i in images),
                                 repeats, source, concept.instance_prompt))
    return tuple(plans)


def plan_warnings(plan: Plan) -> list[str]:
    """What will train but probably not as meant (``check``, the form and the job log say it):
    pictures far smaller than their bucket, transparent, or so large they are slow to decode;
    A and B the same picture, or of different sizes."""
    from engine.project.images import pair_warnings, picture_warnings

    warnings: list[str] = []
    for side, sp in plan.sides.items():
        for info, bucket in zip(sp.images, sp.buckets):
            warnings += picture_warnings(info, bucket, f"{side}.folder")
        for concept in sp.concepts if side == "a" else ():  # the same pictures for both sides: said once
            for info, bucket in zip(concept.images, concept.buckets):
                warnings += picture_warnings(info, bucket, f"concept[{concept.number}].folder")
    warnings += pair_warnings(plan.side("a").images, plan.side("b").images)
    warnings += area_warnings(plan)
    from engine.project.graph_rule import graph_warnings
    from engine.project.pair_route import route_warnings
    from engine.project.scaffold import toy_caption_warnings  # scaffold imports this module: here, not at the top

    return (warnings + caption_warnings(plan.project) + folder_token_warnings(plan.project) + schedule_warnings(plan.project)
            + sample_prompt_warnings(plan.project) + untrained_prompt_warnings(plan) + prior_prompt_warnings(plan.project)
            + toy_caption_warnings(plan)
            + route_warnings(plan) + graph_warnings(plan) + earlier_run_warnings(plan) + missing_output_warnings(plan)
            + room_warnings(plan))


# What a side's training writes, where nothing of it is on disk yet to measure: two checkpoints
# kept, the LoRA, a few previews. A real SD1.5 rank-8 side with AdamW8bit: ~40 MB a checkpoint.
ROOM_GUESS = {"builtin": 20 << 20, "checkpoint": 256 << 20}


def room_warnings(plan: Plan) -> list[str]:
    """Too little room on the output folder's disk for what the training writes: `check` said
    valid and `run` queued on a disk with nothing free, and the training ended at its first
    checkpoint (or, before copylora waited for room, lost its LoRA at the end). Measured from
    the checkpoints and LoRAs this project has written before, where there are some."""
    import shutil

    from engine.files import free_text, nearest_folder

    folder = nearest_folder(plan.outputs.folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return []
    sizes = []
    for side in plan.trained:
        try:
            states = [p.stat().st_size for p in plan.side(side).run_dir.glob("state-*.pt")]
            lora = plan.side(side).lora_path.stat().st_size if plan.side(side).lora_path.is_file() else 0
        except OSError:
            states, lora = [], 0
        if states or lora:
            sizes.append(3 * max(states, default=2 * lora) + 2 * lora)  # the kept two and the one written beside them; LoRA and snapshot
        else:
            builtin = plan.project.info.base_model in ("tiny", "tiny-sdxl", "toy")
            sizes.append(ROOM_GUESS["builtin" if builtin else "checkpoint"])
    needed = sum(sizes)
    if free >= needed:
        return []
    return [f"project.output_dir: the disk of {folder} has {free_text(folder)}, and a training of this project writes about "
            f"{needed / 1e6:.0f} MB (checkpoints, LoRAs, previews): free some first (df -h {folder}); a training that finds "
            "the disk full waits for room before it writes its LoRA"]


def missing_output_warnings(plan: Plan) -> list[str]:
    """An output folder outside the project that is not there: a project copied from another
    machine whose output_dir names that machine's folder showed every output "missing", and `run`
    would make the folder anew and train everything again."""
    folder = plan.outputs.folder
    try:
        if not plan.outputs.shared or folder.exists():
            return []
    except OSError:
        return []
    return [f"project.output_dir: {folder} does not exist yet (made when training starts): if this project was moved from another "
            "machine or folder, point output_dir at where its LoRAs and checkpoints are now, or they are trained again"]


def earlier_run_warnings(plan: Plan) -> list[str]:
    """Checkpoints an earlier copylora left in a shared output folder's ``runs/A``: run folders
    there are ``runs/NAME/A`` now (engine.project.output_owner), so a resume would not find them."""
    if not plan.outputs.shared:
        return []
    old_runs = plan.outputs.folder / "runs"
    found = []
    for side in sorted(plan.sides):
        try:  # engine.train.checkpoint's state files (the layers keep this module from importing it)
            if any((old_runs / side.upper()).glob("state-*.pt")) and not any(plan.side(side).run_dir.glob("state-*.pt")):
                found.append(side.upper())
        except OSError:
            continue
    if not found:
        return []
    import shlex

    moves = f"mkdir -p {shlex.quote(str(plan.outputs.runs))} && " + " && ".join(
        f"mv {shlex.quote(str(old_runs / s))} {shlex.quote(str(plan.outputs.runs / s))}" for s in found)
    return [f"project.output_dir: {old_runs} holds checkpoints of side {' and '.join(found)} in the layout of an earlier copylora "
            f"(one project per output folder); this folder's run folders are now per project name: if they are this "
            f"project's, move them to resume them ({moves})"]


def prior_prompt_warnings(project: Project) -> list[str]:
    """Class pictures under the very prompt of the teacher pictures: prior preservation then
    trains the LoRA toward the class pictures on the prompt it should learn the teachers on (a
    kohya_ss config's reg_data_dir imports with both prompts empty: kohya took them from its
    folders' names, "5_sks girl" and "1_girl")."""
    from engine.project.concepts import class_sets

    reg = project.reg
    if reg is None:
        return []
    said = []
    for instance, owner in [(reg.instance_prompt, "reg"), *((c.instance_prompt, f"concept[{n}]") for n, c in enumerate(project.concepts, 1))]:
        for class_set in class_sets(project):
            if class_set.key == owner and class_set.prompt.strip() == instance.strip():
                said.append(f"{owner}.class_prompt: the class pictures train under {class_set.prompt!r}, the prompt of the teacher "
                            f"pictures ({owner}.instance_prompt): prior preservation then pulls the LoRA back to the class "
                            "pictures on the prompt it learns the teachers on; give the teachers a prompt of their own "
                            '(e.g. "sks girl" against "girl")')
    return said


def sample_prompt_warnings(project: Project) -> list[str]:
    """``[filewords]`` in a preview prompt: a preview has no picture to read a caption of, so it
    was drawn (and labelled, and recorded) as the literal text."""
    from engine.project.concepts import uses_filewords

    return [f"sample.prompts[{i}]: {prompt!r} has [filewords], which only a training picture's caption fills: the preview "
            "draws it as written; give the words a caption would hold" for i, prompt in enumerate(project.sample.prompts)
            if uses_filewords(prompt)]


def untrained_prompt_warnings(plan: Plan) -> list[str]:
    """Every preview prompt one the pair trains under ("" caption-free, the default on a
    checkpoint): the grid then shows the copy of the teacher pictures, not what the method claims
    (DESIGN: "the wanted change, on any prompt, and nothing else"), and a result that only copies
    B passes it. Not for [reg] projects (a prompt per picture) nor the random-weight built-in
    models, whose pictures show nothing either way."""
    project = plan.project
    if project.reg is not None or project.info.base_model in ("tiny", "tiny-sdxl"):
        return []

    def words(prompt: str) -> str:
        return " ".join(prompt.lower().split())  # as CLIP reads it: case and spacing do not count

    trained = {words(plan.side(side).params.caption) for side in plan.trained}
    if not project.sample.prompts or any(words(prompt) not in trained for prompt in project.sample.prompts):
        return []
    shown = " and ".join(repr(prompt) for prompt in dict.fromkeys(project.sample.prompts))
    return [f"sample.prompts: only {shown}, which the LoRAs train under: the preview grid shows the copy, not the change on a "
            'prompt never trained; add one, e.g. prompts = ["", "1girl, upper body, outdoors"]']


def schedule_warnings(project: Project) -> list[str]:
    """Warm-up steps with the constant schedule: it has none (diffusers drops them without a word;
    sd-scripts refuses the pair). A warning, not a refusal: projects saved so have trained as
    if they were 0, and their LoRAs and checkpoints stay theirs (the steps are in the fingerprint)."""
    said: dict[tuple[str, str], list[str]] = {}
    for side in SIDES:
        effective = project.side_params(side)
        if effective.lr_scheduler == "constant" and effective.lr_warmup_steps > 0:
            overrides = project.side(side).overrides
            sources = (side if "lr_warmup_steps" in overrides else "train", side if "lr_scheduler" in overrides else "train")
            said.setdefault(sources, []).append(side.upper())
    warnings = []
    for (warmup, scheduler), sides in said.items():
        steps = project.side_params(sides[0].lower()).lr_warmup_steps
        warnings.append(f"{warmup}.lr_warmup_steps: {steps} warm-up steps do nothing with {scheduler}.lr_scheduler \"constant\" "
                        f"({' and '.join(sides)} train{'' if len(sides) > 1 else 's'} at the full rate from the first step; sd-scripts refuses the pair): "
                        f"\"constant_with_warmup\" warms up")
    return warnings


AREA_WARN = 0.70  # a bucket of less than this share of resolution's area is said (the longest side's cap bit)


def area_warnings(plan: Plan) -> list[str]:
    """A picture whose bucket is far below ``resolution``'s area: its longest side met the cap of
    max(W, H) (a 2:3 picture at [1024, 1024] trains at 640×1024, 62 % of the pixels). kohya's
    buckets, from a ``resolution = 1024,1024`` a user imports, let a side reach
    max_bucket_reso (1024, or the 2048 of kohya_ss' presets) at that area: said, with the
    resolution of the picture's own shape at that area (never past its own size: a small
    picture's bucket is small by its size, not by the cap), and the bucket it gives. A and B of
    one size are said once."""
    found: dict[tuple, list[str]] = {}
    for side in SIDES:  # (the one-LoRA routes' "pair" trains these same pictures)
        sp = plan.side(side)
        width, height = sp.params.resolution
        area = width * height
        for info, bucket in zip(sp.images, sp.buckets):
            share = bucket[0] * bucket[1] / area
            if share >= AREA_WARN:
                continue
            scale = min(math.sqrt(area / (info.width * info.height)), 1.0)
            own = [max(1, round(info.width * scale)), max(1, round(info.height * scale))]
            # within what [train] resolution takes: a 20:1 picture's own shape at 128×192's area
            # was [701, 35], which check then refused (each side at least 64)
            shaped = [min(max(side, MIN_SIDE), MAX_SIDE) for side in own]
            better = bucket_size(info.width, info.height, shaped)
            if better[0] * better[1] < 1.2 * bucket[0] * bucket[1]:
                continue  # nothing much to gain: the picture itself is not much larger than its bucket
            key = (info.width, info.height, width, height, bucket, tuple(shaped), better, share, shaped != own)
            found.setdefault(key, []).append(f"{side}.folder {info.path.name}")
    warnings = []
    for (w, h, width, height, bucket, shaped, better, share, bounded), where in found.items():
        shape = (f"the picture's shape at that area, within {MIN_SIDE}..{MAX_SIDE} pixels a side" if bounded
                 else "the picture's own shape at that area")
        warnings.append(f"{', '.join(where)}: {'their' if len(where) > 1 else 'its'} {w}×{h} trains at {bucket[0]}×{bucket[1]}, "
                        f"{share:.0%} of resolution's {width}×{height} area (the longest side is capped at {max(width, height)}); "
                        f"resolution = {list(shaped)} ({shape}) trains it at {better[0]}×{better[1]}")
    return warnings

def folder_token_warnings(project: Project) -> list[str]:
    """A kohya folder name's words (``5_sks girl``): sd-scripts trains the folder's pictures that
    have no caption file beside them on those words; copylora takes the repeats from the name
    and trains on ``[train] caption``. A kohya user's copier was conditioned on those words,
    this one would not be: said, with the key that matches it (pictures with caption files are
    :func:`caption_warnings`')."""
    from engine.project.concepts import CAPTION_SUFFIXES, caption_path
    from engine.project.folder import folder_repeats, kohya_folder_words

    if project.reg is not None:  # the DreamBooth flow's prompts are its own keys
        return []
    words = {side: kohya_folder_words(project.side(side).folder) for side in SIDES}
    warnings = []
    for side in SIDES:
        caption = project.side_params(side).caption
        if not words[side] or words[side] == caption:
            continue
        folder = project.side_folder(side)
        uncaptioned = [p for p in (image_files(folder) if folder.is_dir() else [])
                       if not any(caption_path(p, suffix).is_file() for suffix in CAPTION_SUFFIXES)]
        if not uncaptioned:
            continue
        key = "train" if "caption" not in project.side(side).overrides and len(set(words.values())) == 1 else side
        warnings.append(f"{side}.folder: kohya trains the pictures of {Path(project.side(side).folder).name!r} on the caption "
                        f"{words[side]!r} (the words of its folder name); copylora trains them on {key}.caption ({caption!r}): "
                        f"set [{key}] caption = {words[side]!r} to train as kohya did, or rename the folder "
                        f"{folder_repeats(project.side(side).folder)}_ (the same repeats, no words)")
    return warnings

def caption_warnings(project: Project) -> list[str]:
    """Caption files that will not be read: beside pictures whose prompt has no ``[filewords]``
    (every picture of a caption-free copy-machine project). Users coming from kohya put
    ``.txt`` captions beside their pictures by habit; training without them must be said."""
    from engine.project.concepts import CAPTION_SUFFIXES, unused_caption_files, uses_filewords

    reg = project.reg
    extensions = tuple(dict.fromkeys((*CAPTION_SUFFIXES, *((reg.caption_extension,) if reg else ()))))
    folders = []
    if reg is None or not uses_filewords(reg.instance_prompt):
        why = ("this project trains caption-free (the copy-machine route)" if reg is None
               else "[reg].instance_prompt has no [filewords]")
        folders += [(f"{side}.folder", project.side_folder(side), why) for side in SIDES]
    for number, concept in enumerate(project.concepts, start=1):
        if not uses_filewords(concept.instance_prompt):
            folders.append((f"concept[{number}].folder", project.root / concept.folder, f"concept[{number}].instance_prompt has no [filewords]"))
    warnings = []
    for key, folder, why in folders:
        found = unused_caption_files(folder, extensions)
        if found:
            names = ", ".join(p.name for p in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            warnings.append(f"{key}: caption files are not used ({names}): {why}")
    return warnings


def _with_steps(params: TrainParams, max_steps: int) -> TrainParams:
    from dataclasses import replace

    return replace(params, max_train_epochs=None, max_train_steps=max_steps)


@dataclass(frozen=True)
class BaseWeights:
    """What the differential route applies to the base while B trains: A's LoRA at a strength,
    as a frozen LoRA (exact to the training precision) or merged into the weights (sd-scripts' way)."""

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
    from engine.project.pair_route import is_pair_route

    if is_pair_route(plan.project):
        return f"the {plan.project.info.method} route trains one LoRA on the pair"
    if plan.project.reg is not None:
        from engine.project.concepts import class_sets

        # [reg] folder "" with no further concept is per-picture captions alone: each side's
        # data is its pictures under their captions, as without [reg], so it trains as a twin.
        if class_sets(plan.project) or plan.project.concepts:
            return "the project has [reg] class pictures or a [[concept]] (the DreamBooth flow trains each side apart)"
    from engine.project.copy_rule import COPY_KEYS  # each side of a twin run judges its own copy

    differ = sorted(k for k in a.params.__dataclass_fields__ if getattr(a.params, k) != getattr(b.params, k) and k not in COPY_KEYS)
    if differ:
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
    from engine.project.pair_route import ROUTE_NAMES, is_pair_route

    if is_pair_route(plan.project):
        method = plan.project.info.method
        return f"one LoRA on A and B together ({ROUTE_NAMES[method]}, the {method} route)"
    if not plan.project.info.twin_training:
        return "A, then B (twin_training = false)"
    problem = twin_problem(plan)
    return "A and B together, one batch of two" if problem is None else f"A, then B: {problem}"
