"""The toy model's world: coloured shapes on coloured backgrounds, drawn from a seed.

The built-in ``toy`` base model (engine.models.toy) learned to draw from these pictures, made
here deterministically by ``bench/pretrain_toy.py``: one shape (circle, square, triangle, ring)
in one of ten named colours, at a random place and size, on a background of another named
colour, captioned "a red circle on a blue background". Some pictures are drawn in exact
grayscale and captioned "..., monochrome" (a copy-machine B in grayscale must be something the
base can draw: the pilot's model had never seen gray and its B could not copy).

Some (colour, shape, background) combinations never appear in pretraining: they are the
"held-out prompts" on which :func:`colour_accuracy` and the effect benchmark measure whether
the model, and a copy-machine LoRA on it, generalise.
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass, replace

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 210, 220),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "ring")
SIZE = 64  # pixels per side of a picture
RING_HOLE = 0.55  # a ring's hole, as a fraction of its radius
MONOCHROME_SHARE = 0.2  # of pretraining pictures drawn in grayscale ("..., monochrome")
EMPTY_CAPTION_SHARE = 0.15  # caption dropout: the empty prompt must draw sensible pictures
HELD_OUT_EVERY = 5  # one (colour, shape, background) combination in five is never trained
RADIUS = (0.16, 0.32)  # a shape's radius, as a fraction of the side, drawn uniformly in this range
# A world whose colours vary around their names (0: each name is one exact colour). With them the
# base must learn colour as a continuous code, in which "less saturated" is a direction a LoRA can
# take everywhere, not ten categories (issue 24: on a categorical base the copy-machine change
# stays with the pair's own colours). Set by bench/pretrain_toy.py's --colour-jitter and
# --saturation-jitter; the shipped world keeps 0.
COLOUR_JITTER = 0  # each RGB channel moved by a uniform draw in ±this (0–255 units)
SATURATION_JITTER = 0.0  # each colour blended toward its own gray (luma) by a uniform draw in [0, this]


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    cx: float  # centre, as a fraction of the side
    cy: float
    radius: float  # as a fraction of the side
    monochrome: bool = False
    fill: tuple[int, int, int] | None = None  # the shape's drawn RGB where the world varies its colours (None: the name's)
    ground: tuple[int, int, int] | None = None  # the background's, likewise

    def caption(self) -> str:
        text = f"a {self.colour} {self.shape} on a {self.background} background"
        return text + ", monochrome" if self.monochrome else text


def all_combinations() -> list[tuple[str, str, str]]:
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS if b != c]


def is_held_out(colour: str, shape: str, background: str) -> bool:
    """A fixed fifth of the combinations, spread over every colour and shape (a hash, not a
    random draw, so it never changes with the seed)."""
    return _held_out_at(all_combinations().index((colour, shape, background)))


def _held_out_at(index: int) -> bool:
    return index % HELD_OUT_EVERY == 2


def held_out_combinations() -> list[tuple[str, str, str]]:
    return _split_combinations(held_out=True)


def _split_combinations(*, held_out: bool) -> list[tuple[str, str, str]]:
    """The held-out fifth (or the rest), by :func:`is_held_out`'s rule in one pass: asking
    is_held_out for each combination rebuilt the list each time, 17 ms a scene (20 s for a
    2000-picture pool)."""
    return [c for index, c in enumerate(all_combinations()) if _held_out_at(index) == held_out]


def held_out_prompts(count: int | None = None) -> list[str]:
    """Prompts of combinations never trained ("a yellow ring on a green background")."""
    prompts = [f"a {c} {s} on a {b} background" for c, s, b in held_out_combinations()]
    return prompts[:count] if count else prompts


def random_scene(rng: random.Random, *, held_out: bool = False) -> Scene:
    """A scene of a trained combination (or, with ``held_out``, of a held-out one)."""
    pool = _split_combinations(held_out=held_out)
    colour, shape, background = rng.choice(pool)
    radius = rng.uniform(*RADIUS)
    scene = Scene(colour, shape, background, rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius), radius,
                  monochrome=rng.random() < MONOCHROME_SHARE)
    if COLOUR_JITTER or SATURATION_JITTER:  # drawn after the rest, so a world without jitter keeps its scenes
        scene = replace(scene, fill=varied_colour(rng, colour), ground=varied_colour(rng, background))
    return scene


def varied_colour(rng: random.Random, name: str) -> tuple[int, int, int]:
    """``name``'s colour moved as the world's jitter says: toward its gray, then each channel."""
    rgb = COLOURS[name]
    gray = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    toward_gray = rng.uniform(0.0, SATURATION_JITTER)
    return tuple(int(round(min(255.0, max(0.0, v + (gray - v) * toward_gray + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER)))))
                 for v in rgb)  # type: ignore[return-value]


def draw(scene: Scene, size: int = SIZE):
    """The scene as an RGB PIL image (drawn at 4x and downsampled: smooth edges)."""
    from PIL import Image

    scale = 4
    big = size * scale
    fill, ground = scene.fill or COLOURS[scene.colour], scene.ground or COLOURS[scene.background]
    image = Image.new("RGB", (big, big), ground)
    _paint_shape(image, scene, fill, ground)
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    return grayscale(image) if scene.monochrome else image


def shape_mask(scene: Scene, size: int = SIZE):
    """Where the shape is, as a grayscale PIL image (255 inside, soft edges): pretraining can
    weight the shape's pixels, which cover 8–32 % of a picture."""
    from PIL import Image

    big = size * 4
    image = Image.new("RGB", (big, big), (0, 0, 0))
    _paint_shape(image, scene, (255, 255, 255), (0, 0, 0))
    return image.resize((size, size), Image.Resampling.LANCZOS).convert("L")


