"""What one side trains on, encoded once: cached latents (and flipped copies), SDXL's size
conditions, the prompts' indices, and the epoch's items; which items make each step's batch (one bucket each).

The data order is a pure function of (seed, epoch), so resuming needs no state for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.project.concepts import resolve_prompt
from engine.project.plan import Plan
from engine.train.results import Log, TrainingError

if TYPE_CHECKING:
    from engine.models.loading import BaseModel


@dataclass(frozen=True)
class TrainingItem:
    """One entry of an epoch's list of what is trained on: a cached latent and its
    conditioning. (Not a preview "sample": those are engine.train.sample's.)"""

    latent_index: int  # into the latents list
    cond_index: int  # into TrainingData.prompts: the picture's instance prompt (or caption), or its class prompt
    weight: float  # loss weight (prior_loss_weight for regularisation images)
    bucket: tuple[int, int]



def epoch_order(seed: int, epoch: int, count: int) -> list[int]:
    """The shuffled sample order of one epoch: a pure function, so resuming needs no state."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(count).tolist()


def epoch_batches(samples: list[TrainingItem], batch_size: int, seed: int, epoch: int) -> list[list[TrainingItem]]:
    """One epoch's batches, as sd-scripts makes them: a batch holds items of one bucket (their
    latents stack), so the shuffled items are split by bucket, each bucket's into batches (the
    last one short), and the batches shuffled. Their number is the plan's steps per epoch
    (engine.project.epoch_buckets counts them). With one bucket, or a batch of one, the batches
    are the shuffled items in order: the order every run had before bucket batching."""
    order = epoch_order(seed, epoch, len(samples))
    shuffled = [samples[i] for i in order]
    if batch_size == 1 or len({s.bucket for s in samples}) <= 1:
        return [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
    by_bucket: dict[tuple[int, int], list[TrainingItem]] = {}
    for item in shuffled:
        by_bucket.setdefault(item.bucket, []).append(item)
    batches = [items[i : i + batch_size] for items in by_bucket.values() for i in range(0, len(items), batch_size)]
    import numpy as np

    return [batches[i] for i in np.random.default_rng([seed, epoch, 1]).permutation(len(batches)).tolist()]


def batch_for_step(step: int, samples: list[TrainingItem], batch_size: int, steps_per_epoch: int, seed: int) -> list[TrainingItem]:
    """The items of one step: batch ``index`` of its epoch (engine.train.training_data.epoch_batches).
    Should the pictures have changed since the plan counted the epoch's batches, the batches
    wrap around rather than train on nothing."""
    epoch, index = divmod(step, steps_per_epoch)
    batches = epoch_batches(samples, batch_size, seed, epoch)
    return batches[index % len(batches)]


@dataclass
class TrainingData:
    """What one side trains on, cached once: latents (and flipped copies), SDXL's size
    conditions per latent, the epoch's items and the prompts they are conditioned on."""

    latents: list
    flipped: list | None
    time_ids: list
    items: list[TrainingItem]
    prompts: list[str]


def training_data(model: BaseModel, plan: Plan, side: str, log: Log) -> TrainingData:
    """What ``side`` trains on, encoded once: its teacher pictures, each under its prompt (empty
    in the caption-free copy-machine route; [reg]'s instance prompt, its caption read in for
    ``[filewords]``), each further concept's pictures, and the class pictures, if any."""
    from engine.project.images import picture_warnings

    sp = plan.side(side)
    p = sp.params
    reg = plan.project.reg
    for info, bucket in zip(sp.images, sp.buckets):
        for warning in picture_warnings(info, bucket, f"{side}.folder"):
            log(f"warning: {warning}")
    data = TrainingData(latents=[], flipped=[] if p.flip_aug else None, time_ids=[], items=[], prompts=[])
    extension = reg.caption_extension if reg is not None else ""
    sets = [(sp.images, sp.buckets, sp.repeats, reg.instance_prompt if reg is not None else p.caption, p.seed)]
    sets += [(c.images, c.buckets, c.repeats, c.instance_prompt, p.seed + 1000 * c.number) for c in sp.concepts]
    for images, buckets, repeats, template, seed in sets:
        paths = [i.path for i in images]
        offset = _add_latents(data, model, paths, list(buckets), p, seed)
        for i, path in enumerate(paths):
            cond = _prompt_index(data, resolve_prompt(template, path, extension))
            data.items += [TrainingItem(offset + i, cond, 1.0, buckets[i])] * repeats
    if reg is not None:
        _add_class_items(data, model, plan, side)
        concepts = f", {len(sp.concepts)} further concept(s)" if sp.concepts else ""
        log(f"dreambooth: {len(data.items)} items per epoch ({sp.teacher_samples} teacher{concepts}, "
            f"{len(data.items) - sp.teacher_samples} class), {len(data.prompts)} distinct prompts")
    for warning in long_prompt_warnings(model.tokenizers[0], data.prompts, p.max_token_length):
        log(f"warning: {warning}")
    return data


