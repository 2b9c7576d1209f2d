"""Base models: load one (tiny, diffusers folder, single-file checkpoint) and know its family.

Single-file checkpoints (A1111 style) are converted by diffusers with the JSON configs
shipped in ``engine/models/configs/``; the one thing not shipped is CLIP's BPE vocabulary,
found locally or downloaded into the Hugging Face cache by :func:`find_clip_tokenizer` (never
with ``HF_HUB_OFFLINE=1``), or asked for in a clear error; everything else works offline. The
family (SD1 / SD2 / SDXL) is read from the weights' key names and shapes, so a user never
has to say what a checkpoint is unless it is ambiguous (SD2 v vs epsilon).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ModelError, first_line
from engine.formats.model_files import (
    _folder_family,
    architecture,
    detect_family,
    folder_configs,
    folder_objective,
    folder_objective_flags,
    is_sdxl,
    objective_marker,
    require_epsilon,
    require_float_weights,
    require_text_model_keys,
    require_vae,
    sd2_prediction_said,
    single_file_objective,
)
from engine.hashing import legacy_model_hash  # kohya's ss_sd_model_hash (provenance reads it too)

log = logging.getLogger(__name__)

# "-v": the architecture trained for v-prediction (SD2 768-v; SDXL v-pred fine-tunes such as
# NoobAI-XL V-Pred). Zero-terminal SNR is not a family: the model's own marker says it (BaseModel.zero_snr).
FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl", "sdxl-v")
CONFIG_ROOT = Path(__file__).parent / "configs"
CLIP_TOKENIZER_ENV = "COPYLORA_CLIP_TOKENIZER"
PREDICTION = {"sd1": "epsilon", "sd2": "epsilon", "sd2-v": "v_prediction", "sdxl": "epsilon", "sdxl-v": "v_prediction"}
# kohya's ss_base_model_version values (model_util.get_model_version_str_for_sd1_sd2, sdxl_model_util):
# kohya has one for SDXL whatever its target (a v-pred SDXL LoRA says v in modelspec.prediction_type).
KOHYA_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2_v", "sdxl": "sdxl_base_v1-0", "sdxl-v": "sdxl_base_v1-0"}


@dataclass
class BaseModel:
    """A loaded Stable Diffusion base model: its parts and what kind it is."""

    family: str  # one of FAMILIES
    prediction_type: str  # "epsilon" or "v_prediction"
    unet: Any
    vae: Any
    text_encoders: list = field(default_factory=list)  # SDXL has two, the others one
    tokenizers: list = field(default_factory=list)
    noise_scheduler: Any = None  # diffusers DDPMScheduler for training
    scheduler: Any = None  # the model's own sampling scheduler, as its config names it
    name: str = ""
    model_hash: str | None = None  # kohya/A1111 legacy hash of the source file, if any
    source: str = ""  # the spec it was loaded from
    # Trained with zero-terminal-SNR betas (Lin et al. 2023; ComfyUI's ztsnr key, diffusers'
    # rescale_betas_zero_snr): both schedulers above are built with them.
    zero_snr: bool = False

    @property
    def is_sdxl(self) -> bool:
        return is_sdxl(self.family)

    @property
    def kohya_version(self) -> str:
        """kohya's ``ss_base_model_version`` for this family."""
        return KOHYA_VERSION[self.family]

    def pipeline(self):
        """A diffusers text-to-image pipeline sharing these components (for sampling)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        scheduler = self.scheduler
        if self.is_sdxl:
            return StableDiffusionXLPipeline(
                vae=self.vae,
                text_encoder=self.text_encoders[0],
                text_encoder_2=self.text_encoders[1],
                tokenizer=self.tokenizers[0],
                tokenizer_2=self.tokenizers[1],
                unet=self.unet,
                scheduler=scheduler,
                add_watermarker=False,  # a preview must show the model's output, nothing added
            )
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoders[0],
            tokenizer=self.tokenizers[0],
            unet=self.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def training_scheduler(prediction_type: str = "epsilon", zero_snr: bool = False):
    """The noise schedule every SD1/SD2/SDXL model was trained with (as kohya builds it).

    ``zero_snr``: its betas rescaled so that the last timestep (999) is pure noise, as kohya's
    --zero_terminal_snr does (custom_train_functions.fix_noise_scheduler_betas_for_zero_terminal_snr:
    the same algorithm as diffusers' rescale_betas_zero_snr). Timesteps are drawn by the trainer,
    so the spacing matters only to what is built from this config (the copy check's DDIM):
    "trailing", which starts at 999, the pure-noise step, as the paper and diffusers advise."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        prediction_type=prediction_type,
        **({"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"} if zero_snr else {}),
    )


def sampling_scheduler(scheduler, prediction_type: str, zero_snr: bool):
    """The model's sampling scheduler told its target (a single file's configs are the family's
    epsilon ones) and, with zero-terminal SNR, its betas and trailing timestep spacing (the first
    step at 999, where the model sees pure noise; diffusers' advice for such models)."""
    settings: dict[str, Any] = {}
    if scheduler.config.get("prediction_type") != prediction_type:
        settings["prediction_type"] = prediction_type
    if zero_snr:
        settings.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return type(scheduler).from_config(scheduler.config, **settings) if settings else scheduler


# --------------------------------------------------------------------------- family detection








def _checkpoint_tensors(path: Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """Key -> shape, and key -> dtype (safetensors' names: F16, I8, …) of a single-file
    checkpoint, reading as little as the format allows."""
    if path.suffix.lower() == ".safetensors":
        from engine.formats.safetensors_header import HeaderError, read_header

        try:
            header = read_header(path)
        except HeaderError as exc:  # says which: not safetensors, truncated, bad JSON, unreadable
            raise ModelError(f"{path}: cannot read as safetensors: {exc}") from None
        return header.shapes(), {key: str(info.get("dtype")) for key, info in header.tensors.items()}
    tensors = {k: v for k, v in load_pickled_checkpoint(path).items() if hasattr(v, "shape")}
    return ({k: tuple(v.shape) for k, v in tensors.items()},
            {k: "F" if v.is_floating_point() else str(v.dtype).removeprefix("torch.").upper() for k, v in tensors.items()})


def load_pickled_checkpoint(path: str | os.PathLike) -> dict:
    """The state dict of a ``.ckpt``/``.pt`` file, unpickled only as plain tensors.

    A pickle can run arbitrary code when it is loaded, so only ``weights_only=True`` is ever
    used; a file that needs more is refused rather than trusted.
    """
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise ModelError(f"{path}: cannot read this checkpoint ({exc})") from exc
        data = _load_weights_only(path)  # old (non-zip) torch format cannot be memory-mapped
    except pickle.UnpicklingError as exc:
        raise _refused_pickle(path, exc) from exc
    except Exception as exc:
        raise ModelError(f"{path}: cannot read this checkpoint ({type(exc).__name__}: {exc})") from exc
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a checkpoint (it holds a {type(data).__name__}, not a state dict)")
    return data


def _load_weights_only(path):
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refused_pickle(path, exc) from exc
    except Exception as exc:
        raise ModelError(f"{path}: cannot read this checkpoint ({type(exc).__name__}: {exc})") from exc


def _refused_pickle(path, exc) -> ModelError:
    """The refusal, naming what the pickle wanted to import (read from its opcodes, never
    executed); torch's own text is a recipe for loading it anyway, with terminal colours."""
    from engine.errors import first_line

    try:
        from engine.formats.model_files import inspect_base_model

        inspect_base_model(Path(path))
        reason = first_line(exc)
    except ModelError as found:
        if "refused" in str(found):
            return ModelError(f"{path}: {str(found).split(': ', 1)[1]}")
        reason = first_line(exc)
    return ModelError(
        f"{path}: refused: this .ckpt needs to unpickle arbitrary Python objects ({reason}). "
        "Loading it could run code hidden in the file, so copylora only loads checkpoints whose "
        "pickle holds plain tensors (torch.load weights_only=True). Convert it once, in a setting "
        "you trust, to .safetensors (e.g. with A1111's checkpoint merger or kohya's "
        "convert tools) and use that file."
    )


# --------------------------------------------------------------------------- tokenizers


def find_clip_tokenizer(
    config_dir: str | os.PathLike | None = None, subfolder: str = "tokenizer", vocab_size: int = 49408,
    pad: str | None = None,
):
    """CLIP's tokenizer, or a :class:`ModelError` saying what to provide.

    Looks in: ``config_dir/<subfolder>``; ``$COPYLORA_CLIP_TOKENIZER`` (a folder with
    ``vocab.json`` + ``merges.txt`` or ``tokenizer.json``, or CLIP's own
    ``bpe_simple_vocab_16e6.txt.gz``); the Hugging Face cache for
    ``openai/clip-vit-large-patch14``; and last downloads that repository's tokenizer files into
    the cache (as kohya and A1111 do), unless ``HF_HUB_OFFLINE=1``. SD1, SD2 and SDXL all use this same vocabulary; SD2 and
    SDXL's second tokenizer pad with ``!`` instead of ``<|endoftext|>`` (``pad``; by default
    ``!`` for ``tokenizer_2`` alone: the caller says SD2's). A folder's own
    ``tokenizer_config.json`` says its own padding. A candidate must
    have ``vocab_size`` tokens (the text encoder's): transformers 5 quietly builds an empty
    tokenizer from a folder without vocabulary files, which would train on garbage.
    """
    from transformers import CLIPTokenizer

    asked = pad is not None
    pad = pad or ("!" if subfolder == "tokenizer_2" else None)
    extra: dict[str, Any] = {"pad_token": pad} if pad else {}
    tried = []
    candidates = []
    if config_dir:
        candidates.append(Path(config_dir) / subfolder)
    if os.environ.get(CLIP_TOKENIZER_ENV):
        candidates.append(Path(os.environ[CLIP_TOKENIZER_ENV]).expanduser())
    for where in candidates:
        tokenizer = None
        if where.is_file() and where.name.endswith(".txt.gz"):
            tokenizer = clip_tokenizer_from_bpe(where, pad_token=pad)
        elif (where / "tokenizer.json").is_file() or (where / "vocab.json").is_file():
            own_config = (where / "tokenizer_config.json").is_file()
            # a folder's own config says its padding, unless the caller knows the family's (an SD2 checkpoint
            # given SD1.5's or openai's tokenizer folder, as the docs allow: the vocabulary is the same)
            tokenizer = CLIPTokenizer.from_pretrained(str(where), local_files_only=True, **({} if own_config and not asked else extra))
        if tokenizer is not None and len(tokenizer) == vocab_size:
            return tokenizer
        tried.append(f"{where} ({'no vocabulary files' if tokenizer is None else f'{len(tokenizer)} tokens'})")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(CLIP_REPO, local_files_only=True, **extra)
    except Exception:
        tokenizer = None
    if tokenizer is not None and len(tokenizer) == vocab_size:
        return tokenizer
    tried.append(f"the Hugging Face cache ({CLIP_REPO}: not there)")
    if hub_offline():
        tried.append("no download: HF_HUB_OFFLINE is set")
    else:
        try:
            folder = download_clip_tokenizer()
            tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, **extra)
        except Exception as exc:  # no network, a proxy, a hub error: said in the message below
            tokenizer = None
            tried.append(f"a download from the Hugging Face hub ({CLIP_REPO}: {type(exc).__name__}: {first_line(exc)[:200]})")
        else:
            if len(tokenizer) == vocab_size:
                return tokenizer
            tried.append(f"a download from the Hugging Face hub ({CLIP_REPO}: {len(tokenizer)} tokens)")
    raise ModelError(
        f"this checkpoint needs CLIP's tokenizer vocabulary ({vocab_size} tokens: vocab.json + merges.txt), "
        "which copylora does not ship and could not download. Provide it with one of: the config_dir "
        "argument (a diffusers model folder of the same family whose tokenizer/ folder has the "
        f"vocabulary, e.g. a copy of stable-diffusion-v1-5 without weights); or ${CLIP_TOKENIZER_ENV} "
        "set to a folder with vocab.json and merges.txt (the tokenizer/ folder of any SD1.5, SD2 or "
        "SDXL diffusers model, or of openai/clip-vit-large-patch14), or to CLIP's "
        "bpe_simple_vocab_16e6.txt.gz. Looked in: " + "; ".join(tried)
    )


# The vocabulary every SD family's CLIP tokenizers use (SDXL's second pads with "!"), fetched
# the way kohya's sd-scripts and A1111 fetch it: from this repository, into the hub's own cache.
CLIP_REPO = "openai/clip-vit-large-patch14"
CLIP_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, as huggingface_hub reads it."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_download(repo_id: str, filename: str) -> str:
    """One file from the hub into its cache (a seam the tests replace with a stand-in hub)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename)


def download_clip_tokenizer() -> Path:
    """CLIP's tokenizer files (about 1.7 MB) into the Hugging Face cache; returns their folder."""
    log.warning("CLIP's tokenizer vocabulary is not on this machine: downloading it from the Hugging Face hub (%s, about 1.7 MB) "
                "into its cache; set HF_HUB_OFFLINE=1 to never download", CLIP_REPO)
    paths = [Path(hub_download(CLIP_REPO, name)) for name in CLIP_TOKENIZER_FILES]
    return paths[0].parent


def clip_tokenizer_from_bpe(path: str | os.PathLike, pad_token: str | None = None):
    """Build CLIP's tokenizer from OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` merges file.

    CLIP derives its vocabulary from that file: the first 48,894 merges after the header,
    giving 49,408 tokens (bytes, bytes + ``</w>``, merges, two specials).
    """
    import gzip

    from transformers import CLIPTokenizer

    from engine.models.tiny import clip_vocab

    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    extra: dict[str, Any] = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(
        vocab=clip_vocab(merges), merges=[tuple(m.split()) for m in merges], model_max_length=77, **extra  # type: ignore[misc]  # (a, b) pairs, whatever its hint says
    )




# --------------------------------------------------------------------------- loading


def load_base_model(
    spec: str,
    family: str = "auto",
    *,
    dtype=None,
    device: str = "cpu",
    config_dir: str | os.PathLike | None = None,
    epsilon_only: bool = True,
) -> BaseModel:
    """Load a base model: ``"tiny"``/``"tiny-sdxl"``/``"toy"``, a diffusers folder, or a single-file checkpoint.

    ``family`` is "auto" (read from the model) or one of FAMILIES to override it; for SD2
    single files it is the only sure way to say v-prediction ("sd2-v") or epsilon ("sd2").
    ``config_dir`` is a diffusers folder of configs (and tokenizer) to use instead of the
    shipped ones for a single file. ``epsilon_only`` refuses an SD1/SDXL model trained for
    v-prediction or EDM (training and sampling here would use the wrong target; extracting a
    LoRA from two of them does not care). Raises :class:`ModelError` for anything unusable.
    """
    import torch

    from engine.quiet import quiet_libraries

    quiet_libraries(loaded=True)
    dtype = dtype or torch.float32
    if family != "auto" and family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r}; use auto or one of {', '.join(FAMILIES)}")
    from engine.models.tiny import BUILTIN_MODEL_DIRS, builtin_model_dir

    if spec in BUILTIN_MODEL_DIRS:  # "tiny"/"toy" (SD1.5 layout) or "tiny-sdxl"
        model = _load_diffusers_folder(builtin_model_dir(spec), family, dtype, epsilon_only)
        model.name, model.source = spec, spec
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelError(
                f"base model not found: {spec} (give 'tiny', 'tiny-sdxl', 'toy', a diffusers folder or a .safetensors file)"
            )
        if path.is_dir():
            model = _load_diffusers_folder(path, family, dtype, epsilon_only)
        elif path.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
            model = _load_single_file(path, family, dtype, config_dir, epsilon_only)
        else:
            raise ModelError(f"{spec}: not a model (expected a diffusers folder or a .safetensors/.ckpt file)")
        model.source = spec
    for part in [model.unet, model.vae, *model.text_encoders]:
        part.to(device)
        part.eval()
    return model




