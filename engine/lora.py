"""The LoRA network (kohya's ``networks.lora`` semantics) and its file format.

A :class:`LoRANetwork` adds ``multiplier * alpha/rank * up(down(x))`` to the output of each
target module (see :mod:`engine.lora_names`). It never touches or copies base weights: each
LoRA is a forward hook on the original module, so :meth:`LoRANetwork.remove` restores the
model exactly. Files are kohya's safetensors layout (``<name>.lora_down.weight``,
``<name>.lora_up.weight``, ``<name>.alpha``), which A1111, ComfyUI, kohya and diffusers read.

:func:`save_lora_file` and :func:`load_lora_file` work on plain ``{name: LoRAWeights}``
mappings, so the merge and extraction code write and read files the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from engine.errors import LoRAFileError
from engine.lora_names import find_targets

_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
SAVE_DTYPES = {
    "float": torch.float32,
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class LoRAWeights(NamedTuple):
    """One module's LoRA: ``delta = alpha / rank * up @ down`` (rank = ``down.shape[0]``)."""

    down: torch.Tensor  # (rank, in) or (rank, in, k, k)
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRAFile(NamedTuple):
    modules: dict[str, LoRAWeights]
    metadata: dict[str, str]


def lora_delta(down: torch.Tensor, up: torch.Tensor, alpha: float) -> torch.Tensor:
    """The dense weight change of one module, shaped like the base weight."""
    rank = down.shape[0]
    flat = up.reshape(up.shape[0], rank).float() @ down.reshape(rank, -1).float()
    return (flat * (alpha / rank)).reshape(up.shape[0], *down.shape[1:])


def to_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """A torch dtype from kohya's precision names ("float", "fp16", "bf16") or a dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return SAVE_DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown precision {dtype!r}; use one of float, fp16, bf16") from None


# --------------------------------------------------------------------------- modules


class LoRAModule(nn.Module):
    """One low-rank adapter on a Linear or Conv2d, shaped as kohya shapes it.

    A k x k conv gets a k x k ``lora_down`` (same stride/padding as the base conv) and a
    1 x 1 ``lora_up``; ``lora_up`` starts at zero so a new network changes nothing.
    """

    def __init__(self, name: str, base: nn.Module, rank: int, alpha: float | None, multiplier: float = 1.0):
        super().__init__()
        self.name = name
        self.rank = rank
        if isinstance(base, nn.Conv2d):
            self.lora_down = nn.Conv2d(
                base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False
            )
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        else:
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        # Same init as kohya: the first optimizer steps then behave the same.
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.register_buffer("alpha", torch.tensor(0.0))
        self.set_alpha(alpha)
        self.multiplier = multiplier
        # Not an attribute nn.Module would register: the base weights must stay out of
        # this network's parameters and state dict.
        self.__dict__["base"] = base
        self._hook = None

    def set_alpha(self, alpha: float | None) -> None:
        alpha = float(self.rank if alpha is None or float(alpha) == 0 else alpha)  # kohya: 0/None means rank
        self.alpha.fill_(alpha)
        self.scale = alpha / self.rank  # a Python float: no device sync in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The LoRA's own contribution for input ``x`` (multiplier and scale included)."""
        return self.lora_up(self.lora_down(x)) * (self.multiplier * self.scale)

    def _add_delta(self, module, args, output):
        if self.multiplier == 0:
            return output  # strength 0 is exactly the base model, not base + 0*delta
        x = args[0]
        return output + self(x.to(self.lora_down.weight.dtype)).to(output.dtype)

    def apply(self) -> None:
        if self._hook is None:
            self._hook = self.base.register_forward_hook(self._add_delta)

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def weights(self) -> LoRAWeights:
        return LoRAWeights(self.lora_down.weight.detach(), self.lora_up.weight.detach(), float(self.alpha))


