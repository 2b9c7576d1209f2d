"""Import training settings from kohya_ss / sd-scripts files into a concept project.

Three kinds of file are read, told apart by their content (not their extension):

* kohya_ss GUI settings (``.json``, or a TOML the GUI saved): GUI names such as ``optimizer``,
  ``max_resolution``, ``epoch`` and ``lr_warmup`` (a percent), numbers often as strings;
* an sd-scripts ``--config_file`` TOML: argparse names, flat or grouped in tables (sd-scripts
  flattens the tables, and so do we);
* an sd-scripts dataset TOML (``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``).

Every key of the file ends up in exactly one report: ``used`` (written to the project),
``ignored`` (a kohya key that does not apply to a copy-machine project, with why) or
``unknown``. Converted values go through the project's own validation first, so an import
never produces an invalid project: a value that fails is reported as ignored instead.

Values mean what kohya_ss really passes to sd-scripts (its ``lora_gui.py``), not what the
names suggest: ``epoch`` only sizes ``max_train_steps`` when that is empty, ``noise_offset``
only applies with ``noise_offset_type = "Original"``, ``text_encoder_lr = 0`` means "do not
train the text encoder". Nothing here imports torch: the CLI stays fast.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shlex
import sys
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from engine.errors import Problem, ValidationError
from engine.project.folder import Project
from engine.project.params import OPTIMIZERS, ConceptParams, ProjectInfo, RegParams, TrainParams
from engine.project.toml_writer import toml_value
from engine.project.validate import build_section

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

GUI, CONFIG, DATASET = "kohya_ss GUI settings", "sd-scripts config file", "sd-scripts dataset config"


class Entry(NamedTuple):
    """One key of the imported file in one report.

    ``key``: as in the file; nested dataset keys as ``datasets[0].subsets[0].num_repeats``, one
    token of ``network_args`` as ``network_args.conv_dim``. ``value``: for used entries the
    value written to the project, otherwise the value found. ``note``: for used entries the
    project key written (``learning_rate``, ``project.model_family``) or, in parentheses, what
    the key decided; for ignored entries why; empty for unknown ones.
    """

    key: str
    value: Any
    note: str = ""


@dataclass
class KohyaImport:
    train: dict = field(default_factory=dict)  # [train] key -> validated value
    extra: dict = field(default_factory=dict)  # other tables, e.g. {"project": {"model_family": "sdxl"}}
    used: list[Entry] = field(default_factory=list)
    ignored: list[Entry] = field(default_factory=list)
    unknown: list[Entry] = field(default_factory=list)
    kind: str = ""  # GUI, CONFIG or DATASET
    source: str = ""  # the file read
    encoding: str = "utf-8"  # how it was read: "cp932" for a Shift-JIS file (Japanese Windows)


# Known kohya keys that do not apply to a copy-machine project, grouped by the reason shown.
_GROUPS = {
    "paths and names are per project": (
        "output_dir output_name train_data_dir resume resume_from_huggingface "
        "log_tracker_config model_list image_dir "
        "metadata_file conditioning_data_dir cache_info"
    ),
    "import a dataset config file on its own": "dataset_config",
    "set the base model with `copylora new --base` (kohya's path may not exist here)": "pretrained_model_name_or_path",
    "a separate VAE is not supported (the base model's VAE is used)": "vae",
    "caption options are not supported: the copy-machine route is caption-free, and the DreamBooth flow (a dataset "
    "config) reads each caption whole, as [filewords], within max_token_length": (
        "caption_extension caption_extention shuffle_caption keep_tokens keep_tokens_separator "
        "secondary_separator caption_dropout_rate caption_dropout_every_n_epochs "
        "caption_tag_dropout_rate caption_prefix caption_suffix weighted_captions "
        "no_token_padding class_tokens enable_wildcard token_warmup_min "
        "token_warmup_step"
    ),
    "launcher setting: copylora runs one process on one device": (
        "num_cpu_threads_per_process num_processes num_machines multi_gpu gpu_ids main_process_port "
        "dynamo_backend dynamo_mode dynamo_use_fullgraph dynamo_use_dynamic "
        "extra_accelerate_launch_args ddp_timeout ddp_gradient_as_bucket_view ddp_static_graph"
    ),
    "free-form extra arguments are not parsed: check them by hand": "additional_parameters",
    "Weights & Biases is not supported (TensorBoard logs are: log_with)": "log_config use_wandb wandb_api_key wandb_run_name",
    "TensorBoard runs are named by side and start time": "log_prefix log_tracker_name",
    "the rank comes from network_dim, which must match the network_weights file (check says so if not)": "dim_from_weights",
    "Hugging Face upload is not part of copylora": (
        "huggingface_path_in_repo huggingface_repo_id huggingface_repo_type "
        "huggingface_repo_visibility huggingface_token async_upload save_state_to_huggingface"
    ),
    "LoRA metadata is written by copylora": (
        "metadata_author metadata_description metadata_license metadata_tags metadata_title "
        "training_comment no_metadata"
    ),
    "memory/speed settings (attention, precision tricks, offload) are chosen by copylora": (
        "xformers mem_eff_attn sdpa full_fp16 full_bf16 fp8_base fp8_base_unet lowvram highvram "
        "vae_batch_size max_data_loader_n_workers persistent_data_loader_workers "
        "disable_mmap_load_safetensors mem_eff_save blocks_to_swap single_blocks_to_swap "
        "double_blocks_to_swap cpu_offload_checkpointing fused_backward_pass fused_optimizer_groups "
        "blockwise_fused_optimizers sdxl_no_half_vae no_half_vae sdxl_cache_text_encoder_outputs "
        "cache_text_encoder_outputs cache_text_encoder_outputs_to_disk"
    ),
    "latents are always cached": "cache_latents cache_latents_to_disk skip_cache_check",
    "no bucket settings: copylora fits each image into [train].resolution": (
        "enable_bucket min_bucket_reso max_bucket_reso bucket_reso_steps bucket_no_upscale"
    ),
    "copylora saves the final LoRA, and resumable checkpoints every save_every_n_steps": (
        "save_every_n_epochs save_last_n_steps save_last_n_steps_state save_last_n_epochs "
        "save_last_n_epochs_state save_state save_state_on_train_end save_n_epoch_ratio save_as_bool"
    ),
    "LoRAs are always saved as .safetensors": "save_model_as",
    "previews are made by `copylora sample` ([sample])": (
        "sample_every_n_epochs sample_every_n_steps sample_prompts sample_at_first"
    ),
    "copylora does not accumulate gradients (raise train_batch_size instead)": "gradient_accumulation_steps",
    "zero-terminal SNR is read from the base model itself (ComfyUI's ztsnr key; a diffusers scheduler's rescale_betas_zero_snr)": (
        "zero_terminal_snr"
    ),
    "not supported by copylora's trainer": (
        "multires_noise_iterations multires_noise_discount adaptive_noise_scale "
        "noise_offset_random_strength ip_noise_gamma ip_noise_gamma_random_strength "
        "debiased_estimation_loss scale_v_pred_loss_like_noise_pred v_pred_like_loss loss_type "
        "huber_c huber_schedule huber_scale masked_loss alpha_mask "
        "color_aug face_crop_aug_range scale_weight_norms network_dropout "
        "rank_dropout module_dropout stop_text_encoder_training stop_text_encoder_training_pct "
        "loraplus_lr_ratio loraplus_unet_lr_ratio loraplus_text_encoder_lr_ratio lr_scheduler_args "
        "lr_scheduler_type lr_decay_steps lr_scheduler_min_lr_ratio lr_scheduler_timescale "
        "network_train_text_encoder_only network_multiplier"
    ),
    "copylora's noise_offset is kohya's Original type; Multires noise is not supported": "noise_offset_type",
    "LyCORIS-only option (copylora trains kohya LoRA/LoCon)": (
        "LyCORIS_preset preset factor use_cp use_tucker use_scalar decompose_both rank_dropout_scale "
        "constrain rescaled train_norm train_on_input bypass_mode dora_wd unit"
    ),
    "block-wise dims and learning rates are not supported": (
        "block_dims block_alphas conv_block_dims conv_block_alphas conv_dims conv_alphas "
        "down_lr_weight mid_lr_weight up_lr_weight block_lr_zero_threshold"
    ),
    "SD3/FLUX setting (copylora trains SD1, SD2 and SDXL)": (
        "ae apply_t5_attn_mask clip_g clip_l discrete_flow_shift flux1_cache_text_encoder_outputs "
        "flux1_cache_text_encoder_outputs_to_disk flux1_checkbox flux1_clip_l flux1_t5xxl "
        "flux_fused_backward_pass guidance_scale logit_mean logit_std mode_scale "
        "model_prediction_type sd3_cache_text_encoder_outputs sd3_cache_text_encoder_outputs_to_disk "
        "sd3_checkbox sd3_fused_backward_pass sd3_text_encoder_batch_size save_clip save_t5xxl "
        "split_mode t5xxl t5xxl_device t5xxl_dtype t5xxl_max_token_length timestep_sampling "
        "weighting_scheme train_blocks split_qkv"
    ),
    "text-encoder rates of kohya's DreamBooth/fine-tune tabs (full-model training)": (
        "learning_rate_te learning_rate_te1 learning_rate_te2"
    ),
    "copylora has no validation split": "validation_seed validation_split",
    "regularisation subsets are not imported: copylora's [reg] has its own folder": "is_reg",
}
IGNORED = {key: reason for reason, keys in _GROUPS.items() for key in keys.split()}

# Keys copied as they are (GUI number strings parsed); "" keeps the project's value.
_DIRECT = {
    "train_batch_size", "gradient_checkpointing", "mixed_precision", "save_precision", "flip_aug",
    "random_crop", "max_grad_norm", "lr_scheduler", "lr_scheduler_power", "lr_scheduler_num_cycles",
    "min_timestep", "max_timestep",
}
_TEXT = {"mixed_precision", "save_precision", "lr_scheduler"}  # never parsed as numbers
# Keys with their own conversion below.
_SPECIAL = {
    "sdxl", "v2", "v_parameterization", "LoRA_type", "network_module", "network_args",
    "optimizer", "optimizer_type", "optimizer_args", "use_8bit_adam", "use_lion_optimizer",
    "learning_rate", "unet_lr", "text_encoder_lr", "network_train_unet_only",
    "max_train_epochs", "max_train_steps", "epoch", "lr_warmup", "lr_warmup_steps",
    "max_resolution", "resolution", "seed", "clip_skip", "max_token_length", "min_snr_gamma", "noise_offset",
    "reg_data_dir", "prior_loss_weight", "network_dim", "network_alpha", "conv_dim", "conv_alpha",
    "save_every_n_steps", "base_weights", "base_weights_multiplier", "network_weights", "lora_network_weights",
    "log_with", "logging_dir", "sample_sampler",
}
_KNOWN = set(IGNORED) | _DIRECT | _SPECIAL
# Only the GUI writes these: they tell GUI settings saved as TOML from an sd-scripts config.
_GUI_ONLY = {"optimizer", "max_resolution", "epoch", "lr_warmup", "LoRA_type", "model_list"}

# kohya_ss LoRA types whose weights are the kohya LoRA copylora trains; LoCon adds 3x3 convs.
_LORA_TYPES = {"Standard": "lora", "Kohya LoCon": "locon", "LoCon": "locon", "LyCORIS/LoCon": "locon"}
_CANONICAL_OPTIMIZERS = {name.lower(): name for name in OPTIMIZERS}
_ADAPTIVE = ("prodigy", "dadapt")  # optimizers whose "learning rate" is a multiplier near 1.0


def import_kohya(path: Path | str, family: str | None = None) -> KohyaImport:
    """Read a kohya file and convert it; raises ValidationError if it is not one. ``family``:
    the model family of the project it goes into, where the file does not say it (an
    sd-scripts config for sdxl_train_network has no ``sdxl`` key)."""
    path = Path(path)
    data, encoding = _load(path)
    col = _Collector()
    col.family = family
    if isinstance(data.get("datasets"), list) or (isinstance(data.get("general"), dict) and set(data) <= {"general", "datasets"}):
        kind = DATASET
        _convert_dataset(data, col)
    else:
        flat, dupes = _flatten(data)
        if not _KNOWN & set(flat):
            raise ValidationError([Problem(str(path), "not a kohya_ss or sd-scripts config: none of its keys is a kohya setting")])
        kind = GUI if _GUI_ONLY & set(flat) or path.suffix.lower() == ".json" else CONFIG
        for key, value in dupes:
            col.ignore(key, value, "set again later in the file (sd-scripts keeps the last one)")
        _convert_args(_Args(flat, col), col, gui=kind == GUI)
    _validate(col)
    return KohyaImport(col.train, col.extra, col.used, col.ignored, col.unknown, kind, str(path), encoding)


def apply_import(project: Project, result: KohyaImport) -> Project:
    """The project with the imported values: [train] field by field, then the other tables.

    Nothing is written; pass the result to ``save_project`` (which validates it again).
    """
    changes: dict[str, Any] = {"train": replace(project.train, **result.train)}
    if "project" in result.extra:
        changes["info"] = replace(project.info, **result.extra["project"])
    if "reg" in result.extra:
        changes["reg"] = replace(project.reg or RegParams(), **result.extra["reg"])
    concepts = [ConceptParams(**result.extra[name]) for name in concept_tables(result.extra)]
    if concepts:  # the dataset's further subsets replace the project's concepts
        changes["concepts"] = concepts
    if "b" in result.extra:  # the differential route's multiplier (base_weights_multiplier)
        changes["b"] = replace(project.b, **result.extra["b"])
    if "sample" in result.extra:  # the previews' sampler (sample_sampler)
        changes["sample"] = replace(project.sample, **result.extra["sample"])
    return replace(project, **changes)


def concept_tables(extra: dict) -> list[str]:
    """The ``concept[N]`` tables an import filled, in order."""
    return sorted((name for name in extra if name.startswith("concept[")), key=lambda name: int(name[8:-1]))


def format_report(result: KohyaImport) -> str:
    """Plain-text report; ignored keys that share a reason share a line."""
    lines = [f"{result.kind}: {result.source}" + (f" (read as {result.encoding}: not UTF-8)" if result.encoding != "utf-8" else "")]
    for e in result.used:
        if e.note.startswith("("):
            lines.append(f"  used     {e.key} = {_show(e.value)} {e.note}")
        else:
            lines.append(f"  used     {e.note} = {_show(e.value)} (from {e.key})")
    groups: dict[str, list[str]] = {}
    for e in result.ignored:
        # A value kohya would have acted on is shown; an empty/off one is not worth the space.
        groups.setdefault(e.note, []).append(f"{e.key}={_show(e.value)}" if e.value else e.key)
    for reason, keys in groups.items():
        lines.append(_wrap(f"  ignored  {', '.join(keys)}: {reason}"))
    if result.unknown:
        lines.append(_wrap(f"  unknown  {', '.join(e.key for e in result.unknown)}"))
    lines.append(f"{len(result.used)} used, {len(result.ignored)} ignored, {len(result.unknown)} unknown")
    return "\n".join(lines)


def _show(value: Any) -> str:
    text = "unset" if value is None else toml_value(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _wrap(line: str) -> str:
    return textwrap.fill(line, width=100, subsequent_indent=" " * 11, break_on_hyphens=False)


# --- Reading ---------------------------------------------------------------------------------


def _load(path: Path) -> tuple[dict, str]:
    """The file's settings, and the encoding it was read in."""

    def fail(message: str) -> ValidationError:
        return ValidationError([Problem(str(path), message)])

    if not path.is_file():  # a folder, a pipe, /dev/null: said as what it is ("no such file" for all)
        from engine.files import input_file_problem

        problem = input_file_problem(path) or "no such file"
        raise fail("no such file" if problem.startswith("no such file") else problem.removeprefix(f"{path}: ").removeprefix(f"{path} "))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read: {exc}") from None
    encoding = "utf-8"
    try:
        text = raw.decode("utf-8-sig")  # Windows editors may add a BOM
    except UnicodeDecodeError as exc:
        # sd-scripts opens its configs in the locale's encoding: on Japanese Windows that is
        # cp932 (Shift-JIS), so a config with a Japanese path or name that works there is cp932.
        try:
            text, encoding = raw.decode("cp932"), "cp932"
        except UnicodeDecodeError:
            raise fail(f"cannot read: not UTF-8 ({exc}) nor Shift-JIS (cp932)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise fail(f"neither JSON nor TOML ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise fail("not a kohya_ss or sd-scripts config: expected a table of settings")
    return data, encoding


def _flatten(data: dict) -> tuple[dict, list[tuple[str, Any]]]:
    """As sd-scripts reads a config file: tables are flattened and a later key wins.

    Returns the flat keys and the overridden earlier values, named ``table.key``.
    """
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}
    dupes: list[tuple[str, Any]] = []
    for name, value in data.items():
        items = value.items() if isinstance(value, dict) else [(name, value)]
        for key, item in items:
            if key in flat:
                dupes.append((f"{where[key]}.{key}" if where[key] else f"{key} (top level)", flat[key]))
            flat[key] = item
            where[key] = name if isinstance(value, dict) else ""
    return flat, dupes


