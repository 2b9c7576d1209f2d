"""Bake a LoRA into a base model: ``W += ratio · alpha/r · up @ down`` for every LoRA module.

Bake-and-extract (a third way to the copy-machine LoRA, equal to the SVD route) bakes LoRA A and LoRA B into the base and extracts a
LoRA from the difference of the two checkpoints (:mod:`engine.merge.extract`). The baked model is
written **in the format it was read in**:

* a single-file ``.safetensors`` checkpoint (SD1 or SDXL) stays one, under its original key
  names: every tensor the LoRA does not touch is copied through bit for bit (same dtype), the
  file's metadata is kept (a ``copylora_bake`` entry is added). SDXL's second text encoder
  stores q, k and v fused in one tensor: each projection's delta goes to its third of the rows;
* a diffusers folder stays a folder: it is copied and only the weight files holding changed
  tensors are rewritten (every ``*.safetensors`` of the component that holds the key, so
  shards and ``fp16`` variants stay consistent); ``tiny`` bakes into a diffusers folder.

Which tensor a kohya module name modifies comes from :func:`engine.lora.names.find_targets`
run on the base's own diffusers module tree (built on the meta device from its configs: no
weights are loaded for naming), mapped to the file's key names by :mod:`engine.models.ldm_keys`
for single files. Everything is checked before anything is written: a LoRA whose modules do
not fit the base (another family, another width) is one error naming a few modules, and no
output appears. The output is written atomically: a temporary file renamed into place, or a
folder built as a temporary sibling and renamed.

Each new weight is computed in float64 from the stored weight and the LoRA factors, then
rounded once to the storage dtype. How much of the delta that rounding loses is reported per
module (``rounding``: ‖stored − (W + ratio·Δ)‖ / ‖ratio·Δ‖): in fp16 it is about
``5e-4 · ‖W‖/‖Δ‖``, which for the small deltas of copy-machine LoRAs can be large — bake into
fp32 (``save_precision="float"``) when the baked models are only a step towards extraction.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from engine.errors import CopyloraError, LoRAFileError, ModelError, Problem, ValidationError
from engine.files import staging_folder
from engine.formats.model_files import BUILTIN_MODELS
from engine.hashing import file_sha256

if TYPE_CHECKING:
    from engine.lora.weights import LoRAWeights

WEIGHT_SUFFIX = ".safetensors"
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")
_TINY_MARK = "copylora-complete"  # the tiny cache's completeness mark: not part of a model


class BakeError(CopyloraError):
    """Baking failed (the inputs were valid, the work itself could not be done)."""


@dataclass
class BakedModule:
    name: str  # kohya module name
    key: str  # the tensor's key in the output (single file: original name; folder: component/key)
    shape: list[int]
    weight_norm: float  # ‖W‖_F before
    delta_norm: float  # ‖ratio · alpha/r · up@down‖_F
    rounding: float  # ‖stored − (W + Δ)‖_F / ‖Δ‖_F: how much of Δ the storage dtype lost


@dataclass
class BakeResult:
    path: Path
    format: str  # "single-file" or "diffusers"
    family: str
    ratio: float
    modules: list[BakedModule] = field(default_factory=list)
    files_rewritten: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def max_rounding(self) -> float:
        return max((m.rounding for m in self.modules), default=0.0)


@dataclass
class _Change:
    name: str
    weights: LoRAWeights
    key: str  # key inside the file
    label: str  # key as reported
    part: int | None = None  # a third of a fused q/k/v tensor's rows (OpenCLIP), else None


# --------------------------------------------------------------------------- source


def _resolve_base(base_spec: str) -> tuple[str, Path]:
    """("diffusers" | "single-file", path) of a base model spec, or a clear error."""
    from engine.models.tiny import BUILTIN_MODEL_DIRS, builtin_model_dir

    if base_spec in BUILTIN_MODEL_DIRS:
        return "diffusers", builtin_model_dir(base_spec)
    path = Path(base_spec).expanduser()
    if not path.exists():
        raise ModelError(f"base model not found: {base_spec} (give 'tiny', 'tiny-sdxl', a diffusers folder or a .safetensors file)")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"{path}: not a diffusers model folder (no model_index.json)")
        return "diffusers", path
    if path.suffix.lower() == WEIGHT_SUFFIX:
        return "single-file", path
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise ModelError(
            f"{path}: baking writes the format it reads, and copylora does not write pickled .ckpt files; "
            "convert the checkpoint to .safetensors first (e.g. with A1111's checkpoint merger) and bake that"
        )
    raise ModelError(f"{base_spec}: not a model (expected a diffusers folder or a .safetensors file)")


def _read_header(path: Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """Key -> shape and the metadata of a safetensors file, from its header alone (no torch)."""
    from engine.formats.safetensors_header import HeaderError, read_header

    try:
        header = read_header(path)
    except HeaderError as exc:  # says which: not safetensors, truncated, bad JSON, unreadable
        raise ModelError(f"{path}: cannot read as safetensors: {exc}") from None
    return header.shapes(), header.metadata


def _meta_components(config_root: Path, family: str) -> dict:
    """The model's U-Net and text encoders on the meta device, built from its configs (names only)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    components = {}
    try:
        with torch.device("meta"):
            components["unet"] = UNet2DConditionModel.from_config(
                json.loads((config_root / "unet" / "config.json").read_text())
            )
            for name in TEXT_COMPONENTS:
                folder = config_root / name
                if not (folder / "config.json").is_file():
                    continue
                config = CLIPTextConfig.from_pretrained(str(folder))
                cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
                components[name] = cls(config)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{config_root}: unusable model configs ({type(exc).__name__}: {exc})") from exc
    from engine.formats.model_files import is_sdxl

    if is_sdxl(family) and "text_encoder_2" not in components:
        raise ModelError(f"{config_root}: an SDXL model without text_encoder_2/config.json")
    return components


