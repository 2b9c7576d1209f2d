"""How many pictures of each bucket one epoch shows a side, so the plan counts its steps as
sd-scripts does: a batch holds pictures of one bucket (their latents stack), so an epoch is,
per bucket, its pictures split into batches (engine.train.training_data.epoch_batches makes
them; the two must agree).

Only a batch of more than one picture over several buckets needs the class pictures' buckets:
their pool is cycled up to the teacher count, so which class pictures an epoch shows, and so
their buckets, depends on their names and sizes (and on the ones still to be generated).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

Bucket = tuple[int, int]


def batches_per_epoch(items_per_bucket: Mapping[Bucket, int], batch_size: int) -> int:
    """An epoch's steps: each bucket's items in batches of ``batch_size`` (the last one short)."""
    return max(1, sum(math.ceil(n / batch_size) for n in items_per_bucket.values()))


def teacher_buckets(own: Iterable[Bucket], repeats: int, concepts: Iterable[tuple[Iterable[Bucket], int]]) -> Counter:
    """The teacher items of an epoch by bucket: the side's own pictures × its repeats, and each
    further concept's × its own."""
    counts: Counter = Counter()
    for bucket in own:
        counts[bucket] += repeats
    for buckets, concept_repeats in concepts:
        for bucket in buckets:
            counts[bucket] += concept_repeats
    return counts


def class_pool(project, resolution) -> list[Bucket]:
    """The class pictures' buckets in the order training cycles their pool
    (engine.train.training_data._add_class_items): each class folder's pictures by name, each ×
    [reg].num_repeats, the ones still to generate at their future names and the size they are
    drawn at. A picture whose header cannot be read is left out (training says what it is)."""
    from engine.project.concepts import class_picture_size, class_sets
    from engine.project.images import image_files, read_image_info
    from engine.project.plan import bucket_size

    drawn = bucket_size(*class_picture_size(project), resolution)
    pool: list[Bucket] = []
    for class_set in class_sets(project):
        sizes: dict[Path, Bucket | None] = {path: drawn for path in class_set.generated_paths()}
        for path in image_files(class_set.folder) if class_set.folder.is_dir() else []:
            try:
                info = read_image_info(path, decode=False)
            except ValueError:
                sizes[path] = None
                continue
            sizes[path] = bucket_size(info.width, info.height, resolution)
        for path in sorted(sizes):
            bucket = sizes[path]
            if bucket is not None:
                pool += [bucket] * class_set.repeats
    return pool


def with_class_items(teachers: Counter, pool: list[Bucket]) -> Counter:
    """``teachers`` and the class items paired with them: the pool cycled up to the teacher count."""
    counts = Counter(teachers)
    total = sum(teachers.values())
    for k in range(total if pool else 0):
        counts[pool[k % len(pool)]] += 1
    return counts
