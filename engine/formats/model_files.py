"""What ``copylora check`` can know about a base model without loading it.

A wrong base model used to pass ``check`` and fail both queued trainings minutes later. Here
it is opened the cheap way instead: a single file's safetensors header (truncation included,
LoRA files recognised), a diffusers folder's configs and weight-file headers, and a pickled
``.ckpt``'s pickle *opcodes* (never executed), which tell whether loading it would need more
than plain tensors. No torch, no weights read; a multi-gigabyte checkpoint costs a few reads.

The facts found also bound the LoRA ranks: a rank above every layer's min(in, out) of the
model adds nothing and only costs memory.
"""

from __future__ import annotations

import json
import pickletools
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.errors import ModelError
from engine.formats.safetensors_header import HeaderError, read_header, sniff

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# The built-in models ("tiny", "tiny-sdxl": random weights, engine.models.tiny builds them;
# "toy": tiny's SD1.5 topology pretrained to draw, shipped in engine/models/toy/): their family,
# and (widest U-Net layer, widest text-encoder layer), which bound a useful LoRA rank. The
# widths are the tiny models' max channel counts (a test keeps them equal to engine.models.tiny's).
BUILTIN_FAMILIES = {"tiny": "sd1", "tiny-sdxl": "sdxl", "toy": "sd1"}
BUILTIN_MODELS = tuple(BUILTIN_FAMILIES)
BUILTIN_WIDEST = {"tiny": (96, 32), "tiny-sdxl": (96, 64), "toy": (96, 64)}
_UNET = "model.diffusion_model."
_LORA_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", "lora_unet_", "lora_te_", "lora_te1_", ".hada_", ".lokr_")


def architecture(family: str) -> str:
    """The architecture of a model family: ``sd1``, ``sd2`` or ``sdxl`` (``sd2-v`` and ``sdxl-v``
    are those architectures trained for v-prediction)."""
    return family.split("-")[0]


def is_sdxl(family: str | None) -> bool:
    """SDXL's architecture (two text encoders, SGM names), for ``sdxl`` and ``sdxl-v`` alike."""
    return family is not None and architecture(family) == "sdxl"


