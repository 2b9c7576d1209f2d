"""The ``toy`` base model: the ``tiny`` SD1.5 topology, pretrained to draw coloured shapes.

``tiny`` has random weights: its pictures are noise, so nothing made on it can show what a
copy-machine LoRA is for. ``toy`` keeps the U-Net's modules and names (so its LoRAs are SD1.5
LoRAs) with 4 attention heads, a text encoder of SD1.5's kind but 64 wide, 4 layers deep and
16 tokens long, and a VAE of 3 levels instead of 4 (16×16 latents for its 64×64 pictures). It
was trained from scratch by ``bench/pretrain_toy.py`` on :mod:`engine.models.toy_data`'s pictures
of coloured shapes (colours jittered around their names, a fifth of the combinations held out),
in one run of ~2½ hours on a 2-core CPU (run 28 of docs/BENCHMARKS.md; the command and its
record are in ``toy/pretrain.json``). At CFG 7, on 72 prompts it never saw × 2 seeds, it draws
the asked shape's colour in 96.5 % of the pictures, the background's in 99.3 % and the shape in
94.4 %; "…, monochrome" draws near-gray (saturation 0.16). Weights in fp16 (16 MB), checked
against ``toy/SHA256SUMS`` by the tests. The tokenizer is CLIP's byte-level BPE with one merge
chain per word of the toy world, so each of its words is one token.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelError

TOY_DIR = Path(__file__).resolve().parent / "toy"
TOY_NAME = "toy"


def toy_model_dir() -> Path:
    """The toy model's diffusers folder (shipped with the package)."""
    if not (TOY_DIR / "model_index.json").is_file() or not (TOY_DIR / "unet").is_dir():
        raise ModelError(f"the toy model's weights are missing from {TOY_DIR}: make them with "
                         "`python bench/pretrain_toy.py` (see docs/BENCHMARKS.md)")
    return TOY_DIR


def new_project_caption(base_model: str, a_picture: Path | str) -> str:
    """The ``[train] caption`` a new project on ``base_model`` trains under: on the toy base,
    picture A's description in the toy world's words (:func:`engine.models.toy_data.describe`),
    as each of projects/example-toy's pairs trains under its own (caption-free the change does not
    survive CFG on this base: docs/BENCHMARKS.md, run 28); "" (the
    published caption-free method) on any other. A picture that cannot be read gets "" here:
    :func:`engine.project.scaffold.create_project` reports it."""
    if base_model != TOY_NAME:
        return ""
    from PIL import Image

    from engine.models.toy_data import describe
    from engine.project.images import load_picture

    try:  # read as training reads it (EXIF turned, 16-bit scaled, transparency on white)
        return describe(load_picture(Path(a_picture).expanduser()))
    except (OSError, ValueError, RuntimeError, Image.DecompressionBombError):  # RuntimeError: ~user with no home
        return ""


def toy_words() -> list[str]:
    from engine.models.toy_data import COLOURS, SHAPES

    return sorted({*COLOURS, *SHAPES, "a", "on", "background", "monochrome", ","})


def word_merges(words: list[str]) -> list[str]:
    """BPE merges that build each word into one token, left to right: "r e", "re d</w>".

    BPE applies the lowest-ranked merge present first, so one word's first pair ("r i" of
    "ring") can cut into another ("triangle"). Longer words' chains go first, which suffices for
    this vocabulary (the tokenizer test checks every word is one token)."""
    merges: list[str] = []
    for word in sorted(words, key=lambda w: (-len(w), w)):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            left = left + right
    return merges


def toy_tokenizer():
    """CLIP's tokenizer with the toy world's words as single tokens."""
    from transformers import CLIPTokenizer

    from engine.models.tiny import clip_vocab

    merges = word_merges([w for w in toy_words() if len(w) > 1])
    return CLIPTokenizer(vocab=clip_vocab(merges), merges=[tuple(m.split()) for m in merges], model_max_length=77)