class LoRANetwork(nn.Module):
    """All LoRA modules of one model (U-Net + text encoders), kohya-named.

    ``rank``/``alpha`` apply to Linear and 1x1 conv targets; ``conv_rank`` > 0 also targets
    ResNet blocks and samplers, whose k x k convs get ``conv_rank``/``conv_alpha``.
    ``modules`` ({name: (rank, alpha)}) instead builds exactly those modules, as a file has
    them (any rank per module). ``text_encoder=False`` leaves the text encoders alone.
    """

    def __init__(
        self,
        unet,
        text_encoders,
        *,
        family: str = "sd1",
        rank: int = 8,
        alpha: float | None = 1.0,
        conv_rank: int = 0,
        conv_alpha: float | None = None,
        multiplier: float = 1.0,
        text_encoder: bool = True,
        modules: Mapping[str, tuple[int, float | None]] | None = None,
    ):
        super().__init__()
        self.family = family
        self.multiplier = multiplier
        encoders = list(text_encoders) if text_encoder else []
        with_conv = conv_rank > 0 or modules is not None
        targets = find_targets(unet, encoders, family, with_conv)
        self.unet_loras = nn.ModuleDict()
        self.text_encoder_loras = nn.ModuleDict()
        if modules is not None:
            known = {t.name for t in targets}
            unknown = sorted(set(modules) - known)
            if unknown:
                raise LoRAFileError(
                    f"{len(unknown)} LoRA module(s) match nothing in this {family} model "
                    f"(wrong base model family?): {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
                )
        for target in targets:
            if modules is not None:
                if target.name not in modules:
                    continue
                r, a = modules[target.name]
            elif target.uses_conv_rank:
                r, a = conv_rank, 1.0 if conv_alpha is None else conv_alpha  # kohya's default conv_alpha
            else:
                r, a = rank, alpha
            lora = LoRAModule(target.name, target.module, r, a, multiplier)
            (self.text_encoder_loras if target.is_text else self.unet_loras)[target.name] = lora
        device = next(iter(unet.parameters())).device
        if device.type != "meta":  # shape-only models keep their LoRAs real, for inspection
            self.to(device)

    # ----------------------------------------------------------------- use

    def loras(self) -> list[LoRAModule]:
        return [*self.unet_loras.values(), *self.text_encoder_loras.values()]

    def apply_to(self) -> LoRANetwork:
        """Hook every LoRA into its module; the model's forward now includes them."""
        for lora in self.loras():
            lora.apply()
        return self

    def remove(self) -> None:
        """Unhook every LoRA: the model computes exactly what it did before."""
        for lora in self.loras():
            lora.remove()

    def set_multiplier(self, multiplier: float) -> None:
        """The LoRA strength (1.0 = as trained, 0.0 = base model)."""
        self.multiplier = multiplier
        for lora in self.loras():
            lora.multiplier = multiplier

    def unet_parameters(self) -> list[nn.Parameter]:
        return [p for lora in self.unet_loras.values() for p in lora.parameters()]

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        return [p for lora in self.text_encoder_loras.values() for p in lora.parameters()]

    def param_groups(self, unet_lr: float, text_encoder_lr: float | None = None) -> list[dict]:
        """Optimizer parameter groups: U-Net and text encoder at their own learning rates."""
        groups = []
        if self.unet_loras:
            groups.append({"params": self.unet_parameters(), "lr": unet_lr})
        if self.text_encoder_loras:
            groups.append({"params": self.text_encoder_parameters(), "lr": text_encoder_lr or unet_lr})
        return groups

    # ----------------------------------------------------------------- weights

    def weights(self) -> dict[str, LoRAWeights]:
        """``{kohya name: LoRAWeights}``, U-Net modules first, then text encoders."""
        return {lora.name: lora.weights() for lora in self.loras()}

    def load_weights(self, source: str | os.PathLike | Mapping[str, LoRAWeights], strict: bool = True) -> None:
        """Copy weights (and alphas) from a file or a ``{name: LoRAWeights}`` mapping.

        ``strict``: every module of the network must be in the source and vice versa.
        """
        weights = load_lora_file(source).modules if isinstance(source, (str, os.PathLike)) else source
        mine = {lora.name: lora for lora in self.loras()}
        if strict:
            missing, extra = sorted(set(mine) - set(weights)), sorted(set(weights) - set(mine))
            if missing or extra:
                raise LoRAFileError(
                    f"LoRA weights do not fit this network: {len(missing)} module(s) missing "
                    f"({', '.join(missing[:3])}), {len(extra)} unexpected ({', '.join(extra[:3])})"
                )
        with torch.no_grad():
            for name, w in weights.items():
                lora = mine.get(name)
                if lora is None:
                    continue
                if w.down.shape != lora.lora_down.weight.shape or w.up.shape != lora.lora_up.weight.shape:
                    raise LoRAFileError(
                        f"{name}: shapes {tuple(w.down.shape)}/{tuple(w.up.shape)} do not fit "
                        f"{tuple(lora.lora_down.weight.shape)}/{tuple(lora.lora_up.weight.shape)}"
                    )
                lora.lora_down.weight.copy_(w.down)
                lora.lora_up.weight.copy_(w.up)
                lora.set_alpha(w.alpha)

    def save(self, path: str | os.PathLike, dtype: str | torch.dtype = "fp16", metadata: Mapping[str, Any] | None = None):
        """Write a kohya LoRA file (see :func:`save_lora_file`)."""
        return save_lora_file(path, self.weights(), metadata, dtype)

    @classmethod
    def from_file(cls, path, unet, text_encoders, family: str = "sd1", multiplier: float = 1.0) -> LoRANetwork:
        """A network shaped like a LoRA file (any ranks) holding its weights; not yet applied."""
        lora = load_lora_file(path)
        specs = {name: (w.rank, w.alpha) for name, w in lora.modules.items()}
        network = cls(unet, text_encoders, family=family, multiplier=multiplier, modules=specs)
        network.load_weights(lora.modules)
        return network