@dataclass(frozen=True)
class ModelFacts:
    family: str | None  # sd1, sd2, sdxl (sd2 cannot tell v from epsilon), None: unknown
    widest_unet: int | None  # the largest min(out, in·k·k) of a U-Net layer: the useful rank bound
    widest_text: int | None  # the same for the text encoder(s)
    v_prediction: bool | None = None  # the model says it predicts v (True), says nothing (None)
    zero_snr: bool = False  # the model says it was trained with zero-terminal-SNR betas

    def describe(self, auto: bool = True) -> str | None:
        """"SDXL, v-prediction, zero-terminal SNR" and the like, or None when the family is unknown;
        ``auto``: the family is read from the model (a model_family set says the target instead)."""
        if self.family is None:
            return None
        words = [{"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}.get(self.family, self.family)]
        if self.v_prediction:
            words.append("v-prediction")
        elif self.v_prediction is False and self.family == "sd2":
            words.append("epsilon (its .yaml)")
        elif self.family == "sd2" and auto:  # the loader's guess
            words.append('nothing says v or epsilon: auto trains it as v-prediction (768-v); model_family = "sd2" for a 512-base model')
        if self.zero_snr:
            words.append("zero-terminal SNR")
        return ", ".join(words)


def inspect_base_model(path: Path | str) -> ModelFacts:
    """Facts of a base model file or folder; :class:`ModelError` with one line saying what is
    wrong with it (the caller has resolved built-in names and relative paths)."""
    path = Path(path)
    if path.is_dir():
        return _inspect_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _inspect_safetensors(path)
    if suffix in SINGLE_FILE_SUFFIXES:
        return _inspect_pickle(path)
    kind = sniff(path)
    raise ModelError(f"{path.name}: expected a .safetensors checkpoint or a diffusers folder" + (f"; this is {kind}" if kind else ""))


def describe_base_model(path: Path | str, auto: bool = True) -> str | None:
    """What a base model file or folder says it is ("SDXL, v-prediction, zero-terminal SNR"), for
    the plan ``check`` prints; None where that cannot be read (check says why elsewhere)."""
    path = Path(path)
    try:
        stat = path.stat()
        yaml = path.with_suffix(".yaml")  # an SD2 file's A1111 sidecar says its target: read again when it comes or goes
        return _describe(str(path), stat.st_mtime_ns, stat.st_size, auto, yaml.stat().st_mtime_ns if yaml.is_file() else None)
    except OSError:
        return None


@lru_cache(maxsize=16)
def _describe(path: str, _mtime_ns: int, _size: int, auto: bool, _yaml_mtime_ns: int | None) -> str | None:  # the app redraws the plan: read each header once
    try:
        return inspect_base_model(path).describe(auto)
    except ModelError:
        return None


def builtin_facts(name: str) -> ModelFacts:
    unet, text = BUILTIN_WIDEST[name]
    return ModelFacts(BUILTIN_FAMILIES[name], unet, text)


# ----------------------------------------------------------------------------- single files


def _inspect_safetensors(path: Path) -> ModelFacts:
    try:
        header = read_header(path)
    except HeaderError as exc:
        raise ModelError(f"{path.name}: {exc}") from None
    shapes = header.shapes()
    loras = [k for k in shapes if any(marker in k for marker in _LORA_MARKERS)]
    if loras and not any(k.startswith(_UNET) for k in shapes):
        raise ModelError(
            f"{path.name} is a LoRA ({len(loras)} LoRA tensors, e.g. {loras[0]}), not a base model: "
            "base_model takes the checkpoint the LoRA is trained on (an SD1.5/SD2/SDXL .safetensors or a diffusers folder)"
        )
    try:
        family = detect_family(shapes)  # ModelError for a VAE, a text encoder, an inpainting model, ...
    except ModelError as exc:  # named, as every other refusal of a file is
        raise ModelError(f"{path.name}: {exc}") from None
    require_vae(path.name, shapes)
    require_text_model_keys(path.name, shapes)
    require_epsilon(path.name, family, objective_marker(shapes))
    require_float_weights(path.name, {key: str(info.get("dtype")) for key, info in header.tensors.items()})
    unet = _widest(shape for key, shape in shapes.items() if key.startswith(_UNET))
    text = _widest(shape for key, shape in shapes.items() if key.startswith(("cond_stage_model.", "conditioner.")))
    v, zero_snr = single_file_objective(shapes)
    said = sd2_prediction_said(path, shapes) if family == "sd2" else v or None
    return ModelFacts(family, unet, text, said, zero_snr)


def sd2_prediction_said(path: Path, keys) -> bool | None:
    """What an SD2 single file says of its target: v (True) by ComfyUI's ``v_pred`` key or an
    A1111 ``<name>.yaml`` beside it with ``parameterization: v``, epsilon (False) by a .yaml
    without it; None: nothing (SD2's weights are the same for 768-v and 512-base). The loader
    assumes v where nothing says (engine.models.loading), and check says so: an SD2-base file
    trained as v without a word the job log alone carried."""
    import re

    if V_PRED_KEY in set(keys):
        return True
    yaml = Path(path).with_suffix(".yaml")
    if yaml.is_file():
        text = yaml.read_text(errors="replace")
        return bool(re.search(r"^\s*parameterization:\s*['\"]?v['\"]?\s*$", text, re.M))
    return None


def require_vae(name: str | Path, keys) -> None:
    """A project needs the checkpoint's VAE (the teacher pictures are encoded with it, previews
    decoded). Without one, diffusers said "Failed to load AutoencoderKL … Please load the
    component before passing it in as an argument to `from_single_file`", advice for its API."""
    if not any(key.startswith("first_stage_model.") for key in keys):
        raise ModelError(f"{name}: it has no VAE weights (first_stage_model.*): a checkpoint saved without its VAE; "
                         "copylora reads the VAE from the checkpoint itself, so give one with its VAE baked in")


# SD1's CLIP as a transformers of 2022 saved it, without ``text_model.``: A1111 renames these
# prefixes as it loads a checkpoint (its checkpoint_dict_replacements_sd1), diffusers does not.
_OLD_CLIP_PREFIXES = tuple(f"cond_stage_model.transformer.{part}." for part in ("embeddings", "encoder", "final_layer_norm"))


def require_text_model_keys(name: str | Path, keys) -> None:
    """Refuse SD1's old CLIP key layout in our words: it passed ``check`` and failed the training
    minutes later with diffusers' "Failed to load CLIPTextModel. Weights for this component
    appear to be missing in the checkpoint"."""
    old = next((key for key in keys if key.startswith(_OLD_CLIP_PREFIXES)), None)
    if old:
        raise ModelError(f"{name}: its text encoder is stored under an old key layout ({old}, without text_model.), which the "
                         "loader (diffusers) cannot read: re-save the checkpoint with every cond_stage_model.transformer.* key "
                         "renamed to cond_stage_model.transformer.text_model.* (A1111 renames them as it loads a checkpoint, so a copy "
                         "saved from A1111, e.g. by its Checkpoint Merger, has the new names)")


# Keys that mark a checkpoint trained for another target than epsilon (the noise): ComfyUI
# writes ``v_pred`` (with ``ztsnr`` for zero-terminal-SNR ones) into every v-prediction model it
# saves and reads it back; EDM models carry their own. They are SD1/SDXL architecture, so they
# loaded and trained as epsilon without a word: a LoRA learning the wrong target. SD2 and SDXL
# v-prediction train as such (families sd2-v, sdxl-v); SD1 v-prediction and EDM stay refused.
V_PRED_KEY, ZERO_SNR_KEY = "v_pred", "ztsnr"


def single_file_objective(keys) -> tuple[bool, bool]:
    """(v-prediction, zero-terminal SNR) as a single file's ComfyUI marker keys say them."""
    present = set(keys)
    return V_PRED_KEY in present, ZERO_SNR_KEY in present


def folder_objective_flags(sched_cfg: Mapping[str, Any]) -> tuple[bool, bool]:
    """The same from a diffusers folder's scheduler config (``prediction_type``,
    ``rescale_betas_zero_snr``)."""
    return sched_cfg.get("prediction_type") == "v_prediction", bool(sched_cfg.get("rescale_betas_zero_snr"))


_OTHER_OBJECTIVES = (("v_pred", "v-prediction (its v_pred key; e.g. NoobAI-XL V-Pred and other v-pred fine-tunes)"),
                     ("edm_vpred.sigma_max", "EDM v-prediction (its edm_vpred.* keys; e.g. CosXL)"),
                     ("edm_mean", "the EDM objective (its edm_mean/edm_std keys; e.g. Playground v2.5)"))


def objective_marker(keys) -> str | None:
    """What a single file's marker keys say it predicts other than epsilon, or None."""
    present = set(keys)
    return next((what for key, what in _OTHER_OBJECTIVES if key in present), None)


def folder_objective(sched_cfg: Mapping[str, Any]) -> str | None:
    """The same for a diffusers folder: its scheduler config's prediction_type."""
    return "v-prediction (its scheduler's prediction_type)" if sched_cfg.get("prediction_type") == "v_prediction" else None


def require_epsilon(name: str | Path, family: str, what: str | None) -> None:
    """Refuse a model trained for a target copylora does not train (``what``: the marker found):
    EDM on any family, v-prediction on SD1. SD2 and SDXL v-prediction are trained as such: the
    families sd2-v and sdxl-v, which engine.models.loading picks from the same marker."""
    if what and not (architecture(family) in ("sd2", "sdxl") and what.startswith("v-prediction")):
        label = {"sd1": "SD1", "sdxl": "SDXL"}.get(architecture(family), "SD2")
        only = "epsilon- or v-prediction" if label == "SDXL" else "epsilon-prediction"
        raise ModelError(f"{name}: an {label} model trained for {what}; copylora trains {label} models for "
                         f"{only} only, and a LoRA trained on this one would learn the wrong target: use an "
                         "epsilon-prediction model (most SD1.5, SDXL, Pony and Illustrious checkpoints are)")


def require_float_weights(name: str | Path, dtypes: Mapping[str, str]) -> None:
    """Refuse a quantized checkpoint: weights stored as integers (int8, uint8, packed 4-bit)
    mean something only with the scales their quantizer kept beside them. Read as plain numbers
    they made a model of noise that loaded, trained and drew without a word (measured: an int8
    copy of the tiny model loaded with weights 100× too large). fp8 weights are floating point
    and load (each is widened to the training's precision). ``dtypes``: key -> safetensors' dtype
    name (``F16``, ``I8``, …)."""
    quantized = [(key, dtype) for key, dtype in dtypes.items()
                 if key.endswith((".weight", ".bias")) and dtype.upper().startswith(("I", "U", "BOOL"))]
    if quantized:
        key, dtype = quantized[0]
        raise ModelError(f"{name}: {len(quantized)} of its weights are stored as {dtype} (e.g. {key}): a quantized checkpoint, "
                         "whose numbers mean something only with its quantizer's scales; copylora needs the weights as floating "
                         "point (fp32, fp16, bf16 or fp8): give the checkpoint it was quantized from")


def _widest(shapes) -> int | None:
    """The largest min(out, in·k·k) over weight matrices and conv kernels."""
    best = None
    for shape in shapes:
        if len(shape) in (2, 4) and all(isinstance(d, int) for d in shape):
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            best = max(best or 0, min(shape[0], fan_in))
    return best


# Globals that torch.load(weights_only=True) accepts: tensors, storages, dtypes and plain data.
_SAFE_MODULES = {"torch._utils", "torch._tensor", "torch.storage"}
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("collections", "Counter"), ("torch", "Size"), ("torch", "device"),
    ("torch", "Tensor"), ("torch.nn.parameter", "Parameter"), ("_codecs", "encode"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
    ("torch.serialization", "_get_layout"),
}


def _safe_global(module: str, name: str) -> bool:
    if module in _SAFE_MODULES or (module, name) in _SAFE_GLOBALS:
        return True
    # torch.FloatStorage, torch.float16, torch.bfloat16, ...: storage classes and dtypes
    dtypes = ("float", "bfloat", "int", "uint", "bool", "complex", "half", "double", "long", "short")
    return module == "torch" and (name.endswith("Storage") or name.startswith(dtypes))


def pickle_problem(path: Path | str) -> str | None:
    """Why a torch pickle file must not be loaded (it would import more than plain tensors),
    or None; read from its opcodes, never executed."""
    try:
        globals_, _strings = _pickle_contents(Path(path))
    except ModelError as exc:
        return str(exc).split(": ", 1)[-1]
    unsafe = sorted(f"{m}.{n}" for m, n in globals_ if not _safe_global(m, n))
    if unsafe:
        return (f"refused: loading it would unpickle arbitrary Python objects ({', '.join(unsafe[:3])}"
                f"{' …' if len(unsafe) > 3 else ''}), which can run code hidden in the file; copylora reads only "
                "plain-tensor torch files (use .safetensors)")
    return None


def _inspect_pickle(path: Path) -> ModelFacts:
    """A ``.ckpt``/``.pt``: find the pickle(s) and list what they would import when loaded."""
    globals_, strings = _pickle_contents(path)
    unsafe = sorted(f"{m}.{n}" for m, n in globals_ if not _safe_global(m, n))
    if unsafe:
        raise ModelError(
            f"{path.name}: refused: loading this .ckpt would unpickle arbitrary Python objects "
            f"({', '.join(unsafe[:3])}{' …' if len(unsafe) > 3 else ''}), which can run code hidden in the file; "
            "copylora loads only plain tensors (torch.load weights_only=True). "
            "Convert it once, in a setting you trust, to .safetensors and use that file"
        )
    if strings and not any(s.startswith(_UNET) for s in strings):
        if any(any(marker in s for marker in _LORA_MARKERS) for s in strings):
            raise ModelError(f"{path.name} is a LoRA, not a base model")
        raise ModelError(f"{path.name}: not a Stable Diffusion checkpoint: it has no U-Net weights ({_UNET}*)")
    if strings:  # its keys are among the pickle's strings: what the loader refuses by key, refused here already
        require_vae(path.name, strings)
        require_text_model_keys(path.name, strings)
        family = "sdxl" if any(s.startswith("conditioner.") for s in strings) else "sd1"  # (an SD2 v_pred key says sd2-v: not refused)
        if not any(s.startswith("cond_stage_model.model.") for s in strings):
            require_epsilon(path.name, family, objective_marker(strings))
    return ModelFacts(None, None, None)


def _pickle_contents(path: Path) -> tuple[set[tuple[str, str]], set[str]]:
    """The globals and strings of a torch pickle file (zip or legacy format)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    raise ModelError(f"{path.name}: a zip archive without a torch pickle (data.pkl): not a checkpoint")
                globals_, strings = _scan(archive.read(names[0]))
        else:
            with open(path, "rb") as handle:
                head = handle.read(2)
                if not head.startswith(b"\x80"):
                    kind = sniff(path)
                    raise ModelError(f"{path.name}: not a torch checkpoint" + (f" (this is {kind})" if kind else ""))
                handle.seek(0)
                globals_, strings = set(), set()
                # The legacy format: pickles of the magic number, protocol, sys info, the
                # object and its storage keys, then raw tensor bytes.
                for index in range(5):
                    if not handle.peek(1):
                        break
                    try:
                        found, text = _scan_stream(handle)
                    except ModelError:
                        if index == 0:
                            raise
                        break
                    globals_ |= found
                    strings |= text
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path.name}: cannot read this checkpoint ({exc})") from None
    return globals_, strings


def _scan(data: bytes) -> tuple[set[tuple[str, str]], set[str]]:
    import io

    return _scan_stream(io.BytesIO(data))


def _scan_stream(handle) -> tuple[set[tuple[str, str]], set[str]]:
    """The globals a pickle imports and its string constants, from its opcodes alone.

    Protocol 2+ pickles name a global with two strings then STACK_GLOBAL, and repeat ones
    through the memo (BINGET), so pushed values and the memo are followed; a global whose name
    cannot be told this way counts as unknown, hence unsafe."""
    found: set[tuple[str, str]] = set()
    strings: set[str] = set()
    pushed: list[str | None] = []
    memo: dict[int, str | None] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(handle):
            name = opcode.name
            if name in ("GLOBAL", "INST") and isinstance(arg, str):
                module, _, attr = arg.partition(" ")
                found.add((module, attr))
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                named = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
                found.add((named[0] or "?", named[1] or "?"))
                pushed.append(None)
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int):
                memo[arg] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET") and isinstance(arg, int):
                pushed.append(memo.get(arg))
            elif isinstance(arg, str) and ("UNICODE" in name or name.endswith("STRING")):
                strings.add(arg)
                pushed.append(arg)
            else:
                pushed.append(None)
            if len(pushed) > 64:
                del pushed[:32]
    except Exception as exc:  # a damaged pickle: pickletools raises ValueError and others
        raise ModelError(f"{getattr(handle, 'name', 'checkpoint')}: damaged pickle ({exc})") from None
    return found, strings


# ----------------------------------------------------------------------------- diffusers folders

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "model.fp16.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")


def _inspect_folder(path: Path) -> ModelFacts:
    info, unet_cfg, sched_cfg = folder_configs(path)
    family = _folder_family(path, info, unet_cfg, sched_cfg)
    require_epsilon(path, family, folder_objective(sched_cfg))
    parts = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if is_sdxl(family) else [])
    widths = {}
    for part in parts:
        weights = next((path / part / name for name in _WEIGHT_FILES if (path / part / name).is_file()), None)
        if weights is None:
            raise ModelError(f"{path}: {part}/ has no weights file ({_WEIGHT_FILES[0]} or {_WEIGHT_FILES[1]})")
        if weights.suffix == ".safetensors":
            try:
                widths[part] = _widest(read_header(weights).shapes().values())
            except HeaderError as exc:
                raise ModelError(f"{path}: {part}/{weights.name}: {exc}") from None
    text = [w for p, w in widths.items() if p.startswith("text_encoder") and w]
    v, zero_snr = folder_objective_flags(sched_cfg)
    return ModelFacts(architecture(family), widths.get("unet"), max(text) if text else None, v, zero_snr)


# ----------------------------------------------------------------------------- identification


_UNET = "model.diffusion_model."
# Diffusion-transformer families, by a block their checkpoints have with or without the prefix
# above: an SD3 file was "not a Stable Diffusion checkpoint: no CLIP text encoder weights".
_TRANSFORMER_FAMILIES = (("joint_blocks.", "an SD3/SD3.5 model (MMDiT: joint_blocks.*)"),
                         ("double_blocks.", "a Flux model (double_blocks.*)"))

def detect_family(shapes: Mapping[str, Any]) -> str:
    """Family of an original-layout (A1111/LDM) checkpoint from its keys and shapes.

    ``shapes`` maps key -> shape (a tuple, or anything with ``.shape``). Returns "sd1",
    "sd2" (SD2 cannot tell v-prediction from its weights: see :func:`load_base_model`)
    or "sdxl"; raises :class:`ModelError` for anything else.
    """
    keys = list(shapes)
    other = next((what for block, what in _TRANSFORMER_FAMILIES if any(k.removeprefix(_UNET).startswith(block) for k in keys)), None)
    if other:
        raise ModelError(f"unsupported checkpoint: {other}; copylora trains the U-Net models SD1.x, SD2.x and SDXL "
                         "(Pony, Illustrious and other SDXL fine-tunes included), not SD3 or Flux")
    if not any(k.startswith(_UNET) for k in keys):
        raise ModelError(
            "not a Stable Diffusion checkpoint: it has no U-Net weights (model.diffusion_model.*)"
            + (f"; its keys start like {keys[0]!r}" if keys else "; it holds no tensors")
        )
    in_conv = shapes.get(_UNET + "input_blocks.0.0.weight")
    if in_conv is not None and len(_shape(in_conv)) != 4:  # a damaged file (an IndexError here once)
        raise ModelError(f"damaged checkpoint: its U-Net's first convolution ({_UNET}input_blocks.0.0.weight) has shape "
                         f"{_shape(in_conv)}; a convolution's weight has 4 dimensions")
    if in_conv is not None and _shape(in_conv)[1] != 4:
        raise ModelError(
            f"unsupported checkpoint: its U-Net takes {_shape(in_conv)[1]} input channels "
            "(an inpainting or other special model); copylora trains on standard 4-channel models"
        )
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        width = shapes.get("conditioner.embedders.0.model.ln_final.weight")
        if width is not None and _shape(width)[0] == 1024:  # OpenCLIP-H: SD2's, where a refiner has SDXL's OpenCLIP-G (1280)
            raise ModelError("unsupported checkpoint: an SD2.1 model in Stability's SGM layout (SD-Turbo: conditioner.embedders.0.*), "
                             "which the loader does not read; use its diffusers folder (e.g. stabilityai/sd-turbo) instead")
        raise ModelError("unsupported checkpoint: an SDXL refiner (one OpenCLIP encoder only); use an SDXL base model")
    context = _cross_attention_dim(shapes)
    if any(k.startswith("cond_stage_model.model.") for k in keys) or context == 1024:
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys) or context == 768:
        return "sd1"
    raise ModelError("not a Stable Diffusion checkpoint: no CLIP text encoder weights (cond_stage_model.*) found")

def _shape(value: Any) -> tuple:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)

def _cross_attention_dim(shapes: Mapping[str, Any]) -> int | None:
    for key, value in shapes.items():
        if key.startswith(_UNET) and key.endswith("attn2.to_k.weight"):
            return _shape(value)[-1]
    return None

def folder_configs(path: Path) -> tuple[dict, dict, dict]:
    """``(model_index, unet config, scheduler config)`` of a diffusers folder (the scheduler's
    may be missing: {}); :class:`ModelError` saying what is wrong otherwise."""
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelError(f"{path} is a folder but not a diffusers model (no model_index.json)")
    try:
        info = json.loads(index.read_text())
        unet_cfg = json.loads((path / "unet" / "config.json").read_text())
        sched_path = path / "scheduler" / "scheduler_config.json"
        sched_cfg = json.loads(sched_path.read_text()) if sched_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable diffusers config ({exc})") from exc
    if not all(isinstance(c, dict) for c in (info, unet_cfg, sched_cfg)):
        raise ModelError(f"{path}: model_index.json, unet/config.json or the scheduler config is not a JSON object")
    return info, unet_cfg, sched_cfg

def _folder_family(path: Path, info: dict, unet_cfg: dict, sched_cfg: dict) -> str:
    if "XL" in info.get("_class_name", "") or unet_cfg.get("addition_embed_type") == "text_time":
        return "sdxl-v" if sched_cfg.get("prediction_type") == "v_prediction" else "sdxl"
    if unet_cfg.get("in_channels", 4) != 4:
        raise ModelError(f"{path}: unsupported model: its U-Net takes {unet_cfg['in_channels']} input channels")
    # SD2's OpenCLIP encoder is the one with plain GELU and a 1024-d context; SD1's CLIP-L (and
    # the tiny model, which copies SD1) use quick_gelu. Widths alone would misjudge tiny models.
    try:
        text_cfg = json.loads((path / "text_encoder" / "config.json").read_text())
    except (OSError, ValueError):
        text_cfg = {}
    if unet_cfg.get("cross_attention_dim") == 1024 or text_cfg.get("hidden_act") == "gelu":
        return "sd2-v" if sched_cfg.get("prediction_type") == "v_prediction" else "sd2"
    return "sd1"

def peek_family(spec: str) -> str | None:
    """The family of a base model spec from its headers and configs only (no torch, no
    weights read), or None when that cannot tell (a ``.ckpt``, a damaged file...).

    For choices made before anything is loaded, e.g. a new project's default resolution.
    """
    if spec in BUILTIN_FAMILIES:
        return BUILTIN_FAMILIES[spec]
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            return _folder_family(path, *folder_configs(path))
        if path.suffix.lower() == ".safetensors":
            with open(path, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size)) if 0 < size < 100 * 2**20 else {}
            return detect_family({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    except (OSError, ValueError, KeyError, TypeError, ModelError):
        return None
    return None