def _load_diffusers_folder(path: Path, family: str, dtype, epsilon_only: bool) -> BaseModel:
    from diffusers import DiffusionPipeline

    info, unet_cfg, sched_cfg = folder_configs(path)
    found = _folder_family(path, info, unet_cfg, sched_cfg)
    if epsilon_only:
        require_epsilon(path, found, folder_objective(sched_cfg))
    said_v, zero_snr = folder_objective_flags(sched_cfg)
    if family == "auto":
        family = found
    elif is_sdxl(family) != is_sdxl(found):
        # A folder's components decide what it is (SD1/SD2 have one text encoder, SDXL two):
        # an override can pick SD2's prediction, not another architecture.
        raise ModelError(f"{path}: this folder holds an {found} model, not {family}; leave the family at auto")
    else:
        require_said_prediction(path, family, said_v, "its scheduler's prediction_type")
    extra: dict[str, Any] = {"add_watermarker": False} if is_sdxl(family) else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), dtype=dtype, local_files_only=True, **extra)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load this diffusers model ({type(exc).__name__}: {exc})") from exc
    return _from_pipeline(pipe, family, name=path.name, model_hash=None, zero_snr=zero_snr)


def require_said_prediction(name: str | Path, family: str, said_v: bool, where: str) -> None:
    """A family asked for explicitly must not contradict the model's own word: an epsilon family
    on a model that says v-prediction would train the wrong target. (The other way is allowed,
    as for SD2: a v-prediction model saved without a marker, e.g. by kohya, says nothing.)"""
    if said_v and PREDICTION[family] != "v_prediction" and architecture(family) != "sd1":
        raise ModelError(f"{name}: model_family {family} is epsilon-prediction, but this model says v-prediction ({where}): "
                         f"use {architecture(family)}-v or auto")