class _Collector:
    """The three reports, plus the tables being filled."""

    def __init__(self) -> None:
        self.train: dict[str, Any] = {}
        self.extra: dict[str, dict[str, Any]] = {}
        self.used: list[Entry] = []
        self.ignored: list[Entry] = []
        self.unknown: list[Entry] = []
        self.family: str | None = None  # the project's model family, where the file does not say it

    def use(self, key: str, target: str, value: Any) -> None:
        """Write ``value`` to ``target``: a [train] key, or ``table.key`` of another table."""
        table, _, name = target.rpartition(".")
        (self.extra.setdefault(table, {}) if table else self.train)[name] = value
        self.used.append(Entry(key, value, target))

    def decided(self, key: str, value: Any, note: str) -> None:
        """A key that decided how others are read, with no value of its own in the project."""
        self.used.append(Entry(key, value, f"({note})"))

    def ignore(self, key: str, value: Any, reason: str) -> None:
        self.ignored.append(Entry(key, value, reason))

    def leftover(self, key: str, value: Any) -> None:
        reason = IGNORED.get(key.rsplit(".", 1)[-1])
        if reason:
            self.ignore(key, value, reason)
        else:
            self.unknown.append(Entry(key, value))


class _Args:
    """The file's keys not yet reported: each is taken (and then reported) exactly once."""

    def __init__(self, flat: dict, col: _Collector) -> None:
        self.rest = dict(flat)
        self.col = col

    def __contains__(self, key: str) -> bool:
        return key in self.rest

    def take(self, key: str) -> Any:
        return self.rest.pop(key)

    def number(self, key: str) -> tuple[bool, Any]:
        """(True, number or None if unset); a value that is no number is reported here."""
        raw = self.rest.pop(key)
        try:
            return True, _num(raw)
        except ValueError:
            self.col.ignore(key, raw, "not a number")
            return False, None