def _module_keys(components: dict, family: str, lora_names=()) -> dict[str, tuple[str, str, tuple]]:
    """kohya name -> (component, state-dict key of the weight, shape per the configs), for
    kohya's targets and any other layer one of ``lora_names`` names (names.find_targets)."""
    from engine.lora.names import find_targets

    encoders = [components[n] for n in TEXT_COMPONENTS if n in components]
    targets = find_targets(components["unet"], encoders, family, with_conv=True, also=lora_names)
    where: dict[int, tuple[str, str]] = {}
    for component, root in components.items():
        for path, module in root.named_modules():
            where.setdefault(id(module), (component, path))
    out = {}
    for target in targets:
        component, path = where[id(target.module)]
        out[target.name] = (component, f"{path}.weight", tuple(target.module.weight.shape))
    return out


def _delta_shape(weights) -> tuple:
    return (weights.up.shape[0], *weights.down.shape[1:])


def _fits(delta_shape: tuple, weight_shape: tuple) -> bool:
    """Same shape, or the same up to trailing 1x1 dims (a Linear LoRA on a 1x1 conv)."""
    def squeeze(s):
        s = tuple(s)
        return s[:2] if len(s) == 4 and s[2:] == (1, 1) else s

    return tuple(delta_shape) == tuple(weight_shape) or squeeze(delta_shape) == squeeze(weight_shape)


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items) - n} more)" if len(items) > n else "")


# --------------------------------------------------------------------------- planning