def single_file_tokenizers(family: str, config_dir, configs: Path) -> dict[str, Any]:
    """The tokenizers a single-file checkpoint of ``family`` is loaded with. SD2's OpenCLIP was
    trained on prompts padded with "!" (id 0), as its diffusers tokenizer, kohya and A1111 pad
    them: <|endoftext|> padding conditioned every prompt, the empty training one too, on 75
    other token embeddings."""
    pad = "!" if family.startswith("sd2") else None
    tokenizers = {"tokenizer": find_clip_tokenizer(config_dir, "tokenizer", _vocab_size(configs / "text_encoder"), pad=pad)}
    if is_sdxl(family):
        tokenizers["tokenizer_2"] = find_clip_tokenizer(config_dir, "tokenizer_2", _vocab_size(configs / "text_encoder_2"))
    return tokenizers


def _load_single_file(path: Path, family: str, dtype, config_dir, epsilon_only: bool) -> BaseModel:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    shapes, dtypes = _checkpoint_tensors(path)
    try:
        detected = detect_family(shapes)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    require_vae(path, shapes)
    require_text_model_keys(path, shapes)
    if epsilon_only:
        require_epsilon(path, detected, objective_marker(shapes))
    require_float_weights(path, dtypes)
    said_v, zero_snr = single_file_objective(shapes)
    if family == "auto":
        family = _sd2_prediction(path, shapes) if detected == "sd2" else "sdxl-v" if detected == "sdxl" and said_v else detected
    elif architecture(family) != detected:
        raise ModelError(f"{path}: this is an {detected} checkpoint, not {family} as asked")
    else:
        require_said_prediction(path, family, said_v, "its v_pred key")
    # SDXL's configs serve sdxl-v: only the scheduler's target differs (set by _from_pipeline)
    configs = Path(config_dir) if config_dir else CONFIG_ROOT / ("sdxl" if is_sdxl(family) else family)
    kwargs: dict[str, Any] = single_file_tokenizers(family, config_dir, configs)
    if is_sdxl(family):
        kwargs["add_watermarker"] = False
    else:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cls = StableDiffusionXLPipeline if is_sdxl(family) else StableDiffusionPipeline
    try:
        pipe = cls.from_single_file(str(path), config=str(configs), local_files_only=True, dtype=dtype, **kwargs)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load this {family} checkpoint ({type(exc).__name__}: {first_line(exc)})") from exc
    return _from_pipeline(pipe, family, name=path.stem, model_hash=legacy_model_hash(path), zero_snr=zero_snr)