def apply_lora_file(path, model, multiplier: float = 1.0) -> LoRANetwork:
    """Apply a LoRA file to a :class:`engine.models.BaseModel` at a strength; undo with ``.remove()``."""
    network = LoRANetwork.from_file(path, model.unet, model.text_encoders, model.family, multiplier)
    return network.apply_to()


# --------------------------------------------------------------------------- files


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
    for name, w in uniform_alpha(normalised).items():
        tensors[f"{name}.lora_down.weight"] = w.down.to(target).contiguous()
        tensors[f"{name}.lora_up.weight"] = w.up.to(target).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(w.alpha).to(target)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = kohya_hashes(tensors, meta)
    path = Path(path)

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except OSError:
            raise
        except Exception as exc:  # safetensors reports I/O failures as SafetensorError
            from engine.errors import first_line

            raise OSError(f"cannot write {path}: {first_line(exc)}") from exc

    from engine.files import atomic_write

    return atomic_write(path, write)  # fsynced, renamed into place, the umask's mode


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


def load_lora_file(path: str | os.PathLike, dtype: torch.dtype | None = None) -> LoRAFile:
    """Read a kohya-format LoRA (any tool's): ``LoRAFile(modules, metadata)``.

    Accepts any rank/alpha per module, conv modules, a missing alpha (= rank, as kohya),
    fp16/bf16/fp32. Module names come back as kohya's: PEFT/diffusers files
    (``unet.….lora_A.weight``, ``text_encoder.``/``text_encoder_2.``; alphas from their
    ``lora_adapter_metadata``, else alpha = rank) and SDXL files with diffusers-layout U-Net
    names are renamed (see :func:`engine.lora_names.kohya_module_names`). Anything unreadable
    raises :class:`LoRAFileError` saying why. ``dtype``: convert the tensors (default: keep
    the file's dtype).
    """
    from engine.lora_names import PEFT_COMPONENTS, PEFT_FACTORS, kohya_module_names

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
    if strange:
        raise LoRAFileError(
            f"{path}: not a standard LoRA file (kohya lora_down/lora_up/alpha or PEFT lora_A/lora_B): "
            f"{len(strange)} unsupported key(s) such as {strange[0]!r} (LyCORIS/LoHa/DoRA files and diffusers' "
            "old attention-processor format are not supported)"
        )
    if not groups:
        raise LoRAFileError(f"{path}: holds no LoRA modules")
    names = kohya_module_names(list(groups), metadata)
    adapter = _peft_adapter_metadata(metadata)
    modules = {}
    for name, parts in groups.items():
        down, up = parts.get(".lora_down.weight"), parts.get(".lora_up.weight")
        if down is None or up is None:
            raise LoRAFileError(f"{path}: module {name} lacks its lora_down or lora_up weight")
        if down.dim() not in (2, 4) or up.dim() != down.dim() or up.shape[1] != down.shape[0]:
            raise LoRAFileError(f"{path}: module {name} has inconsistent shapes {tuple(down.shape)} / {tuple(up.shape)}")
        alpha = parts.get(".alpha")
        if alpha is None and name.startswith(PEFT_COMPONENTS):
            alpha = _peft_alpha(name, adapter)
        alpha = float(alpha) if alpha is not None and float(alpha) != 0 else float(down.shape[0])
        if dtype is not None:
            down, up = down.to(dtype), up.to(dtype)
        kohya = names[name]
        if kohya in modules:
            twin = next(n for n in groups if n != name and names[n] == kohya)
            raise LoRAFileError(f"{path}: modules {twin} and {name} are the same module ({kohya}) under two names")
        modules[kohya] = LoRAWeights(down, up, alpha)
    return LoRAFile(modules, metadata)


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
    for pattern, value in (adapter.get(f"{component}.alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
            return float(value)
    value = adapter.get(f"{component}.lora_alpha")
    return float(value) if value is not None else None


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from engine.errors import first_line
    from engine.safetensors_header import HeaderError, read_header, sniff

    if path.suffix.lower() != ".safetensors":
        kind = sniff(path)
        if kind is None or not ("pickle" in kind or "zip" in kind):
            raise LoRAFileError(f"{path}: not a LoRA file ({kind or 'neither safetensors nor a torch checkpoint'})")
        from engine.model_check import pickle_problem

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


# --------------------------------------------------------------------------- metadata


def lora_metadata(facts: Mapping[str, Any], family: str) -> dict[str, str]:
    """kohya ``ss_*`` training metadata plus ``modelspec.*`` keys, as strings.

    ``facts`` holds plain values the trainer (or merger) knows; every key is optional:
    ``network_dim, network_alpha, conv_dim, conv_alpha, learning_rate, unet_lr,
    text_encoder_lr, optimizer, lr_scheduler, lr_warmup_steps, steps, epoch, num_epochs,
    max_train_steps, batch_size, gradient_accumulation_steps, resolution (w, h), seed,
    mixed_precision, clip_skip, noise_offset, min_snr_gamma, prior_loss_weight,
    max_grad_norm, gradient_checkpointing, cache_latents, network_train_unet_only,
    datasets (list of {dir, repeats, images, is_reg, tags}), num_batches_per_epoch,
    model_name, model_hash, new_model_hash, vae_name, output_name, title, comment,
    training_started_at, training_finished_at (Unix times), session_id, merged_from,
    description, author, tags``. Keys already named ``ss_*`` / ``modelspec.*`` are copied.
    """
    meta = kohya_ss_metadata(facts, family)
    meta.update(
        modelspec_metadata(
            family,
            title=facts.get("title") or facts.get("output_name"),
            timestamp=facts.get("training_finished_at") or facts.get("training_started_at") or time.time(),
            resolution=facts.get("resolution"),
            clip_skip=facts.get("clip_skip"),
            merged_from=facts.get("merged_from"),
            description=facts.get("description"),
            author=facts.get("author"),
            tags=facts.get("tags"),
        )
    )
    meta.update({k: str(v) for k, v in facts.items() if k.startswith(("ss_", "modelspec."))})
    return meta


def kohya_ss_metadata(facts: Mapping[str, Any], family: str) -> dict[str, str]:
    """The ``ss_*`` keys as kohya's ``train_network.py`` writes them (``str()`` of each value)."""
    from engine.models import KOHYA_VERSION

    f = dict(facts)
    started = f.get("training_started_at") or time.time()
    conv_dim = f.get("conv_dim") or 0
    datasets = list(f.get("datasets") or [])
    train = [d for d in datasets if not d.get("is_reg")]
    reg = [d for d in datasets if d.get("is_reg")]
    resolution = f.get("resolution")
    meta: dict[str, Any] = {
        "ss_session_id": f.get("session_id") or random.randint(0, 2**32),  # as kohya: random per run
        "ss_training_started_at": started,
        "ss_output_name": f.get("output_name"),
        "ss_learning_rate": f.get("learning_rate"),
        "ss_text_encoder_lr": f.get("text_encoder_lr"),
        "ss_unet_lr": f.get("unet_lr"),
        "ss_num_train_images": sum(int(d.get("images", 0)) * int(d.get("repeats", 1)) for d in train),
        "ss_num_reg_images": sum(int(d.get("images", 0)) for d in reg),
        "ss_num_batches_per_epoch": f.get("num_batches_per_epoch"),
        "ss_num_epochs": f.get("num_epochs"),
        "ss_gradient_checkpointing": bool(f.get("gradient_checkpointing", False)),
        "ss_gradient_accumulation_steps": f.get("gradient_accumulation_steps", 1),
        "ss_max_train_steps": f.get("max_train_steps"),
        "ss_lr_warmup_steps": f.get("lr_warmup_steps", 0),
        "ss_lr_scheduler": f.get("lr_scheduler"),
        "ss_network_module": "networks.lora",
        "ss_network_dim": f.get("network_dim"),
        "ss_network_alpha": f.get("network_alpha"),
        "ss_network_train_unet_only": bool(f.get("network_train_unet_only", False)),
        "ss_mixed_precision": f.get("mixed_precision"),
        "ss_v2": family.startswith("sd2"),
        "ss_base_model_version": KOHYA_VERSION[family],
        "ss_clip_skip": f.get("clip_skip"),
        "ss_cache_latents": bool(f.get("cache_latents", False)),
        "ss_seed": f.get("seed"),
        "ss_noise_offset": f.get("noise_offset"),
        "ss_min_snr_gamma": f.get("min_snr_gamma"),
        "ss_prior_loss_weight": f.get("prior_loss_weight", 1.0),
        "ss_max_grad_norm": f.get("max_grad_norm"),
        "ss_optimizer": f.get("optimizer"),
        "ss_training_comment": f.get("comment"),
        "ss_batch_size_per_device": f.get("batch_size", 1),
        "ss_total_batch_size": int(f.get("batch_size", 1)) * int(f.get("gradient_accumulation_steps", 1)),
        "ss_resolution": str(tuple(resolution)) if resolution else None,
        "ss_dataset_dirs": json.dumps(_dirs(train)),
        "ss_reg_dataset_dirs": json.dumps(_dirs(reg)),
        "ss_tag_frequency": json.dumps({_dir_name(d): d.get("tags", {}) for d in train}),
        "ss_sd_model_name": os.path.basename(str(f["model_name"])) if f.get("model_name") else None,
        "ss_sd_model_hash": f.get("model_hash"),
        "ss_new_sd_model_hash": f.get("new_model_hash"),
        "ss_vae_name": f.get("vae_name"),
    }
    if conv_dim:
        # kohya stores --network_args values as the strings they were given.
        args = {"conv_dim": str(conv_dim), "conv_alpha": str(f.get("conv_alpha", 1))}
        meta["ss_network_args"] = json.dumps(args)
    if f.get("steps") is not None:
        meta["ss_steps"] = f["steps"]
    if f.get("epoch") is not None:
        meta["ss_epoch"] = f["epoch"]
    if f.get("training_finished_at") is not None:
        meta["ss_training_finished_at"] = f["training_finished_at"]
    return {k: str(v) for k, v in meta.items()}


def _dir_name(d: Mapping[str, Any]) -> str:
    return os.path.basename(os.path.normpath(str(d.get("dir", ""))))


def _dirs(datasets: list[Mapping[str, Any]]) -> dict:
    return {_dir_name(d): {"n_repeats": int(d.get("repeats", 1)), "img_count": int(d.get("images", 0))} for d in datasets}


MODELSPEC_ARCH = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sd2-v": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
}


def modelspec_metadata(
    family: str,
    *,
    title: str | None = None,
    timestamp: float | None = None,
    resolution=None,
    clip_skip: int | None = None,
    merged_from: str | None = None,
    description: str | None = None,
    author: str | None = None,
    tags: str | None = None,
) -> dict[str, str]:
    """The ``modelspec.*`` keys (Stability AI's ModelSpec) as kohya's sai_model_spec fills them.

    kohya names SD1/SD2 LoRAs' implementation "diffusers" and SDXL LoRAs' the SGM repo URL.
    """
    from engine import __version__

    timestamp = timestamp or time.time()
    if resolution is None:
        side = 1024 if family == "sdxl" else 768 if family == "sd2-v" else 512
        resolution = (side, side)
    elif isinstance(resolution, int):
        resolution = (resolution, resolution)
    import datetime

    meta = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": MODELSPEC_ARCH[family] + "/lora",
        "modelspec.implementation": (
            "https://github.com/Stability-AI/generative-models" if family == "sdxl" else "diffusers"
        ),
        "modelspec.implementation_version": f"copylora/{__version__}",
        "modelspec.title": title or f"LoRA@{timestamp}",
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "modelspec.prediction_type": "v" if family == "sd2-v" else "epsilon",
    }
    optional = {"encoder_layer": clip_skip, "merged_from": merged_from, "description": description}
    optional.update(author=author, tags=tags)
    meta.update({f"modelspec.{k}": str(v) for k, v in optional.items() if v is not None})
    return meta