def _paint_shape(image, scene: Scene, fill, background) -> None:
    from PIL import ImageDraw

    big = image.size[0]
    pen = ImageDraw.Draw(image)
    x, y, r = scene.cx * big, scene.cy * big, scene.radius * big
    if scene.shape == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif scene.shape == "square":
        side = r * 0.9
        pen.rectangle((x - side, y - side, x + side, y + side), fill=fill)
    elif scene.shape == "triangle":
        pen.polygon([(x, y - r), (x - r * math.sqrt(3) / 2, y + r / 2), (x + r * math.sqrt(3) / 2, y + r / 2)], fill=fill)
    elif scene.shape == "ring":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        inner = r * RING_HOLE
        pen.ellipse((x - inner, y - inner, x + inner, y + inner), fill=background)


def grayscale(image):
    """Exact grayscale (ITU-R 601 luma, as PIL's "L"), back in RGB: a copy-machine B."""
    return image.convert("L").convert("RGB")


def dataset(seed: int, count: int, size: int = SIZE) -> list[tuple[object, str]]:
    """``count`` (picture, caption) pairs, the same for the same seed; captions dropped to ""
    at :data:`EMPTY_CAPTION_SHARE`."""
    return [(draw(scene, size), caption) for scene, caption in dataset_scenes(seed, count)]


def dataset_scenes(seed: int, count: int) -> list[tuple[Scene, str]]:
    """The scenes behind :func:`dataset` (same seed, same scenes) with their captions."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        scene = random_scene(rng)
        out.append((scene, "" if rng.random() < EMPTY_CAPTION_SHARE else scene.caption()))
    return out


# --------------------------------------------------------------------------- measuring colour


def hue_saturation_value(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    return colorsys.rgb_to_hsv(*(v / 255 for v in rgb))


def nearest_colour(rgb: tuple[float, float, float]) -> str:
    """The named colour nearest to ``rgb`` (in RGB distance: the names are far apart)."""
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(rgb, COLOURS[name])))


def region_colours(image, *, border: int = 6) -> tuple[str, str]:
    """(shape colour, background colour) of a generated picture: the background is the median
    colour of the border strip; the shape is the median of the pixels farthest from it."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w, _ = pixels.shape
    mask = np.zeros((h, w), dtype=bool)
    mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = True, True, True, True
    background = np.median(pixels[mask], axis=0)
    distance = np.linalg.norm(pixels - background, axis=2)
    far = distance >= np.quantile(distance, 0.92)  # the shape covers >= ~8 % of the picture
    shape = np.median(pixels[far], axis=0)
    return nearest_colour(tuple(shape)), nearest_colour(tuple(background))