def _num(value: Any) -> int | float | None:
    """GUI numbers are often strings ("0.0001", "1234"); "" and None mean unset."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return float(value.strip())
    return value


def _pair(value: Any) -> Any:
    """ "W,H" or "W" -> [W, H]; other values are left for validation to judge."""
    if isinstance(value, str):
        try:
            parts = [int(float(p)) for p in value.split(",")]
        except (ValueError, OverflowError):  # "512,abc"; "inf" or "1e400" (float() reads them, int() cannot)
            return value
        return parts * 2 if len(parts) == 1 else parts
    return [value, value] if isinstance(value, int) and not isinstance(value, bool) else value


def _parse_args(value: Any) -> dict[str, Any]:
    """``"d0=1e-5" "decouple=True"``, ``betas=0.9,0.99`` or a list of such -> dict.

    Values are read as sd-scripts reads them (ast.literal_eval, else the plain string);
    tuples become lists so that they can be written to TOML.
    """
    if not isinstance(value, (str, list, tuple)):  # a number or true where the arguments go
        raise ValueError(f"{value!r} is not a list of key=value arguments")
    tokens = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    args: dict[str, Any] = {}
    for token in tokens:
        key, eq, text = token.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{token!r} is not key=value")
        try:
            item = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            item = text.strip()
        if isinstance(item, tuple):
            item = list(item)
        args[key.strip()] = item if isinstance(item, (bool, int, float, str, list)) else text.strip()
    return args


# --- Training arguments: kohya_ss GUI settings and sd-scripts config files -----------------


def _convert_args(args: _Args, col: _Collector, *, gui: bool) -> None:
    _model_family(args, col)
    adaptive = _optimizer(args, col)
    _learning_rates(args, col, gui=gui, adaptive=adaptive)
    steps = _duration(args, col)
    _warmup(args, col, steps)
    _network(args, col)
    _regularisation(args, col)
    _base_weights(args, col)
    _network_weights(args, col)
    _logging(args, col)
    _sample_sampler(args, col)

    for key in ("max_resolution", "resolution"):
        if key in args:
            col.use(key, "resolution", _pair(args.take(key)))
    if "seed" in args:
        raw = args.rest["seed"]
        ok, seed = args.number("seed")
        if ok and (seed is None or (gui and seed == 0)):
            # kohya then draws a random seed; copylora keeps a fixed one so that A and B match.
            col.ignore("seed", raw, "unset (random in kohya): the project's fixed seed is kept")
        elif ok:
            col.use("seed", "seed", seed)
    if "clip_skip" in args:
        ok, skip = args.number("clip_skip")
        if ok and skip and skip > 1 and str(col.extra.get("project", {}).get("model_family", col.family)).startswith("sdxl"):
            # sdxl_train_network warns and always takes the penultimate layers; copylora applies
            # clip_skip to SDXL as A1111 does, so importing it would train on another layer
            col.ignore("clip_skip", skip, "ignored by kohya's SDXL training (always the penultimate layers): "
                                          "the project's clip_skip (1, the same layers) is kept")
        elif ok:  # unset or 0 is kohya's default: the last layer
            col.use("clip_skip", "clip_skip", skip or 1)
    if "max_token_length" in args:
        ok, tokens = args.number("max_token_length")
        if ok and tokens in (None, 0, 75, 150, 225):  # unset (the GUI's 0 or "75" too): 75
            col.use("max_token_length", "max_token_length", int(tokens or 75))
        elif ok:
            col.ignore("max_token_length", tokens, "sd-scripts takes 75, 150 or 225: the project's 75 is kept")
    if "min_snr_gamma" in args:
        ok, gamma = args.number("min_snr_gamma")
        if ok:  # 0 or unset: off
            col.use("min_snr_gamma", "min_snr_gamma", gamma or None)
    if "noise_offset" in args:
        noise_type = args.rest.get("noise_offset_type", "Original")
        ok, offset = args.number("noise_offset")
        if ok and gui and noise_type != "Original":
            # kohya_ss passes noise_offset only with the Original type; Multires replaces it.
            col.ignore("noise_offset", offset, f"not applied by kohya_ss with noise_offset_type {noise_type!r}")
        elif ok:
            col.use("noise_offset", "noise_offset", offset or 0.0)
    if "save_every_n_steps" in args:
        ok, every = args.number("save_every_n_steps")
        if ok and every:
            col.use("save_every_n_steps", "save_every_n_steps", every)
        elif ok:  # kohya's 0 = never; copylora's checkpoints are what make a stopped run resumable
            col.ignore("save_every_n_steps", every, "off in kohya: the project's checkpoint interval is kept")

    for key in sorted(_DIRECT & set(args.rest)):
        if key in _TEXT or not isinstance(args.rest[key], str):
            ok, value = True, args.take(key)
        else:
            ok, value = args.number(key)
        if ok and value in (None, ""):
            col.ignore(key, value, "empty: the project's value is kept")
        elif ok:
            col.use(key, key, value)

    for key, value in args.rest.items():
        col.leftover(key, value)
    _constant_has_no_warmup(col)


def _constant_has_no_warmup(col: _Collector) -> None:
    """sd-scripts refuses warm-up steps with the constant schedule (its default); diffusers'
    schedule would drop them without a word. The steps are not imported, said why."""
    warmup = col.train.get("lr_warmup_steps")
    if not warmup or col.train.get("lr_scheduler", "constant") != "constant":
        return
    for entry in [e for e in col.used if e.note == "lr_warmup_steps"]:
        col.used.remove(entry)
        col.ignore(entry.key, entry.value, 'lr_scheduler "constant" has no warm-up (sd-scripts refuses the pair): '
                                           "use constant_with_warmup to have one")
    del col.train["lr_warmup_steps"]


def _model_family(args: _Args, col: _Collector) -> None:
    flags = {key: args.take(key) for key in ("sdxl", "v2", "v_parameterization") if key in args}
    sdxl, v2, vpred = (flags.get(k) is True for k in ("sdxl", "v2", "v_parameterization"))
    family = ("sdxl-v" if vpred else "sdxl") if sdxl else "sd2-v" if v2 and vpred else "sd2" if v2 else None
    for key, value in flags.items():
        if family and value is True:
            col.use(key, "project.model_family", family)
        elif key == "v_parameterization" and value:
            col.ignore(key, value, "v-prediction is supported for SD2 and SDXL only (model_family sd2-v, sdxl-v)")
        elif family:
            col.ignore(key, value, f"off (the model family is {family})")
        else:
            # No flag means SD1.x to kohya; "auto" reads the family from the base model itself.
            col.ignore(key, value, "off: model_family stays auto (read from the base model)")


def _optimizer(args: _Args, col: _Collector) -> bool:
    """Import the optimizer; True if it adapts its own step size (Prodigy, DAdaptation)."""
    chosen: tuple[str, Any] | None = None
    for key in ("optimizer_type", "optimizer"):  # sd-scripts and GUI names
        if key in args:
            name = args.take(key)
            if chosen or name in (None, ""):
                col.ignore(key, name, f"{chosen[0]} is used" if chosen else "empty")
            else:
                chosen = (key, name)
    for key, implied in (("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion")):  # old sd-scripts flags
        if key in args:
            on = args.take(key)
            if on is True and not chosen:
                chosen = (key, implied)
            else:
                col.ignore(key, on, f"{chosen[0]} is used" if chosen else "off")
    key, name = chosen or ("", None)
    canonical = _CANONICAL_OPTIMIZERS.get(str(name).lower())
    if canonical:
        col.use(key, "optimizer_type", canonical)
    elif key:
        col.ignore(key, name, f"optimizer not supported (copylora has {', '.join(OPTIMIZERS)}): the project's optimizer is kept")
    if "optimizer_args" in args:
        raw = args.take("optimizer_args")
        if key and not canonical:
            col.ignore("optimizer_args", raw, f"arguments of the unsupported optimizer {name}")
        else:
            try:
                col.use("optimizer_args", "optimizer_args", _parse_args(raw or ""))
            except ValueError as exc:
                col.ignore("optimizer_args", raw, f"cannot read: {exc}")
    return bool(key) and str(name).lower().startswith(_ADAPTIVE)


def _learning_rates(args: _Args, col: _Collector, *, gui: bool, adaptive: bool) -> None:
    # Prodigy/DAdaptation rates are multipliers of an adapted step (about 1.0): copied to
    # AdamW they would be thousands of times too large.
    adaptive_why = "a learning rate for an adaptive optimizer (Prodigy/DAdaptation) does not carry over"
    if "learning_rate" in args:
        ok, lr = args.number("learning_rate")
        if ok and (adaptive or lr is None):
            col.ignore("learning_rate", lr, adaptive_why if adaptive else "empty: the project's value is kept")
        elif ok:
            col.use("learning_rate", "learning_rate", lr)
    has_unet, unet = args.number("unet_lr") if "unet_lr" in args else (False, None)
    has_te, te = args.number("text_encoder_lr") if "text_encoder_lr" in args else (False, None)
    has_flag = "network_train_unet_only" in args
    if has_flag:
        col.use("network_train_unet_only", "network_train_unet_only", args.take("network_train_unet_only"))
    if has_te and te and has_unet and not unet:
        for key, value in (("unet_lr", unet), ("text_encoder_lr", te)):
            col.ignore(key, value, "text-encoder-only training (U-Net lr 0) is not supported")
        return
    if has_unet:
        if adaptive and unet:
            col.ignore("unet_lr", unet, adaptive_why)
        else:  # 0 or unset: the U-Net trains at learning_rate
            col.use("unet_lr", "unet_lr", unet or None)
    if has_te:
        # kohya_ss drops a 0 text-encoder lr, so if the U-Net lr is 0 too both train at
        # learning_rate; otherwise (and always in an sd-scripts config) 0 = text encoder frozen.
        train_te = bool(te) or (gui and has_unet and not unet)
        if te and not adaptive:
            col.use("text_encoder_lr", "text_encoder_lr", te)
        if not has_flag:
            col.use("text_encoder_lr", "network_train_unet_only", not train_te)
        elif not te or adaptive:
            col.ignore("text_encoder_lr", te, adaptive_why if te else "network_train_unet_only is set")


def _duration(args: _Args, col: _Collector) -> int | None:
    """Epochs or steps; returns max_train_steps when steps were chosen.

    sd-scripts trains max_train_epochs when set, else max_train_steps. kohya_ss never passes
    its ``epoch`` field on: it only computes max_train_steps from it (images x repeats x epoch
    / batch) when max_train_steps is empty, which equals that many epochs.
    """
    found: dict[str, Any] = {}
    for key in ("max_train_epochs", "max_train_steps", "epoch"):
        if key in args:
            ok, value = args.number(key)
            if not ok:
                continue
            if value and not _whole_positive(value):
                # Dropped here, before it could pick the duration: a -5 or 1.5 used to clear the
                # project's other duration key and then be refused, leaving neither.
                col.ignore(key, value, "not a positive whole number")
                continue
            found[key] = int(value) if value else value
    pick = next((key for key, value in found.items() if value), None)
    for key, value in found.items():
        if key == pick:
            target = "max_train_steps" if key == "max_train_steps" else "max_train_epochs"
            col.use(key, target, value)
            # The project takes one of the two: clear the other (no report line of its own).
            col.train["max_train_epochs" if target == "max_train_steps" else "max_train_steps"] = None
        elif not value:
            col.ignore(key, value, "unset")
        elif pick == "max_train_epochs":
            col.ignore(key, value, "max_train_epochs is set, and sd-scripts then trains epochs")
        else:
            col.ignore(key, value, "kohya_ss uses epoch only when max_train_steps is empty")
    return found["max_train_steps"] if pick == "max_train_steps" else None


def _whole_positive(value: int | float) -> bool:
    return math.isfinite(value) and value >= 1 and value == int(value)


def _warmup(args: _Args, col: _Collector, steps: int | None) -> None:
    """lr_warmup_steps (sd-scripts: a float < 1 is a ratio), or the GUI's lr_warmup percent."""
    unknown_total = "of the total steps, which depend on the project's images: set lr_warmup_steps by hand"
    found: dict[str, Any] = {}
    for key in ("lr_warmup_steps", "lr_warmup"):
        if key in args:
            ok, value = args.number(key)
            if ok and value is not None and not math.isfinite(value):  # "inf", "nan", 1e400: no number of steps
                col.ignore(key, value, "not a finite number")
            elif ok:
                found[key] = value or 0
    # the one that sets warm-up steps; both 0 (a GUI file): the first, the other said as unused (not used twice)
    pick = next((key for key, value in found.items() if value), next(iter(found), None))
    for key, value in found.items():
        ratio = value / 100 if key == "lr_warmup" else value if isinstance(value, float) and value < 1 else None
        if pick and key != pick:
            col.ignore(key, value, f"{pick} is used")
        elif ratio and not steps:
            col.ignore(key, value, f"{ratio:.0%} {unknown_total}")
        elif ratio and steps and not math.isfinite(ratio * steps):  # 1e308 % of the steps
            col.ignore(key, value, "too large for a number of steps")
        else:
            col.use(key, "lr_warmup_steps", round(ratio * steps) if ratio and steps else int(value))