def _vocab_size(text_encoder_dir: Path) -> int:
    try:
        return int(json.loads((text_encoder_dir / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{text_encoder_dir}: no usable text encoder config.json ({exc})") from exc


def _sd2_prediction(path: Path, keys=()) -> str:
    """SD2 weights do not say v vs epsilon; ComfyUI's ``v_pred`` key in a file it saved does, and
    A1111's sibling ``<name>.yaml``, if present."""
    said = sd2_prediction_said(path, keys)
    if said is not None:
        return "sd2-v" if said else "sd2"
    log.warning(
        "%s: SD2 checkpoint; assuming v-prediction (768-v). Pass family 'sd2' for 512-base epsilon models.", path
    )
    return "sd2-v"


def _from_pipeline(pipe, family: str, name: str, model_hash: str | None, zero_snr: bool = False) -> BaseModel:
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if is_sdxl(family) else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if is_sdxl(family) else [])
    prediction = PREDICTION[family]
    return BaseModel(
        family=family,
        prediction_type=prediction,
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        noise_scheduler=training_scheduler(prediction, zero_snr),
        scheduler=sampling_scheduler(pipe.scheduler, prediction, zero_snr),
        name=name,
        model_hash=model_hash,
        zero_snr=zero_snr,
    )


# --------------------------------------------------------------------------- empty full-size models


def build_empty_sd15():
    """SD1.5's full-size U-Net and CLIP text encoder on the meta device (shapes, no weights).

    For naming and shape checks against real models without gigabytes of memory.
    """
    return build_empty("sd1")


def build_empty(family: str):
    """``(unet, [text encoders])`` of a family at full size, on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = CONFIG_ROOT / ("sdxl" if is_sdxl(family) else family)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((root / "unet" / "config.json").read_text()))
        encoders: list[CLIPTextModel | CLIPTextModelWithProjection] = [CLIPTextModel(CLIPTextConfig.from_pretrained(str(root / "text_encoder")))]
        if is_sdxl(family):
            config2 = CLIPTextConfig.from_pretrained(str(root / "text_encoder_2"))
            encoders.append(CLIPTextModelWithProjection(config2))
    return unet, encoders
