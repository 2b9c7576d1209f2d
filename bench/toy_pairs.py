"""Toy-world projects of several copy-machine pairs (issue 24): does the effect reach colours
that no pair showed?

On a toy base that binds its colour words (run 22), the example's one pair teaches "this
picture's yellow and blue turn gray", not "colours turn gray" (docs/BENCHMARKS.md). These
projects ask what several pairs do:

- ``pairs3``: three pairs (yellow circle on blue, red square on green, pink triangle on cyan);
  orange and purple are in none, so the per-colour table shows whether the change reaches them;
- ``pairs4``: those and an orange ring on purple: every chromatic colour of the world;
- ``roles8``: those four and their mirrors (each background colour as a shape on the shape's
  colour: a blue shape on yellow, ...), so every chromatic colour is shown once as a shape and
  once as a background; a mirror whose combination is held out takes the next shape that is not
  (the evaluation's prompts stay unseen);
- ``collage``: one pair, the four scenes of ``pairs4``'s colours (a white ring on black in place
  of the orange one) in the quadrants of one picture.

With ``--spread`` each pair is drawn at its own place and size (SPREAD) instead of all at the
picture's centre: does a LoRA that has not seen one layout keep the layout of other prompts?
With ``--captions`` each picture trains under its own caption ([reg] folder = "", instance
prompt "[filewords]", a .txt beside each picture); else caption-free, the method as published.

    python bench/toy_pairs.py pairs4 /tmp/pairs4 --base /tmp/toy --captions
    OMP_NUM_THREADS=1 python bench/effect_bench.py --base /tmp/toy --project /tmp/pairs4 --routes svd-merge --ranks 8 --guidance 1,7
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PAIRS = [("yellow", "circle", "blue"), ("red", "square", "green"), ("pink", "triangle", "cyan"), ("orange", "ring", "purple")]

# (cx, cy, radius) of each pair with --spread: around the picture, two sizes, none at its centre
SPREAD = [(0.33, 0.35, 0.2), (0.66, 0.62, 0.24), (0.62, 0.34, 0.22), (0.36, 0.64, 0.26),
          (0.5, 0.3, 0.18), (0.5, 0.68, 0.22), (0.3, 0.5, 0.2), (0.7, 0.5, 0.24)]


def mirrored(pairs: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Each pair's colours in the other roles, on a trained (not held-out) combination."""
    from engine.models.toy_data import SHAPES, is_held_out

    out = []
    for colour, shape, background in pairs:
        shapes = [shape] + [s for s in SHAPES if s != shape]
        out.append(next((background, s, colour) for s in shapes if not is_held_out(background, s, colour)))
    return out


QUADRANTS = PAIRS[:3] + [("white", "ring", "black")]


def write_project(kind: str, dest: Path, base: str, captions: bool, spread: bool = False) -> Path:
    from PIL import Image

    from engine.models.toy_data import Scene, draw, grayscale
    from engine.project.folder import load_project, save_project
    from engine.project.params import RegParams

    if dest.exists():
        raise SystemExit(f"toy_pairs: {dest} exists; give a new folder")
    from bench.effect_bench import toy_project

    with tempfile.TemporaryDirectory() as work:  # the one-pair project's settings (1000 steps a picture, lr 2e-3)
        shutil.copytree(toy_project(Path(work), base), dest, ignore=shutil.ignore_patterns("output", "a", "b"))
    for side in ("a", "b"):
        (dest / side).mkdir()
    if kind == "collage":
        picture = Image.new("RGB", (64, 64))
        for i, (colour, shape, background) in enumerate(QUADRANTS):
            picture.paste(draw(Scene(colour, shape, background, cx=0.5, cy=0.5, radius=0.3), size=32), ((i % 2) * 32, (i // 2) * 32))
        scenes = [("collage", picture, "four coloured shapes")]
    else:
        chosen = {"pairs3": PAIRS[:3], "pairs4": PAIRS, "roles8": PAIRS + mirrored(PAIRS)}[kind]
        scenes = []
        for i, (colour, shape, background) in enumerate(chosen):
            cx, cy, radius = SPREAD[i % len(SPREAD)] if spread else (0.5, 0.48, 0.27)
            scene = Scene(colour, shape, background, cx=cx, cy=cy, radius=radius)
            scenes.append((str(i), draw(scene), scene.caption()))
    for name, picture, caption in scenes:
        for side, drawn in (("a", picture), ("b", grayscale(picture))):
            drawn.save(dest / side / f"{name}.png")
            if captions:
                (dest / side / f"{name}.txt").write_text(caption + "\n")
    project = load_project(dest)
    project.info = replace(project.info, base_model=base, name=dest.name)
    project.train = replace(project.train, caption="", save_every_n_steps=0)
    if captions:
        project.reg = RegParams(folder="", instance_prompt="[filewords]")
    save_project(project)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["pairs3", "pairs4", "roles8", "collage"])
    parser.add_argument("dest", type=Path, help="a new folder for the project")
    parser.add_argument("--base", default="toy", help="the base model (a folder made by bench/pretrain_toy.py, or a built-in)")
    parser.add_argument("--captions", action="store_true", help="each picture under its own caption ([reg] folder \"\", [filewords])")
    parser.add_argument("--spread", action="store_true", help="each pair at its own place and size (SPREAD), not all at the centre")
    args = parser.parse_args(argv)
    if args.spread and args.kind == "collage":
        parser.error("--spread places the pairs' shapes; the collage is one picture")
    print(write_project(args.kind, args.dest, args.base, args.captions, args.spread))
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    sys.exit(main())