def _plan_single_file(path: Path, lora, config_dir, lora_name: str) -> tuple[str, dict[Path, dict[str, list[_Change]]]]:
    from engine.formats.model_files import detect_family
    from engine.lora.names import sgm_layout
    from engine.models.ldm_keys import UnsupportedLayout, single_file_key
    from engine.models.loading import CONFIG_ROOT

    shapes, _ = _read_header(path)
    family = detect_family(shapes)
    configs = Path(config_dir) if config_dir else CONFIG_ROOT / family
    try:
        single_file_key(family, "unet", "conv_in.weight", None)  # fails early for unmapped families
    except UnsupportedLayout as exc:
        raise ModelError(f"{path}: cannot bake into this checkpoint: {exc}. Bake into the same model as a diffusers folder instead") from None
    components = _meta_components(configs, family)
    layout = sgm_layout(components["unet"])
    targets = _module_keys(components, family, lora.modules)
    _check_names(lora, targets, family, lora_name)
    changes: dict[str, list[_Change]] = {}
    missing, mismatched = [], []
    for name, weights in lora.modules.items():
        component, key, _ = targets[name]
        try:
            original, part = single_file_key(family, component, key, layout)
        except UnsupportedLayout as exc:
            missing.append(f"{name} ({exc})")
            continue
        shape = shapes.get(original)
        if shape is not None and part is not None:
            shape = (shape[0] // 3, *shape[1:]) if shape[0] % 3 == 0 else None
        if original not in shapes:
            missing.append(f"{name} -> {original}")
        elif shape is None or not _fits(_delta_shape(weights), shape):
            shown = "x".join(map(str, shape or shapes[original]))
            mismatched.append(f"{name} ({'x'.join(map(str, _delta_shape(weights)))} vs {shown})")
        else:
            label = original if part is None else f"{original}[{'qkv'[part]}]"
            changes.setdefault(original, []).append(_Change(name, weights, original, label, part))
    _raise_problems(path, lora_name, family, missing, mismatched)
    return family, {path: changes}


def _plan_folder(folder: Path, lora, lora_name: str) -> tuple[str, dict[Path, dict[str, list[_Change]]]]:
    family = _folder_family_of(folder)
    return family, _plan_folder_of(folder, family, lora, lora_name)


def _base_family(kind: str, base: Path) -> str | None:
    """The base's family, for reading the LoRA's names that either family could have (None:
    not told here; the plan says what is wrong with the base)."""
    try:
        if kind == "single-file":
            from engine.formats.model_files import detect_family

            return detect_family(_read_header(base)[0])
        return _folder_family_of(base)
    except Exception:
        return None


def _folder_family_of(folder: Path) -> str:
    from engine.formats.model_files import _folder_family

    try:
        info = json.loads((folder / "model_index.json").read_text())
        unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
        sched_path = folder / "scheduler" / "scheduler_config.json"
        sched_cfg = json.loads(sched_path.read_text()) if sched_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: unreadable diffusers config ({exc})") from exc
    return _folder_family(folder, info, unet_cfg, sched_cfg)


def _plan_folder_of(folder: Path, family: str, lora, lora_name: str) -> dict[Path, dict[str, list[_Change]]]:
    targets = _module_keys(_meta_components(folder, family), family, lora.modules)
    _check_names(lora, targets, family, lora_name)

    headers: dict[str, dict[Path, dict[str, tuple]]] = {}  # component -> file -> key -> shape
    plan: dict[Path, dict[str, list[_Change]]] = {}
    missing, mismatched = [], []
    for name, weights in lora.modules.items():
        component, key, _ = targets[name]
        if component not in headers:
            headers[component] = _component_files(folder / component)
        candidates = [key]
        if component in TEXT_COMPONENTS:  # transformers 4 saved CLIP with "text_model.", 5 without
            candidates.append(key[len("text_model."):] if key.startswith("text_model.") else "text_model." + key)
        found = False
        for file, shapes in headers[component].items():
            hit = next((k for k in candidates if k in shapes), None)
            if hit is None:
                continue
            found = True
            if not _fits(_delta_shape(weights), shapes[hit]):
                mismatched.append(f"{name} ({'x'.join(map(str, _delta_shape(weights)))} vs {'x'.join(map(str, shapes[hit]))})")
                break
            plan.setdefault(file, {}).setdefault(hit, []).append(_Change(name, weights, hit, f"{component}/{hit}"))
        if not found:
            missing.append(f"{name} -> {component}/{key}")
    _raise_problems(folder, lora_name, family, missing, mismatched)
    return plan


def _component_files(folder: Path) -> dict[Path, dict[str, tuple]]:
    files = sorted(folder.glob(f"*{WEIGHT_SUFFIX}")) if folder.is_dir() else []
    if not files:
        others = [p.name for p in folder.glob("*.bin")] if folder.is_dir() else []
        hint = f" (it has {', '.join(others)}: re-save the model with safe_serialization=True)" if others else ""
        raise ModelError(f"{folder}: no .safetensors weights to bake into{hint}")
    return {file: _read_header(file)[0] for file in files}


def _check_names(lora, targets: dict, family: str, lora_name: str) -> None:
    unknown = sorted(set(lora.modules) - set(targets))
    if not unknown:
        return
    from engine.merge.svd import family_of, same_architecture

    lora_family = family_of(lora)
    hint = f" (it looks like an {lora_family} LoRA)" if not same_architecture((lora_family, family)) else ""
    raise LoRAFileError(
        f"{lora_name}: {len(unknown)} of {len(lora.modules)} LoRA module(s) match nothing in this {family} "
        f"base model{hint}: {_few(unknown)}"
    )


def _raise_problems(base: Path, lora_name: str, family: str, missing: list[str], mismatched: list[str]) -> None:
    if mismatched:
        raise LoRAFileError(
            f"{lora_name}: {len(mismatched)} module(s) do not fit the shapes of {base.name} (a LoRA made for "
            f"another {family} model size?): {_few(mismatched, 3)}"
        )
    if missing:
        raise ModelError(
            f"{base}: {len(missing)} weight(s) the LoRA modifies are not in this checkpoint (an unusual "
            f"{family} layout?): {_few(missing, 3)}"
        )


# --------------------------------------------------------------------------- writing


def _rewrite(src: Path, dst: Path, changes: dict[str, list[_Change]], ratio: float, cast, note: dict,
             records: list[BakedModule], tick: Callable[[str], None]) -> None:
    """Copy ``src`` to ``dst`` with the LoRA deltas added to the tensors in ``changes``.

    A tensor's deltas (several for a fused q/k/v tensor, one per third of its rows) are added
    in float64 and the sum rounded once, so a fused tensor gets bit for bit the values its
    three separate projections get in a diffusers folder."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from engine.models.ldm_keys import rows_of

    with safe_open(str(src), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, group in changes.items():
        old = tensors[key]
        exact = old.to(torch.float64, copy=True)  # a copy even when the file is float64
        added = []
        for change in group:
            w = change.weights
            rows = rows_of(change.part, old.shape[0])
            rank = w.down.shape[0]
            delta = (w.up.reshape(w.up.shape[0], rank).double() @ w.down.reshape(rank, -1).double())
            delta = (delta * (ratio * w.alpha / rank)).reshape(old[rows].shape)
            exact[rows] += delta
            added.append((change, rows, delta))
        dtype = cast if cast is not None and old.is_floating_point() else old.dtype
        new = exact.to(dtype).contiguous()
        for change, rows, delta in added:
            delta_norm = float(delta.norm())
            lost = float((new[rows].double() - exact[rows]).norm())
            records.append(
                BakedModule(change.name, change.label, list(old[rows].shape), float(old[rows].double().norm()), delta_norm,
                            lost / delta_norm if delta_norm > 0 else 0.0)
            )
            tick(change.name)
        tensors[key] = new
    if cast is not None:
        for key, value in tensors.items():
            if value.is_floating_point() and value.dtype != cast:
                tensors[key] = value.to(cast)
    metadata["copylora_bake"] = json.dumps(note)
    try:
        save_file(tensors, str(dst), metadata=metadata)
    except Exception as exc:  # safetensors' SafetensorError ("Error while serializing: I/O error: … (os error 28)"): "internal error" it read
        from engine.files import write_failure

        dst.unlink(missing_ok=True)  # a partial checkpoint of gigabytes: gone, not left to load as a broken model
        raise write_failure(dst, exc) from exc


def bake_lora(
    base_spec: str,
    lora_path: str | os.PathLike,
    save_to: str | os.PathLike,
    ratio: float = 1.0,
    *,
    save_precision: str | None = None,
    config_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> BakeResult:
    """Write ``base + ratio·LoRA`` to ``save_to`` in the base's own format.

    ``base_spec``: ``"tiny"``, a diffusers folder or a single-file ``.safetensors``
    (SD1 or SDXL; SD2 single files are refused, their diffusers folders work).
    ``save_precision``: None keeps every tensor's dtype; ``"float"``/``"fp16"``/``"bf16"``
    casts every floating tensor of the written weight files (a folder then has all of its
    weight files rewritten). ``config_dir``: a diffusers folder whose configs name the modules
    of a single file (default: the shipped ones of its family). ``progress(done, total, name)``
    is called per module. Raises :class:`ModelError`, :class:`LoRAFileError` or
    :class:`ValidationError` before anything is written.
    """
    from engine.lora.files import load_lora_file, require_finite
    from engine.lora.weights import to_dtype

    started = time.perf_counter()
    lora_path, save_to = Path(lora_path), Path(save_to).expanduser()
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise ValidationError([Problem("ratio", f"must be a number, got {ratio!r}")]) from None
    if not math.isfinite(ratio):  # nan or inf would write a model of NaN weights
        raise ValidationError([Problem("ratio", f"must be a finite number, got {ratio}")])
    cast = None
    if save_precision not in (None, "", "same"):
        try:
            cast = to_dtype(save_precision)
        except ValueError as exc:
            raise ValidationError([Problem("save_precision", str(exc))]) from None
    kind, base = _resolve_base(base_spec)
    lora = load_lora_file(lora_path, family=_base_family(kind, base))
    require_finite(lora_path, lora.modules, "baked")
    _check_destination(kind, base, save_to)
    _check_room(base, save_to, cast)

    if kind == "single-file":
        family, plan = _plan_single_file(base, lora, config_dir, lora_path.name)
    else:
        family, plan = _plan_folder(base, lora, lora_path.name)

    note = {
        "lora": lora_path.name,
        "lora_sha256": file_sha256(lora_path),
        "ratio": ratio,
        "base": base_spec if base_spec in BUILTIN_MODELS else base.name,
        "modules": len(lora.modules),
        "save_precision": save_precision or "same",
    }
    result = BakeResult(save_to, kind, family, ratio)
    total, done = sum(len(group) for changes in plan.values() for group in changes.values()), [0]

    def tick(name: str) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total, name)

    if kind == "single-file":
        from engine.files import atomic_write

        changes = plan[base]
        atomic_write(save_to, lambda tmp: _rewrite(base, tmp, changes, ratio, cast, note, result.modules, tick))
        result.files_rewritten = [save_to.name]
    else:
        _write_folder(base, save_to, plan, ratio, cast, note, result, tick)
    result.seconds = time.perf_counter() - started
    return result


def _check_room(base: Path, save_to: Path, cast) -> None:
    """Refuse, before minutes of work, a bake whose checkpoint cannot fit on its disk: it is
    as large as the base (twice, cast from 16 bits to float). A full disk failed it at the end."""
    import shutil

    from engine.files import nearest_folder

    if not isinstance(base, Path) or not base.exists():  # the built-in tiny model: a few MB
        return
    try:
        size = base.stat().st_size if base.is_file() else sum(f.stat().st_size for f in base.rglob("*") if f.is_file())
        free = shutil.disk_usage(nearest_folder(save_to.parent)).free
    except OSError:
        return
    import torch

    needed = size * (2 if cast is torch.float32 else 1)
    if free < needed:
        from engine.files import free_text

        folder = nearest_folder(save_to.parent)
        took = f"{needed / 1e9:.1f} GB" if needed >= 1e9 else f"{needed / 1e6:.1f} MB"
        raise ValidationError([Problem("save_to", f"the baked checkpoint takes about {took}, and its disk has "
                                                  f"{free_text(folder)} (df -h {folder})")])


def _real(path: Path) -> Path:
    """``path`` with its links followed; a link loop stays as it is (``Path.resolve`` raised
    RuntimeError on one: an internal error for a ``--save_to`` that was a looping link)."""
    return Path(os.path.realpath(path))


def _check_destination(kind: str, base: Path, save_to: Path) -> None:
    problems = []
    if kind == "single-file":
        if save_to.suffix.lower() != WEIGHT_SUFFIX:
            problems.append(Problem("save_to", "the base is a single-file checkpoint, so the baked model is one too: "
                                    f"give a .safetensors path, got {save_to.name}"))
        elif save_to.is_dir():
            problems.append(Problem("save_to", f"{save_to} is a folder"))
        elif save_to.exists() and _real(save_to) == _real(base):
            problems.append(Problem("save_to", "is the base model itself; bake into a new file"))
    else:
        resolved, base_resolved = _real(save_to), _real(base)
        if save_to.suffix.lower() in (WEIGHT_SUFFIX, ".ckpt"):
            problems.append(Problem("save_to", f"the base is a diffusers folder, so the baked model is a folder too: give a folder path, got {save_to.name}"))
        elif save_to.exists():
            problems.append(Problem("save_to", f"{save_to} already exists; remove it or choose a new folder name"))
        elif save_to.is_symlink():  # to nothing or to itself: the finished folder could not be renamed over it
            problems.append(Problem("save_to", f"{save_to} is a broken link (to {os.readlink(save_to)}); remove it or choose a new folder name"))
        elif resolved == base_resolved or base_resolved in resolved.parents:
            problems.append(Problem("save_to", "must not be inside the base model folder"))
    if problems:
        raise ValidationError(problems)


def _write_folder(base: Path, save_to: Path, plan: dict, ratio: float, cast, note: dict, result: BakeResult, tick) -> None:
    """Copy the folder to a temporary sibling, rewrite the changed weight files, rename it into place."""
    rewrite = dict(plan)
    if cast is not None:  # a new precision: every weight file is rewritten (most with no delta)
        for file in base.rglob(f"*{WEIGHT_SUFFIX}"):
            rewrite.setdefault(file, {})
    skip = {_real(p) for p in rewrite}

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        return {n for n in names if n == _TINY_MARK or _real(here / n) in skip}

    save_to.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_folder(save_to, suffix=".tmp")
    try:
        shutil.copytree(base, tmp, ignore=ignore, dirs_exist_ok=True)
        for src, changes in sorted(rewrite.items()):
            dst = tmp / src.relative_to(base)
            _rewrite(src, dst, changes, ratio, cast, note, result.modules, tick)
            result.files_rewritten.append(str(src.relative_to(base)))
        try:
            os.rename(tmp, save_to)
        except OSError as exc:
            raise BakeError(f"cannot move the baked model into place at {save_to} ({exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after the rename


