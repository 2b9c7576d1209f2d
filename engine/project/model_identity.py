"""A base model's identity by its content, for the training fingerprint: the same checkpoint at
another path (a project copied to another GPU box, a model folder mounted elsewhere, a path
written relative instead of absolute) is the same base; another checkpoint at the same path is
not.

A full hash of a 2–7 GB checkpoint takes a minute where `copylora check` should take a second,
so a file counts by its size, its first MiB (a safetensors header: every tensor's name, shape,
dtype and offset) and 32 blocks of 64 KiB spread over it — about 3 MiB read. Two different
checkpoints (another model, a fine-tune, a merge) differ in all of them; an edit of a few
weights in place could go unseen (documented). A diffusers folder counts by each of its files
(weights sampled so, configs and tokenizer files whole), by their paths within it. Identities
are kept per (path, size, modification time) for the life of the process.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

HEAD = 1 << 20
BLOCK = 64 << 10
BLOCKS = 32
# A diffusers folder's files that make the model: weights (sampled) and what configures them.
WEIGHTS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
CONFIGS = (".json", ".txt", ".yaml", ".model")

_KNOWN: dict[tuple[str, int, int], str] = {}


def model_identity(spec: str) -> str | None:
    """``file:…`` or ``folder:…`` for a checkpoint file or diffusers folder at ``spec``; None
    where there is none (a built-in model's name, a path not here, one that cannot be read)."""
    path = Path(spec)
    try:
        if path.is_file():  # an SD2 file's .yaml beside it says v-prediction or not (engine.models.loading)
            yaml = path.with_suffix(".yaml")
            return f"file:{_file_identity(path)}" + (f"+{_file_identity(yaml)}" if yaml.is_file() else "")
        if path.is_dir():
            return f"folder:{_folder_identity(path)}"
    except OSError:
        return None
    return None


def _file_identity(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _KNOWN:
        digest = hashlib.sha256(str(stat.st_size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(HEAD))
            span = stat.st_size - HEAD - BLOCK  # where a block may start past the head
            for offset in ([HEAD + span * index // (BLOCKS - 1) for index in range(BLOCKS)] if span > 0 else [HEAD]):
                handle.seek(offset)
                digest.update(handle.read(BLOCK))
        if len(_KNOWN) > 256:
            _KNOWN.clear()
        _KNOWN[key] = digest.hexdigest()[:32]
    return _KNOWN[key]


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder``, linked folders followed (a ``vae`` linked to a fixed VAE
    is part of the model; pathlib's rglob does not enter it), each real folder once; hidden
    ones (.cache/, .git/) left out."""
    import os

    found, seen = [], set()
    for top, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back up: walked already
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(top) / name for name in names if not name.startswith(".")]
    return sorted(found)


# The weight files diffusers (and transformers, for the text encoders) load from a component
# folder, sharded or not: the plain safetensors, else the plain .bin.
_PLAIN_SAFETENSORS = re.compile(r"^(diffusion_pytorch_model|model)(-\d{5}-of-\d{5})?\.safetensors$")
_PLAIN_BIN = re.compile(r"^(diffusion_pytorch_model|pytorch_model)(-\d{5}-of-\d{5})?\.bin$")
_VARIANT_INDEX = re.compile(r"\.index\.[^.]+\.json$")  # diffusion_pytorch_model.safetensors.index.fp16.json


def _components(folder: Path) -> set[str] | None:
    """The component folders a diffusers folder's ``model_index.json`` names (unet, vae,
    text_encoder, …); None where it has none (then every file counts)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    return {name for name, value in index.items() if isinstance(value, list) and value and value[0]} if isinstance(index, dict) else None


def _loaded(files: list[Path], folder: Path) -> list[Path]:
    """Of a diffusers folder's files, those that make the model as the loader reads it: the
    model index, and in each component folder it names the configs and the weights diffusers
    picks (the plain safetensors, else the plain .bin, else what there is). An fp16 variant, a
    .bin beside the .safetensors, a single-file checkpoint at the folder's top (as Hugging Face
    repositories hold one): not read, so deleting one (to save space) leaves the base the same."""
    components = _components(folder)
    if components is None:
        return files
    kept: list[Path] = []
    by_component: dict[str, list[Path]] = {}
    for path in files:
        parts = path.relative_to(folder).parts
        if parts == ("model_index.json",):
            kept.append(path)
        elif len(parts) > 1 and parts[0] in components:
            by_component.setdefault(parts[0], []).append(path)
    for paths in by_component.values():
        weights = [p for p in paths if p.suffix.lower() in WEIGHTS]
        plain = [p for p in weights if _PLAIN_SAFETENSORS.match(p.name)] or [p for p in weights if _PLAIN_BIN.match(p.name)] or weights
        kept += plain + [p for p in paths if p.suffix.lower() in CONFIGS and not _VARIANT_INDEX.search(p.name)]
    return sorted(kept)


def _folder_identity(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in _loaded(_files(folder), folder):
        relative = path.relative_to(folder)
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in WEIGHTS:
            digest.update(f"{relative.as_posix()}\0{_file_identity(path)}\n".encode())
        elif suffix in CONFIGS:
            digest.update(f"{relative.as_posix()}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()[:32]


def clear_cache() -> None:
    """Forget the identities computed (tests; a long-lived process that must read files again)."""
    _KNOWN.clear()