def long_prompt_warnings(tokenizer, prompts: list[str], max_tokens: int) -> list[str]:
    """Prompts (captions) longer than the text encoder reads at ``[train] max_token_length``: the
    rest of each is cut, as sd-scripts cuts it, but a user who wrote it should know."""
    from engine.train.conditioning import CHUNK_TOKENS, prompt_tokens

    reads = max(1, max_tokens // CHUNK_TOKENS) * (tokenizer.model_max_length - 2)
    long = [(prompt, tokens) for prompt in prompts if (tokens := prompt_tokens(tokenizer, prompt)) > reads]
    if not long:
        return []
    prompt, tokens = max(long, key=lambda pair: pair[1])
    more = "" if max_tokens >= 225 else " (max_token_length = 150 or 225 reads more, in chunks of 75)"
    shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
    return [f"{len(long)} prompt(s) are longer than the {reads} tokens the text encoder reads at [train] max_token_length = "
            f"{max_tokens}; the rest of each is cut{more}: the longest, {tokens} tokens, {shown!r}"]


def _prompt_index(data: TrainingData, prompt: str) -> int:
    """The index of ``prompt`` in the prompts encoded for this side (each distinct one once)."""
    if prompt not in data.prompts:
        data.prompts.append(prompt)
    return data.prompts.index(prompt)


def _add_latents(data: TrainingData, model: BaseModel, paths: list[Path], buckets: list, p, seed: int) -> int:
    """Pictures encoded (and flipped) into ``data``; the index of the first one."""
    from engine.train.teacher import cache_teacher_latents

    cache = cache_teacher_latents(model.vae, paths, buckets, flip=p.flip_aug, random_crop=p.random_crop, seed=seed)
    offset = len(data.latents)
    data.latents += list(cache.latents)
    data.time_ids += _size_conditions(cache, buckets)
    if data.flipped is not None and cache.flipped is not None:
        data.flipped += list(cache.flipped)
    return offset


def _size_conditions(cached, buckets) -> list:
    """SDXL's time ids per latent: original (h, w), crop (top, left), bucket (h, w); a flipped
    latent keeps its crop (the default centre crop is symmetric)."""
    from engine.train.conditioning import sdxl_time_ids

    return [sdxl_time_ids(size[::-1], crop[::-1], bucket[::-1]) for size, crop, bucket in zip(cached.sizes, cached.crops, buckets)]


def _class_picture_info(path: Path):
    """A class picture's header, or the TrainingError that names it (check says so before a run;
    this is a picture put there since)."""
    from engine.project.images import read_image_info

    try:
        return read_image_info(path, decode=False)
    except ValueError as exc:
        raise TrainingError(f"class picture {path}: {exc}") from None


def _add_class_items(data: TrainingData, model: BaseModel, plan: Plan, side: str) -> None:
    """[reg]: the class pictures, encoded, each under its folder's class prompt. As sd-scripts
    does, every class folder is pooled and drawn up to the number of teacher items (each picture
    its [reg].num_repeats first: engine.project.epoch_buckets.class_draws), so each epoch pairs
    every teacher item with a class item, weighted by ``prior_loss_weight``."""
    from engine.project.concepts import class_sets
    from engine.project.epoch_buckets import class_draws
    from engine.project.images import image_files
    from engine.project.plan import bucket_size

    project, p = plan.project, plan.side(side).params
    assert project.reg is not None, "class pictures come with [reg]"
    pool: list[tuple[int, int, tuple[int, int], int]] = []  # (latent, prompt, bucket, repeats) per picture
    for number, class_set in enumerate(class_sets(project)):
        paths = image_files(class_set.folder)
        if not paths:
            raise TrainingError(f"[{class_set.key}] asks for class images but {class_set.folder} has none")
        buckets = [bucket_size(info.width, info.height, p.resolution) for info in (_class_picture_info(x) for x in paths)]
        offset = _add_latents(data, model, paths, buckets, p, p.seed + 10_000 + 1000 * number)
        cond = _prompt_index(data, class_set.prompt)
        pool += [(offset + j, cond, buckets[j], class_set.repeats) for j in range(len(paths))]
    weight = project.reg.prior_loss_weight
    data.items += [TrainingItem(pool[i][0], pool[i][1], weight, pool[i][2]) for i in class_draws([r for *_, r in pool], len(data.items))]