def _network(args: _Args, col: _Collector) -> None:
    """Network type and dims; dims of other network types (LoKr...) mean something else."""
    kind: str | None = "lora"  # None: a network type copylora cannot train
    label = "networks.lora"  # sd-scripts' default module
    net_args: dict[str, Any] = {}
    raw_net_args = args.take("network_args") if "network_args" in args else None
    if raw_net_args:
        try:
            net_args = _parse_args(raw_net_args)
        except ValueError as exc:
            col.ignore("network_args", raw_net_args, f"cannot read: {exc}")
    elif raw_net_args is not None:
        col.ignore("network_args", raw_net_args, "empty")
    named: list[tuple[str, Any]] = []  # the keys that named the type, to report
    if "LoRA_type" in args:  # GUI
        label = args.take("LoRA_type")
        kind = _LORA_TYPES.get(label)
        named.append(("LoRA_type", label))
    if "network_module" in args:  # sd-scripts; LyCORIS picks its algorithm in network_args
        module = args.take("network_module")
        algo = str(net_args.get("algo", "lora")).lower()
        kind = "lora" if module == "networks.lora" else "locon" if module == "lycoris.kohya" and algo in ("lora", "locon") else None
        label = f"{module} algo={algo}" if module == "lycoris.kohya" else module
        named.append(("network_module", module))
    if kind and "conv_dim" in net_args:
        kind = "locon"  # networks.lora with conv_dim in network_args is kohya's LoCon
    for key, value in named:
        if kind:
            col.decided(key, value, f"{'LoCon' if kind == 'locon' else 'LoRA'}, as copylora trains")
        else:
            col.ignore(key, value, "network type not supported: copylora trains kohya LoRA/LoCon")
    other = f"dims of {label} mean something else; not imported"
    for name in ("network_dim", "network_alpha", "conv_dim", "conv_alpha"):
        if name not in args:
            continue
        ok, value = args.number(name)
        if not ok:
            continue
        if not kind:
            col.ignore(name, value, other)
        elif value is None:
            col.ignore(name, value, "empty: the project's value is kept")
        elif name.startswith("conv") and kind != "locon":
            col.ignore(name, value, f"{label} trains no 3x3 convs (kohya_ss passes conv_dim for LoCon types only)")
        else:
            col.use(name, name, value)
    for name, value in net_args.items():
        key = f"network_args.{name}"
        if not kind:
            col.ignore(key, value, other)
        elif name in ("conv_dim", "conv_alpha"):
            col.use(key, name, value)
        elif name == "algo":
            col.decided(key, value, "LoCon, as copylora trains")
        else:
            col.ignore(key, value, IGNORED.get(name, "network argument not supported"))


