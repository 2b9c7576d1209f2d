"""LoRA files: kohya's safetensors layout, written and read (any tool's)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engine.errors import LoRAFileError
from engine.lora.weights import _SUFFIXES, LoRAFile, LoRAWeights, to_dtype


def uniform_alpha(modules: Mapping[str, LoRAWeights]) -> dict[str, LoRAWeights]:
    """The same LoRA with one alpha for every module, each module's scale folded into ``up``.

    diffusers' ``load_lora_weights`` (0.42) mis-scales modules whose alpha differs from the
    file's most common alpha, so files we write never have two alphas. The most common alpha
    is kept (often all modules already share it and nothing changes); any other module gets
    ``up * (its alpha / common alpha)``, which leaves ``alpha/rank * up @ down`` unchanged.
    """
    if not modules:
        return {}
    common = Counter(w.alpha for w in modules.values()).most_common(1)[0][0]
    out = {}
    for name, w in modules.items():
        if w.alpha == common:
            out[name] = w
        else:
            out[name] = LoRAWeights(w.down, (w.up.double() * (w.alpha / common)).to(w.up.dtype), common)
    return out


def save_lora_file(
    path: str | os.PathLike,
    modules: Mapping[str, LoRAWeights | tuple],
    metadata: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype = "fp16",
) -> Path:
    """Write ``{name: (down, up, alpha)}`` as a kohya LoRA safetensors file, atomically.

    All tensors (alpha too, as kohya does) are cast to ``dtype``; alphas are made uniform
    (:func:`uniform_alpha`); metadata values become strings and kohya's ``sshs_model_hash`` /
    ``sshs_legacy_hash`` are added (:func:`kohya_hashes`).
    """
    from safetensors.torch import save_file

    target = to_dtype(dtype)
    normalised = {}
    for name, item in modules.items():
        down, up, alpha = item
        rank = down.shape[0]
        alpha = float(rank if alpha is None or float(alpha) == 0 else alpha)
        normalised[name] = LoRAWeights(down.detach().float().cpu(), up.detach().float().cpu(), alpha)
    tensors = {}
    uniform = uniform_alpha(normalised)
    for name, w in uniform.items():
        # Copies: a training LoRA's weights are views into one buffer (engine/train/flat_optim.py),
        # and safetensors refuses tensors that share memory.
        tensors[f"{name}.lora_down.weight"] = w.down.to(target, copy=True).contiguous()
        tensors[f"{name}.lora_up.weight"] = w.up.to(target, copy=True).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(w.alpha).to(target)
        for factor, given in ((f"{name}.lora_down.weight", w.down), (f"{name}.lora_up.weight", w.up)):
            # Finite weights that overflow the precision they are saved in (a merge at a large ratio,
            # in fp16) became inf: a LoRA that draws nothing, and that every reader refuses.
            if not torch.isfinite(tensors[factor]).all() and torch.isfinite(given).all():
                bound = " (fp16's largest is 65504: save as float or bf16)" if target == torch.float16 else ""
                raise LoRAFileError(f"{path}: module {name}'s {factor.rsplit('.', 2)[1]} does not fit "
                                    f"{str(target).removeprefix('torch.')}{bound}; nothing was written")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    _stored_alphas(meta, uniform, normalised)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = kohya_hashes(tensors, meta)
    path = Path(path)

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except OSError:
            raise
        except Exception as exc:  # safetensors reports I/O failures as SafetensorError ("… (os error 28)" for a full disk)
            from engine.files import write_failure

            raise write_failure(path, exc) from exc

    from engine.files import atomic_write

    return atomic_write(path, write)  # fsynced, renamed into place, the umask's mode


def _stored_alphas(meta: dict[str, str], stored: Mapping[str, LoRAWeights], given: Mapping[str, LoRAWeights]) -> None:
    """The metadata's alphas as the file stores them, where :func:`uniform_alpha` changed some
    (a conv_alpha apart from network_alpha): kohya's ``--network_weights`` scales each module by
    the alphas it is told, and a user tells it what the metadata says."""
    if not stored or all(stored[name].alpha == w.alpha for name, w in given.items()):
        return
    alpha = next(iter(stored.values())).alpha

    def differs(value: Any) -> bool:
        try:
            return float(value) != alpha
        except (TypeError, ValueError):
            return True

    if "ss_network_alpha" in meta and differs(meta["ss_network_alpha"]):
        meta["ss_network_alpha"] = str(alpha)
    try:
        args = json.loads(meta.get("ss_network_args") or "null")
    except ValueError:
        return
    if isinstance(args, dict) and "conv_alpha" in args and differs(args["conv_alpha"]):
        args["conv_alpha"] = str(alpha)
        meta["ss_network_args"] = json.dumps(args)


def kohya_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """kohya's ``sshs_model_hash`` and ``sshs_legacy_hash`` (sd-webui-additional-networks).

    As kohya's ``precalculate_safetensors_hashes``: serialise the tensors with only the
    ``ss_*`` metadata (so later edits of other metadata keep the hash); the model hash is the
    sha256 of everything after the header, the legacy hash the first 8 hex digits of the
    sha256 of the 64 KiB at offset 1 MiB of that serialisation (empty, so ``e3b0c442``, for
    files under 1 MiB). Both describe that serialisation, not the bytes of the final file.
    """
    from safetensors.torch import save

    blob = save(dict(tensors), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(blob[8 + header :]).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def load_lora_file(path: str | os.PathLike, dtype: torch.dtype | None = None, family: str | None = None) -> LoRAFile:
    """Read a kohya-format LoRA (any tool's): ``LoRAFile(modules, metadata)``.

    Accepts any rank/alpha per module, conv modules, a missing alpha (= rank, as kohya),
    fp16/bf16/fp32. Module names come back as kohya's: PEFT/diffusers files
    (``unet.….lora_A.weight``, ``text_encoder.``/``text_encoder_2.``; alphas from their
    ``lora_adapter_metadata``, else alpha = rank) and SDXL files with diffusers-layout U-Net
    names are renamed (see :func:`engine.lora.names.kohya_module_names`). Anything unreadable
    raises :class:`LoRAFileError` saying why. ``dtype``: convert the tensors (default: keep
    the file's dtype). ``family``: the model it is for, where known (see kohya_module_names).
    """
    from engine.lora.names import PEFT_COMPONENTS, PEFT_FACTORS, kohya_module_names

    path = Path(path)
    if not path.is_file():
        raise LoRAFileError(f"LoRA file not found: {path}")
    tensors, metadata = _read_tensors(path)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    strange = []
    for key, value in tensors.items():
        suffix = next((s for s in (*_SUFFIXES, *PEFT_FACTORS) if key.endswith(s)), None)
        if suffix is None:
            strange.append(key)
            continue
        groups.setdefault(key[: -len(suffix)], {})[PEFT_FACTORS.get(suffix, suffix)] = value
    if full := [key for key in strange if key.endswith((".diff", ".diff_b"))]:
        raise LoRAFileError(
            f"{path}: holds {len(full)} full weight or bias difference(s) such as {full[0]!r}, as ComfyUI's LoRA extraction "
            "writes with bias_diff on: copylora's LoRAs hold low-rank layers only; extract it again with bias_diff off"
        )
    if strange:
        raise LoRAFileError(
            f"{path}: not a standard LoRA file (kohya lora_down/lora_up/alpha or PEFT lora_A/lora_B): "
            f"{len(strange)} unsupported key(s) such as {strange[0]!r} (LyCORIS' LoHa/LoKr, DoRA and diffusers' "
            "old attention-processor formats are not supported; LyCORIS' LoRA and LoCon are)"
        )
    if not groups:
        raise LoRAFileError(f"{path}: holds no LoRA modules")
    names = kohya_module_names(list(groups), metadata, family)
    adapter = _peft_adapter_metadata(metadata)
    modules = {}
    for name, parts in groups.items():
        down, up = parts.get(".lora_down.weight"), parts.get(".lora_up.weight")
        if down is None or up is None:
            raise LoRAFileError(f"{path}: module {name} lacks its lora_down or lora_up weight")
        if down.dim() not in (2, 4) or up.dim() != down.dim() or up.shape[1] != down.shape[0]:
            raise LoRAFileError(f"{path}: module {name} has inconsistent shapes {tuple(down.shape)} / {tuple(up.shape)}")
        if down.shape[0] == 0:  # alpha/rank would divide by zero in every use of it
            raise LoRAFileError(f"{path}: module {name} has rank 0 (its lora_down and lora_up hold no weights)")
        down, up = _floating(path, name, "lora_down", down), _floating(path, name, "lora_up", up)
        stored = parts.get(".alpha")
        try:
            given = _alpha(name, stored) if stored is not None else _peft_alpha(name, adapter) if name.startswith(PEFT_COMPONENTS) else None
        except LoRAFileError as exc:
            raise LoRAFileError(f"{path}: {exc}") from None
        if given and stored is None and name.startswith(PEFT_COMPONENTS) and _peft_rslora(name, adapter):
            given *= math.sqrt(down.shape[0])  # rsLoRA scales by alpha/√rank; kohya's alpha/rank then needs alpha·√rank
        alpha = given if given is not None and given != 0 else float(down.shape[0])  # 0 or none: alpha = rank, as kohya and A1111 read it
        if dtype is not None:
            down, up = down.to(dtype), up.to(dtype)
        kohya = names[name]
        if kohya in modules:
            twin = next(n for n in groups if n != name and names[n] == kohya)
            raise LoRAFileError(f"{path}: modules {twin} and {name} are the same module ({kohya}) under two names")
        modules[kohya] = LoRAWeights(down, up, alpha)
    return LoRAFile(modules, metadata)


# float8 LoRAs exist (saved to halve a file again); every value of both float8 kinds is exact in
# float32, which the merge's SVD and the finite checks need (torch has no isfinite for float8).
_FLOAT8 = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, name))


def _floating(path: Path, name: str, factor: str, tensor: torch.Tensor) -> torch.Tensor:
    """A factor as a LoRA holds it: floating point (float8 read as float32). Integers, booleans
    and complex numbers were read as if they were weights (a complex LoRA merged as its real
    part, silently): no LoRA format stores them so, so the file is refused, naming the tensor."""
    if tensor.dtype in _FLOAT8:
        return tensor.float()
    if not tensor.is_floating_point():
        raise LoRAFileError(f"{path}: module {name}'s {factor} holds {str(tensor.dtype).removeprefix('torch.')} values; "
                            "a LoRA's weights are floating point (fp32, fp16, bf16 or fp8)")
    return tensor


def _alpha(name: str, stored: torch.Tensor) -> float:
    """A module's stored alpha: one finite number (kohya writes a 0-d tensor; a 1-element one is read too)."""
    if stored.numel() != 1 or stored.is_complex():
        raise LoRAFileError(f"module {name}'s alpha has shape {tuple(stored.shape)}; an alpha is one number")
    value = float(stored.float() if stored.dtype in _FLOAT8 else stored)
    if not math.isfinite(value):
        raise LoRAFileError(f"module {name}'s alpha is {value}; an alpha is a finite number")
    return value


def require_finite(path: str | os.PathLike, modules: Mapping[str, LoRAWeights], use: str) -> None:
    """Refuse a LoRA holding NaN or ±inf (a training that diverged, a damaged file) before it is
    ``use``d ("applied", "baked"…): applied, it drew black or noise pictures with no word why;
    baked, it wrote a model that draws nothing. The merge says the same in its own words."""
    for name, w in modules.items():
        if not (torch.isfinite(w.down).all() and torch.isfinite(w.up).all()):
            raise LoRAFileError(f"{path}: module {name} holds NaN or infinite values (a training that diverged?); it cannot be {use}")


def _peft_adapter_metadata(metadata: Mapping[str, str]) -> dict:
    """diffusers' ``lora_adapter_metadata`` (PEFT settings per component, e.g. ``unet.lora_alpha``)."""
    try:
        data = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _peft_alpha(name: str, adapter: Mapping[str, Any]) -> float | None:
    """A PEFT module's alpha: its ``alpha_pattern`` entry, else the component's ``lora_alpha``
    (None: not given, so alpha = rank, PEFT's and diffusers' convention without metadata)."""
    import re

    component, _, module = name.partition(".")
    patterns = adapter.get(f"{component}.alpha_pattern") or {}
    try:
        for pattern, value in (patterns.items() if isinstance(patterns, dict) else ()):
            if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
                return _metadata_alpha(name, value)
    except re.error as exc:
        raise LoRAFileError(f"module {name}: lora_adapter_metadata's alpha_pattern {pattern!r} is not a pattern ({exc})") from None
    value = adapter.get(f"{component}.lora_alpha")
    return _metadata_alpha(name, value) if value is not None else None


def _peft_rslora(name: str, adapter: Mapping[str, Any]) -> bool:
    """Whether the PEFT component of ``name`` was trained with rank-stabilised LoRA (``use_rslora``)."""
    return adapter.get(f"{name.partition('.')[0]}.use_rslora") is True


def _metadata_alpha(name: str, value: Any) -> float:
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = math.nan
    if not math.isfinite(alpha):
        raise LoRAFileError(f"module {name}: lora_adapter_metadata gives alpha {value!r}; an alpha is a finite number")
    return alpha


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from engine.errors import first_line
    from engine.formats.safetensors_header import HeaderError, read_header, sniff

    if path.suffix.lower() != ".safetensors":
        kind = sniff(path)
        if kind is None or not ("pickle" in kind or "zip" in kind):
            raise LoRAFileError(f"{path}: not a LoRA file ({kind or 'neither safetensors nor a torch checkpoint'})")
        from engine.formats.model_files import pickle_problem

        problem = pickle_problem(path)  # read from the pickle's opcodes, never executed
        if problem:
            raise LoRAFileError(f"{path}: {problem}")
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # refused pickles included: never trust a .pt's objects
            raise LoRAFileError(f"{path}: cannot read as a plain-tensor checkpoint ({first_line(exc)})") from None
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise LoRAFileError(f"{path}: not a LoRA state dict")
        return data, {}
    try:
        read_header(path)  # a clear word for a PNG renamed .safetensors, a truncated copy, ...
    except HeaderError as exc:
        raise LoRAFileError(f"{path}: {exc}") from None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as exc:  # SafetensorError, OSError, ...: one message for a damaged file
        raise LoRAFileError(f"{path}: not a readable safetensors file, truncated or damaged? ({first_line(exc)})") from None