# --------------------------------------------------------------------------- describing a picture


def describe(image) -> str:
    """The toy world's caption of a picture, ``"a yellow circle on a blue background"``: the
    inverse of :func:`draw`. A project on the toy base trains A and B under it (``copylora new``
    writes it): the toy's colours come from the prompt, so a pair trained caption-free changes
    the prompted branch too little to survive CFG (docs/BENCHMARKS.md). A picture the world did
    not draw still gets the world's nearest words: the border's colour is the background, the
    pixels far from it are the shape, whose outline is the one of :data:`SHAPES` that overlaps
    them best."""
    colour, shape, background = read_scene(image)
    return f"a {colour} {shape} on a {background} background"


def read_scene(image) -> tuple[str, str, str]:
    """(shape colour, shape, background colour) of a picture, in the toy world's words: the
    reader :func:`describe` captions with and pretraining's evaluation judges a model by (its
    shape reading is checked on drawn scenes first, tests/test_toy_world.py)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[:6], mask[-6:], mask[:, :6], mask[:, -6:] = True, True, True, True  # the border strip, as region_colours reads it
    background = np.median(pixels[mask], axis=0)
    distance = np.linalg.norm(pixels - background, axis=2)
    # Half way to the farthest pixel: the shape's soft edge splits evenly (a quantile, as
    # region_colours uses, takes in background where a small shape covers less than its share).
    drawn = distance > distance.max() / 2
    colour = nearest_colour(tuple(np.median(pixels[drawn], axis=0))) if drawn.any() else nearest_colour(tuple(background))
    return colour, nearest_shape(drawn), nearest_colour(tuple(background))


def nearest_shape(drawn) -> str:
    """Which of :data:`SHAPES` the pixels marked in ``drawn`` (SIZE×SIZE booleans) show: the
    largest connected region (a model's stray speck beside the shape would widen its box) fitted
    to its own bounding box, stretched to a square, against each shape stretched the same way;
    the best overlap (intersection over union) wins. Stretched, because a model that draws a
    square 36 pixels wide and 48 high has drawn a square with the wrong aspect, not a circle:
    fitting shapes of the box's longer side read it as one (run 24's squares, docs/BENCHMARKS.md)."""
    import numpy as np
    from PIL import Image

    region = largest_region(drawn)
    rows, cols = np.nonzero(region)
    if rows.size == 0:  # one flat colour: any shape is as good
        return SHAPES[0]
    box = region[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    side = 32
    seen = np.asarray(Image.fromarray(box.astype(np.uint8) * 255).resize((side, side), Image.Resampling.BILINEAR)) > 127
    v, u = (np.mgrid[0:side, 0:side] + 0.5) / side  # pixel centres in the unit box, v downward
    round_ = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    templates = {
        "circle": round_,
        "square": np.ones((side, side), dtype=bool),
        "triangle": np.abs(u - 0.5) <= v / 2,  # apex up, base along the bottom, as drawn
        "ring": round_ & ((u - 0.5) ** 2 + (v - 0.5) ** 2 >= (0.5 * RING_HOLE) ** 2),
    }
    return max(SHAPES, key=lambda shape: (templates[shape] & seen).sum() / max((templates[shape] | seen).sum(), 1))


def largest_region(drawn):
    """The largest 4-connected region of ``drawn`` (a boolean array), as a boolean array."""
    import numpy as np

    height, width = drawn.shape
    label = np.zeros((height, width), dtype=np.int32)
    best, best_size, count = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(drawn)):
        if label[y0, x0]:
            continue
        count += 1
        label[y0, x0] = count
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < height and 0 <= xx < width and drawn[yy, xx] and not label[yy, xx]:
                    label[yy, xx] = count
                    stack.append((yy, xx))
        if size > best_size:
            best, best_size = count, size
    return label == best if best else np.zeros_like(drawn, dtype=bool)