def kohya_name(name: str) -> tuple[int, str] | None:
    """(repeats, words) of a kohya_ss image folder's name as sd-scripts reads it
    (config_util.extract_dreambooth_params): the number before the first "_" ("10", "+5_x" and
    "05_x" too), the rest the caption; None where kohya skips the folder (no number, or under 1)."""
    head, _, words = name.partition("_")
    try:
        repeats = int(head)
    except ValueError:
        return None
    return (repeats, words) if repeats >= 1 else None


def _kohya_subfolders(folder: Any) -> list[Path]:
    """The subfolders kohya reads (:func:`kohya_name`) holding pictures, of a kohya_ss image
    folder that exists here, by name; [] when there is none or the folder is not here."""
    from engine.project.images import image_files

    try:
        path = Path(str(folder)).expanduser()
        subs = sorted(path.iterdir()) if path.is_dir() else []
        # a name that is no UTF-8 (another system's encoding) cannot be written to the project's TOML
        return [sub for sub in subs if _utf8(str(sub)) and sub.is_dir() and kohya_name(sub.name) and image_files(sub)]
    except OSError:
        return []


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _regularisation(args: _Args, col: _Collector) -> None:
    """Prior preservation applies only when kohya had class images (reg_data_dir). Where the
    folder is here in kohya_ss's layout (``reg/1_girl``), its first class folder is [reg]'s, its
    name giving the class prompt and repeats as kohya reads it; and the training folder's first
    ``5_sks girl`` gives [reg]'s instance prompt (kohya's caption of its pictures)."""
    folder = args.take("reg_data_dir") if "reg_data_dir" in args else None
    classes = _kohya_subfolders(folder) if folder else []
    if classes:
        first, more = classes[0], classes[1:]
        reg = col.extra.setdefault("reg", {})
        repeats, words = kohya_name(first.name) or (1, "")
        reg.update(folder=os.path.realpath(first), class_prompt=words, num_repeats=repeats, num_class_images=0)
        unused = f"; {', '.join(c.name for c in more[:3])}{' …' if len(more) > 3 else ''} not used (a project's [reg] has one class folder: " \
                 "a [[concept]]'s class_folder takes another)" if more else ""
        col.decided("reg_data_dir", folder, f"[reg] folder = {first} (class prompt {reg['class_prompt']!r}, num_repeats "
                                            f"{reg['num_repeats']}: its name, as kohya reads it){unused}")
        teachers = _kohya_subfolders(args.rest.get("train_data_dir")) if "train_data_dir" in args else []
        if teachers and (teacher_words := (kohya_name(teachers[0].name) or (1, ""))[1]):
            path = args.take("train_data_dir")
            reg["instance_prompt"] = teacher_words
            col.decided("train_data_dir", path, f"[reg] instance_prompt = {reg['instance_prompt']!r} (its {teachers[0].name}'s words, "
                                                "kohya's caption of pictures without a caption file); its pictures are not imported: "
                                                "the project's A and B are the teachers")
    elif folder:
        col.extra.setdefault("reg", {})
        col.decided("reg_data_dir", folder, "turns on [reg]: put the class images in the project's reg folder")
    elif folder is not None:
        col.ignore("reg_data_dir", folder, "empty: no regularisation images")
    if "prior_loss_weight" in args:
        ok, weight = args.number("prior_loss_weight")
        if ok and folder and weight is not None:
            col.use("prior_loss_weight", "reg.prior_loss_weight", weight)
        elif ok and "dataset_config" in args.rest:  # its class pictures are that file's is_reg subsets
            col.ignore("prior_loss_weight", weight, "weights the is_reg subsets of its dataset_config: import that file "
                                                    f"too, then set [reg] prior_loss_weight = {weight}")
        elif ok:
            col.ignore("prior_loss_weight", weight, "no regularisation images (reg_data_dir is empty)")


