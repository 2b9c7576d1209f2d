"""Make the example projects (run once; the PNGs and TOMLs are committed):

* projects/example-monochrome: on the built-in ``tiny`` model (SD1.5 layout);
* projects/example-sdxl: the same pair on the built-in ``tiny-sdxl`` model (SDXL layout).

A is a synthetic colourful picture (gradient sky, sun, hills, a house); B is its exact
grayscale (ITU-R 601 luma, Pillow's "L" conversion, back to RGB). The only difference between
A and B is the colour, which is what the merged LoRA should learn. Deterministic: same bytes
every run with the same Pillow.

    python projects/make_example.py
"""

from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 128, 192  # 2:3 portrait, like the recipe's 600x900
HERE = Path(__file__).resolve().parent / "example-monochrome"
HERE_SDXL = Path(__file__).resolve().parent / "example-sdxl"


def colourful_picture() -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT))
    draw = ImageDraw.Draw(image)
    for y in range(HEIGHT):  # sky: blue to orange
        t = y / (HEIGHT - 1)
        draw.line([(0, y), (WIDTH, y)], fill=(int(40 + 215 * t), int(90 + 80 * t), int(220 - 170 * t)))
    draw.ellipse([80, 20, 112, 52], fill=(255, 220, 40))  # sun
    draw.polygon([(0, 130), (50, 95), (100, 128), (128, 110), (128, 192), (0, 192)], fill=(40, 160, 60))  # hills
    draw.rectangle([30, 120, 70, 160], fill=(200, 40, 40))  # house
    draw.polygon([(25, 122), (50, 100), (75, 122)], fill=(120, 50, 160))  # roof
    draw.rectangle([44, 140, 56, 160], fill=(250, 240, 220))  # door
    return image


def write_project_file(root: Path = HERE, base_model: str = "tiny") -> None:
    """The project file: the recipe scaled down so A, B and the merge run on a CPU in about a minute."""
    import sys

    sys.path.insert(0, str(HERE.parent.parent))
    from engine.project.folder import Project, save_project
    from engine.project.params import MergeParams, ProjectInfo
    from engine.project.scaffold import apply_base_defaults

    # The same defaults `copylora new --base tiny` writes (engine.project.scaffold.BUILTIN_PRESETS).
    project = Project(root=root, info=ProjectInfo(name=root.name, base_model=base_model), merge=MergeParams(new_rank=16))
    save_project(apply_base_defaults(project, base_model))


def main() -> None:
    a = colourful_picture()
    b = a.convert("L").convert("RGB")
    for root, base in ((HERE, "tiny"), (HERE_SDXL, "tiny-sdxl")):
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "b").mkdir(parents=True, exist_ok=True)
        a.save(root / "a" / "colour.png", optimize=True)
        b.save(root / "b" / "monochrome.png", optimize=True)
        write_project_file(root, base)
        print(f"wrote {root / 'a' / 'colour.png'}, {root / 'b' / 'monochrome.png'} and {root / 'copylora.toml'}")


if __name__ == "__main__":
    main()
