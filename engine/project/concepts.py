"""The DreamBooth flow's concepts and captions, resolved from a project.

A ``[reg]`` project trains each side on its own pictures under ``[reg].instance_prompt``, with
class pictures under ``[reg].class_prompt`` (prior preservation), and on any further concepts of
``[[concept]]``: each a folder of pictures with its own instance prompt, class prompt and class
folder, as the A1111 DreamBooth extension's concepts 2 and 3 are.

Captions: an instance prompt containing ``[filewords]`` (the extension's token) takes each
picture's caption from the file of the same name with ``[reg].caption_extension`` beside it
(kohya's ``caption_extension``): ``"sks girl, [filewords]"`` with ``colour.txt`` = "smiling"
trains colour.png on "sks girl, smiling". A prompt without the token reads no file, and a
project without ``[reg]`` is caption-free (the copy-machine route): caption files in its folders
are not used, and :func:`unused_caption_files` finds them so ``check`` can say so.

Pure functions of the project and the file system; nothing here loads a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.project.images import image_files

FILEWORDS = "[filewords]"
# What other tools name caption files; a caption-free project's folder holding any of these
# (beside a picture of the same name) was probably meant to be captioned.
CAPTION_SUFFIXES = (".txt", ".caption")


class CaptionError(InputError):
    """A picture whose prompt reads a caption file that is missing, unreadable or empty."""


def uses_filewords(prompt: str) -> bool:
    return FILEWORDS in prompt


def caption_path(image: Path, extension: str) -> Path:
    return image.with_name(image.stem + extension)


def read_caption(image: Path, extension: str) -> str:
    """The caption of ``image``: the first non-empty line of its caption file (as sd-scripts
    reads one), stripped."""
    path = caption_path(image, extension)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CaptionError(f"{image}: no caption file {path.name} beside it (its prompt says {FILEWORDS})") from None
    except OSError as exc:
        raise CaptionError(f"{image}: cannot read its caption file {path.name} ({exc})") from None
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Notepad's "UTF-8 with BOM") is no part of the prompt
    except UnicodeDecodeError as exc:
        try:
            raw.decode("cp932")
            how = "it reads as Shift-JIS/cp932, as a Japanese Windows editor saves it"
        except UnicodeDecodeError:
            how = f"byte 0x{raw[exc.start]:02x} at {exc.start}"
        raise CaptionError(f"{image}: its caption file {path.name} is not UTF-8 ({how}): save it as UTF-8") from None
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise CaptionError(f"{image}: its caption file {path.name} is empty (its prompt says {FILEWORDS})")


def resolve_prompt(template: str, image: Path, extension: str) -> str:
    """The prompt ``image`` trains on: ``template`` with ``[filewords]`` replaced by its caption."""
    if not uses_filewords(template):
        return template
    return template.replace(FILEWORDS, read_caption(image, extension))


def tag_frequency(prompts: list[str]) -> dict[str, int]:
    """kohya's ``tag_frequency`` of one folder: each comma-separated tag of each picture's
    caption, counted once per picture (not per repeat)."""
    counts: dict[str, int] = {}
    for prompt in prompts:
        for tag in (t.strip() for t in prompt.split(",")):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return counts


# The name a generated class picture gets (engine.train.class_images writes them).
GENERATED_CLASS_NAME = re.compile(r"^class-(\d+)\.png$")


@dataclass(frozen=True)
class ClassSet:
    """One folder of class pictures: where, from which prompt, how many wanted, and which key
    of the project it comes from (for messages)."""

    key: str  # "reg" or "concept[2]"
    folder: Path
    prompt: str
    wanted: int
    repeats: int

    def count(self) -> int:
        return len(image_files(self.folder)) if self.folder.is_dir() else 0

    def missing(self) -> int:
        return max(0, self.wanted - self.count())

    def size(self) -> int:
        """Class pictures it will hold when training starts (missing ones are generated first)."""
        return max(self.wanted, self.count())

    def generated_paths(self) -> list[Path]:
        """Where its missing pictures will be written (engine.train.class_images): numbered on
        from the folder's highest ``class-NNNN.png``, so a rerun never overwrites one."""
        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := GENERATED_CLASS_NAME.match(p.name))] if self.folder.is_dir() else []
        first = max(numbers, default=-1) + 1
        return [self.folder / f"class-{number:04d}.png" for number in range(first, first + self.missing())]


def class_picture_size(project) -> tuple[int, int]:
    """(width, height) generated class pictures are drawn at: ``[train] resolution``, each side
    down to a multiple of 8 (the VAE's)."""
    width, height = project.train.resolution
    return width // 8 * 8, height // 8 * 8


def class_sets(project) -> list[ClassSet]:
    """Every class-picture folder of a ``[reg]`` project: ``[reg]``'s, then each concept's that
    has a ``class_folder``."""
    reg = project.reg
    if reg is None:
        return []
    # folder "" is a [reg] without class pictures: the flow for its prompts alone (per-picture
    # captions through [filewords]), as a concept's class_folder "" is.
    sets = [ClassSet("reg", project.root / reg.folder, reg.class_prompt, reg.num_class_images, reg.num_repeats)] if reg.folder else []
    for number, concept in enumerate(project.concepts, start=1):
        if concept.class_folder:
            sets.append(ClassSet(f"concept[{number}]", project.root / concept.class_folder, concept.class_prompt,
                                 concept.num_class_images, reg.num_repeats))
    return sets


def concept_repeats(concept) -> tuple[int, str]:
    """A ``[[concept]]``'s repeats and where they come from: its ``num_repeats``, else its
    folder's kohya name ("5_sks dog"), else 1."""
    from engine.project.folder import folder_repeats

    if concept.num_repeats is not None:
        return concept.num_repeats, "num_repeats"
    repeats = folder_repeats(concept.folder)
    if repeats is not None:
        return repeats, f"folder name {Path(concept.folder).name!r}"
    return 1, "default"


def prompt_templates(project) -> list[tuple[str, str]]:
    """(key, instance prompt) of every concept: ``[reg]``'s (the sides' own pictures) and each
    ``[[concept]]``'s."""
    if project.reg is None:
        return []
    return [("reg.instance_prompt", project.reg.instance_prompt),
            *((f"concept[{n}].instance_prompt", c.instance_prompt) for n, c in enumerate(project.concepts, start=1))]


def unused_caption_files(folder: Path, extensions: tuple[str, ...] = CAPTION_SUFFIXES) -> list[Path]:
    """Caption files beside the pictures of ``folder`` (same name, a caption extension)."""
    found = []
    for image in image_files(folder) if folder.is_dir() else []:
        for extension in extensions:
            path = caption_path(image, extension)
            if path.is_file():
                found.append(path)
    return found