def _base_weights(args: _Args, col: _Collector) -> None:
    """sd-scripts' ``--base_weights A --base_weights_multiplier M`` (its differential learning,
    the copy-machine method's own route) is the project's differential route: B trains on the
    base with the project's A applied at M. copylora trains that A itself, so the file named
    is not read; several files cannot map onto one A."""
    files = args.take("base_weights") if "base_weights" in args else None
    raw = args.take("base_weights_multiplier") if "base_weights_multiplier" in args else None
    names = [files] if isinstance(files, str) else list(files) if isinstance(files, (list, tuple)) else []
    names = [str(n) for n in names if str(n).strip()]
    multipliers = raw if isinstance(raw, (list, tuple)) else [] if raw in (None, "") else [raw]
    if files is not None and not names:
        col.ignore("base_weights", files, "empty: no LoRA merged into the base")
    if len(names) > 1:
        col.ignore("base_weights", files, "several LoRAs merged into the base: copylora's differential route applies one, the project's own A")
    if len(names) != 1:
        if raw not in (None, "", []):
            col.ignore("base_weights_multiplier", raw, "no single base_weights LoRA to apply it to")
        return
    col.use("base_weights", "project.method", "differential")
    col.decided("base_weights", names[0], "B trains on the base with the project's own A applied; this file is not read")
    if not multipliers:
        return
    try:
        multiplier = _num(multipliers[0])
    except ValueError:
        multiplier = None
    if multiplier is None or not math.isfinite(multiplier) or abs(multiplier) > 10 or len(multipliers) > 1:
        col.ignore("base_weights_multiplier", raw, "not one finite number from -10 to 10: the project's multiplier is kept")
    else:
        col.use("base_weights_multiplier", "b.base_weights_multiplier", float(multiplier))


def _network_weights(args: _Args, col: _Collector) -> None:
    """sd-scripts' ``network_weights`` (the GUI's ``lora_network_weights``): the LoRA training starts
    from. kohya's path is relative to where kohya ran; it is imported only if the file is here (as
    an absolute path, which any project folder can use), else the project could not be saved."""
    for key in ("network_weights", "lora_network_weights"):
        if key not in args:
            continue
        value = args.take(key)
        if value in (None, "") or not isinstance(value, str):
            col.ignore(key, value, "empty: training starts from a fresh LoRA")
        elif "network_weights" in col.train:
            col.ignore(key, value, "network_weights is already set from the file")
        elif not Path(value).expanduser().is_file():
            col.ignore(key, value, "no such file here: copy the LoRA, then set [train] network_weights to its path")
        else:
            col.use(key, "network_weights", os.path.realpath(Path(value).expanduser()))  # realpath: Path.resolve raised on a link loop


