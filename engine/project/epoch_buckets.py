"""How many pictures of each bucket one epoch shows a side, so the plan counts its steps as
sd-scripts does: a batch holds pictures of one bucket (their latents stack), so an epoch is,
per bucket, its pictures split into batches (engine.train.training_data.epoch_batches makes
them; the two must agree).

The class pictures' pool is drawn up to the teacher count (:func:`class_draws`), so which class
pictures an epoch shows, and so their buckets, depends on their names, sizes and repeats (and on
the ones still to be generated).
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


def class_draws(repeats: list[int], teachers: int) -> list[int]:
    """Which class picture each class item of an epoch is (indices into ``repeats``, one entry per
    picture, in pool order), as sd-scripts' DreamBoothDataset registers them: a first pass gives
    each picture its repeats until the items reach the teacher count (the last may pass it), then
    passes add one item per picture, in turn, until they do. With one repeat each, the pool
    cycled to the teacher count."""
    draws: list[int] = []
    first = True
    while repeats and len(draws) < teachers:
        for index, count in enumerate(repeats):
            draws += [index] * (count if first else 1)
            if len(draws) >= teachers:
                break
        first = False
    return draws


def class_pool(project, resolution) -> list[tuple[Bucket, int]]:
    """The class pictures' buckets and repeats in pool order (engine.train.training_data.
    _add_class_items): each class folder's pictures by name, the ones still to generate at their
    future names and the size they are drawn at. A picture whose header cannot be read is left
    out (check refuses it, training names it)."""
    from engine.project.concepts import class_picture_size, class_sets
    from engine.project.plan import bucket_size

    drawn = bucket_size(*class_picture_size(project), resolution)
    pool: list[tuple[Bucket, int]] = []
    for class_set in class_sets(project):
        sizes: dict[Path, Bucket | None] = {path: drawn for path in class_set.generated_paths()}
        sizes.update(_folder_buckets(class_set.folder, tuple(resolution)))
        for path in sorted(sizes):
            bucket = sizes[path]
            if bucket is not None:
                pool.append((bucket, class_set.repeats))
    return pool


# Each class picture's bucket by (path, size, modification time, resolution): the app plans a
# project often (its list, its form), and a class folder may hold a thousand pictures (0.3 ms a
# header, a stat is ~100 times cheaper). Keyed per picture, not by the folder's time: a picture
# rewritten in place at another size leaves the folder's time as it was.
_PICTURE_BUCKETS: dict[tuple[str, int, int, tuple], Bucket | None] = {}
PICTURE_CACHE_MAX = 20_000


def _folder_buckets(folder: Path, resolution: tuple) -> dict[Path, Bucket | None]:
    """Each picture of ``folder`` and its bucket (None: its header cannot be read)."""
    from engine.project.images import image_files

    try:
        paths = image_files(folder)
    except OSError:  # no folder (yet), a file where it should be, or unreadable: training says so
        return {}
    if len(_PICTURE_BUCKETS) + len(paths) > max(PICTURE_CACHE_MAX, 2 * len(paths)):  # room for this folder's at least: a bigger one emptied it every call
        _PICTURE_BUCKETS.clear()
    return {path: _picture_bucket(path, resolution) for path in paths}


def _picture_bucket(path: Path, resolution: tuple) -> Bucket | None:
    from engine.project.images import read_image_info
    from engine.project.plan import bucket_size

    try:
        stat = path.stat()
    except OSError:  # gone since the listing
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns, resolution)
    if key not in _PICTURE_BUCKETS:
        try:
            info = read_image_info(path, decode=False)
        except ValueError:
            _PICTURE_BUCKETS[key] = None
        else:
            _PICTURE_BUCKETS[key] = bucket_size(info.width, info.height, resolution)
    return _PICTURE_BUCKETS[key]


def with_class_items(teachers: Counter, pool: list[tuple[Bucket, int]]) -> Counter:
    """``teachers`` and the class items paired with them (:func:`class_draws`)."""
    counts = Counter(teachers)
    for index in class_draws([repeats for _, repeats in pool], sum(teachers.values())):
        counts[pool[index][0]] += 1
    return counts