def _sample_sampler(args: _Args, col: _Collector) -> None:
    """sd-scripts' ``sample_sampler`` (the GUI's too): the sampler of the previews, ``[sample] sampler``
    here. kohya's names (``k_euler_a``, ``dpmsolver++``…) and A1111's are read as their samplers."""
    from engine.project.params import canonical_sampler, sampler_hint

    if "sample_sampler" not in args:
        return
    value = args.take("sample_sampler")
    name = canonical_sampler(value) if isinstance(value, str) and value.strip() else None
    if name is None:
        col.ignore("sample_sampler", value, f"not a sampler copylora draws previews with{sampler_hint(str(value))}: [sample] sampler is kept")
    else:
        col.use("sample_sampler", "sample.sampler", name)


def _logging(args: _Args, col: _Collector) -> None:
    """kohya's ``log_with`` and ``logging_dir``: TensorBoard logs (``logging_dir`` alone turns them on,
    as in sd-scripts). The folder is not kept: the logs go to the project's own OUTPUT/logs."""
    from engine.project.training_logs import INSTALL, tensorboard_missing

    log_with = args.take("log_with") if "log_with" in args else None
    folder = args.take("logging_dir") if "logging_dir" in args else None
    wanted = log_with in ("tensorboard", "all") or (log_with in (None, "") and bool(folder))
    if log_with not in (None, "", "tensorboard", "all"):
        col.ignore("log_with", log_with, "only TensorBoard logs are written (log_with = \"tensorboard\")")
    if wanted and tensorboard_missing():
        for key, value in (("log_with", log_with), ("logging_dir", folder)):
            if value:
                col.ignore(key, value, f"TensorBoard logs need the tensorboard package, not installed here: {INSTALL}")
        return
    if log_with in ("tensorboard", "all"):
        col.use("log_with", "log_with", "tensorboard")
        if log_with == "all":
            col.decided("log_with", log_with, "TensorBoard only: Weights & Biases is not supported")
    elif log_with in ("", None) and log_with is not None:
        col.ignore("log_with", log_with, "empty: no TensorBoard logs unless logging_dir is set")
    if folder and not wanted:
        col.ignore("logging_dir", folder, f"no TensorBoard logs with log_with = {log_with!r}")
    elif folder:
        if log_with in (None, ""):
            col.use("logging_dir", "log_with", "tensorboard")
        col.decided("logging_dir", folder, "the logs go to the project's output/logs, per side: kohya's folder is not kept")
    elif folder is not None:
        col.ignore("logging_dir", folder, "empty")


# --- sd-scripts dataset config ---------------------------------------------------------------

# Keys a dataset sets for all its subsets, and keys of each subset (both inherit from
# [general] and, for subsets, from their dataset), with the [train] key they fill.
_DATASET_KEYS = {"resolution": "resolution", "batch_size": "train_batch_size"}
_SUBSET_KEYS = {"num_repeats": "num_repeats", "flip_aug": "flip_aug", "random_crop": "random_crop"}


def _convert_dataset(data: dict, col: _Collector) -> None:
    general: dict = data["general"] if isinstance(data.get("general"), dict) else {}
    datasets: list = data["datasets"] if isinstance(data.get("datasets"), list) else []
    first: dict[str, tuple[str, Any]] = {}  # target -> (key, value) that set it
    done: set[str] = set()

    def record(target: str, found: tuple[str, Any] | None) -> None:
        # Each effective setting once; a project has one value per key, so another value
        # (e.g. a second subset's num_repeats) is reported rather than silently dropped.
        if found is None or found[0] in done:
            return
        key, value = found
        done.add(key)
        value = _pair(value) if target == "resolution" else value
        if target not in first or first[target][1] == value:
            first.setdefault(target, (key, value))
            col.use(key, target, value)
        else:
            first_key, first_value = first[target]
            col.ignore(key, value, f"differs from {first_key} = {_show(first_value)}: a project has one {target} "
                       "([a]/[b] can override it per side)")

    teachers: list[list[tuple[str, dict]]] = []  # each subset's levels, most specific first
    classes: list[list[tuple[str, dict]]] = []
    for i, ds in enumerate(datasets):
        if not isinstance(ds, dict):
            continue
        levels: list[tuple[str, dict]] = [(f"datasets[{i}]", ds), ("general", general)]
        for name, target in _DATASET_KEYS.items():
            record(target, _lookup(name, levels))
        subsets: list = ds["subsets"] if isinstance(ds.get("subsets"), list) else []
        for j, sub in enumerate(subsets):
            if isinstance(sub, dict):
                sub_levels = [(f"datasets[{i}].subsets[{j}]", sub), *levels]
                found = _lookup("is_reg", sub_levels)
                if found is not None and not isinstance(found[1], bool) and found[0] not in done:
                    # sd-scripts' schema refuses it; "false" would have been read as true
                    col.ignore(found[0], found[1], "is_reg must be true or false (sd-scripts refuses the file): read as false, "
                                                   "a subset of the sides' pictures")
                    done.add(found[0])
                (classes if found and found[1] is True else teachers).append(sub_levels)
    dreambooth = bool(classes) or any(_lookup("class_tokens", levels) for levels in teachers)
    for number, sub_levels in enumerate(teachers):
        if number == 0 or not dreambooth:  # the sides' settings ([train])
            for name, target in _SUBSET_KEYS.items():
                record(target, _lookup(name, sub_levels))
    if teachers and _lookup("num_repeats", teachers[0]) is None:  # kohya's default in a dataset config: once
        col.train["num_repeats"] = 1
        col.decided(f"{teachers[0][0][0]}.num_repeats", "(unset)", "num_repeats = 1: kohya's default in a dataset config, which "
                    "reads no repeats from a folder's name (a side folder named like \"5_a\" still gives its 5 here: "
                    "[a]/[b] num_repeats = 1 to match)")
    if dreambooth:  # the DreamBooth flow: [reg], the first subset is the sides', the others [[concept]]s
        flip = _lookup("flip_aug", teachers[0]) if teachers else None
        unset = [levels for levels in teachers[1:] + classes if "flip_aug" not in levels[0][1]]
        if flip is not None and flip[1] is True and ".subsets[" in flip[0] and unset:  # said: kohya flips that subset alone
            col.decided(flip[0], flip[1], "flips every subset here, class pictures too (a project has one flip_aug); kohya "
                                          f"flips this subset alone, not {', '.join(levels[0][0] for levels in unset[:3])}")
        done |= _dreambooth_subsets(teachers, classes, col)
        concept_subsets = {levels[0][0] for levels in teachers[1:]}
        class_subsets = {levels[0][0] for levels in classes}

    for key, value in _dataset_leaves(data, general, datasets):
        if key in done:
            continue
        name = key.rsplit(".", 1)[-1]
        subset = key.rsplit(".", 1)[0]
        if dreambooth and subset in class_subsets:
            col.ignore(key, value, "class subsets give [reg] (the first) and the concepts (the next, in order) their folder and "
                       "class prompt only" if name != "image_dir" else "more class subsets than concepts to pair them with")
        elif dreambooth and subset in concept_subsets and name in _SUBSET_KEYS:
            col.ignore(key, value, "a project has one flip_aug and random_crop ([train]): the first subset's")
        elif name in _DATASET_KEYS or name in _SUBSET_KEYS:
            col.ignore(key, value, "overridden for every subset it could apply to")
        else:
            col.leftover(key, value)


def _dreambooth_subsets(teachers: list, classes: list, col: _Collector) -> set[str]:
    """A dataset with class subsets (``is_reg``) or ``class_tokens``, as the DreamBooth flow:

    - the first teacher subset is the sides' pictures: its ``class_tokens`` become
      ``[reg].instance_prompt`` (``[filewords]`` where ``caption_extension`` is set: kohya then
      trains on each picture's caption file);
    - every further teacher subset becomes a ``[[concept]]`` (its ``image_dir`` as the folder,
      its repeats, its prompt);
    - the first class subset is ``[reg]``'s folder and class prompt, the next ones the concepts'
      class folders, in order.

    Returns the keys it reported."""
    done: set[str] = set()

    def take(levels, name: str, target: str, convert=lambda v: v) -> Any:
        found = _lookup(name, levels)
        if found is None:
            return None
        key, value = found
        if key.startswith("datasets[") or key not in done:  # a [general] key: reported once
            col.use(key, target, convert(value))
            done.add(key)
        else:
            (col.extra.setdefault(target.rpartition(".")[0], {}))[target.rpartition(".")[2]] = convert(value)
        return value

    col.extra.setdefault("reg", {})
    if not classes:  # class_tokens without is_reg subsets: kohya trains no class pictures (the default folder "reg" asked for some)
        col.extra["reg"].update(folder="", class_prompt="", num_class_images=0)
    extension: str | None = None  # the caption extension the project reads for every subset: the first one's
    for number, levels in enumerate(teachers):
        table = "reg" if number == 0 else f"concept[{number}]"
        captions = _lookup("caption_extension", levels)
        tokens = _lookup("class_tokens", levels)
        if captions is not None and captions[1]:
            other = extension is not None and captions[1] != extension
            if extension is None:
                extension = take(levels, "caption_extension", "reg.caption_extension")
            elif other and captions[0] not in done:  # the last one won, said as the first's
                col.ignore(captions[0], captions[1], f"a project reads one caption extension ([reg] caption_extension): "
                                                     f"{extension!r}, the first subset's, for every subset")
            done.add(captions[0])
            col.extra.setdefault(table, {})["instance_prompt"] = "[filewords]"
            if not other:
                col.decided(captions[0], captions[1], f"{table}.instance_prompt = \"[filewords]\": each picture trains on its caption")
            if tokens is not None:
                col.ignore(tokens[0], tokens[1], "kohya uses class_tokens only for pictures without a caption file; copylora "
                           "trains each picture on its caption ([filewords]) and names any picture that lacks one")
                done.add(tokens[0])
        elif tokens is not None:
            take(levels, "class_tokens", f"{table}.instance_prompt")
        if number:
            folder = take(levels, "image_dir", f"{table}.folder")
            if take(levels, "num_repeats", f"{table}.num_repeats") is None and folder is not None:
                # a dataset config's subset repeats once unless it says otherwise: kohya reads no "3_" prefix there
                col.extra.setdefault(table, {})["num_repeats"] = 1
                col.decided(f"{levels[0][0]}.image_dir", folder, f"{table}.num_repeats = 1: kohya's default in a dataset "
                                                                 "config, which reads no repeats from the folder's name")
    for number, levels in enumerate(classes):
        if number and number >= len(teachers):
            continue  # more class subsets than concepts: reported as left over below
        table = "reg" if number == 0 else f"concept[{number}]"
        take(levels, "image_dir", f"{table}.{'folder' if number == 0 else 'class_folder'}")
        take(levels, "class_tokens", f"{table}.class_prompt")
        if number == 0:
            take(levels, "num_repeats", "reg.num_repeats")
        flag = _lookup("is_reg", levels)
        if flag is not None:  # a class subset says is_reg = true: classes holds no other
            col.decided(flag[0], flag[1], f"class pictures of {'[reg]' if number == 0 else table}")
            done.add(flag[0])
    return done


def _lookup(name: str, levels: list[tuple[str, dict]]) -> tuple[str, Any] | None:
    """The most specific level that sets ``name``: (its key, the value)."""
    for prefix, table in levels:
        if name in table:
            return f"{prefix}.{name}", table[name]
    return None


def _dataset_leaves(data: dict, general: dict, datasets: list) -> list[tuple[str, Any]]:
    """Every key of the file, named by its path (``datasets[0].subsets[1].num_repeats``)."""
    leaves: list[tuple[str, Any]] = []
    for key, value in data.items():
        if key == "general" and value is general:
            leaves += [(f"general.{k}", v) for k, v in general.items()]
        elif key == "datasets" and value is datasets:
            for i, ds in enumerate(datasets):
                for k, v in ds.items() if isinstance(ds, dict) else [(None, ds)]:
                    if k == "subsets" and isinstance(v, list):
                        for j, sub in enumerate(v):
                            items = sub.items() if isinstance(sub, dict) else [(None, sub)]
                            leaves += [(_path(f"datasets[{i}].subsets[{j}]", k2), v2) for k2, v2 in items]
                    else:
                        leaves.append((_path(f"datasets[{i}]", k), v))
        else:
            leaves.append((key, value))
    return leaves


def _path(prefix: str, key: str | None) -> str:
    return f"{prefix}.{key}" if key is not None else prefix


# --- Validation ------------------------------------------------------------------------------


def _validate(col: _Collector) -> None:
    """Check the filled tables with the project's own rules; failures become ignored entries.

    Values are replaced by the validated ones (canonical spelling, floats), so the report
    shows what the project will hold.
    """
    tables = [("train", TrainParams, col.train), ("project", ProjectInfo, col.extra.get("project")),
              ("reg", RegParams, col.extra.get("reg"))]
    tables += [(name, ConceptParams, col.extra[name]) for name in concept_tables(col.extra)]
    for table, cls, values in tables:
        if values is None:
            continue
        problems: list[Problem] = []
        built = build_section(cls, values, table, problems)
        for problem in problems:
            name = problem.where.split(".", 1)[1]
            target = name if table == "train" else f"{table}.{name}"
            sources = {e.key for e in col.used if e.note == target}
            # Drop everything those keys filled, so each key stays in one report.
            for e in [e for e in col.used if e.key in sources]:
                col.used.remove(e)
                if not e.note.startswith("("):
                    t, _, n = e.note.rpartition(".")
                    (col.extra.get(t, {}) if t else col.train).pop(n, None)
            for key in sources:
                col.ignore(key, values.get(name), f"not valid in a project: {problem.message}")
            values.pop(name, None)
        for name in values:
            values[name] = getattr(built, name)

    def current(e: Entry) -> Any:
        if e.note.startswith("("):
            return e.value
        table, _, name = e.note.rpartition(".")
        return (col.extra[table] if table else col.train)[name]

    col.used = [e._replace(value=current(e)) for e in col.used]
