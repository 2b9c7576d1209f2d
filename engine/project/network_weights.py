"""``[train] network_weights``: the LoRA file a side starts from instead of a fresh LoRA.

kohya's ``--network_weights`` builds the network from ``network_dim``/``network_alpha`` and then
loads the file into it non-strictly (sd-scripts' ``load_state_dict(..., False)``): modules the file
lacks stay freshly initialised, modules the network lacks are dropped, a different rank fails deep
in torch, and the file's alpha is loaded but not used (its own "FIXME consider alpha"). Here the
file must hold exactly the modules and ranks the project trains, said at ``check`` from the file's
header (no tensors read) and, module by module, when training starts; a different alpha is folded
into the weights so that training starts from exactly the file's LoRA (engine.train.start_weights).
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.errors import Problem

_DOWN = (".lora_down.weight", ".lora_A.weight")  # kohya's and PEFT's first factor: [rank, in(, k, k)]
_TEXT = ("lora_te", "text_encoder")


def network_weights_path(project, side: str) -> Path | None:
    """The file ``side`` starts from (relative paths from the project folder), or None: a fresh LoRA."""
    name = project.side_params(side).network_weights
    if not name:
        return None
    path = Path(name).expanduser()
    return path if path.is_absolute() else project.root / path


def network_weights_problems(project) -> list[Problem]:
    """What makes a side's network_weights unusable, read from the file's header: missing,
    not a LoRA, or other modules or ranks than the side trains (each with the key to change)."""
    problems: list[Problem] = []
    for side in ("a", "b"):
        path = network_weights_path(project, side)
        if path is None:
            continue
        where = f"{side}.network_weights" if "network_weights" in project.side(side).overrides else "train.network_weights"
        for message in _file_problems(path, project.side_params(side)):
            problems.append(Problem(where, message))
    return problems


def _file_problems(path: Path, params) -> list[str]:
    from engine.formats.safetensors_header import HeaderError, read_header

    try:
        if not path.is_file():
            return [f"no such LoRA file: {path}"]
    except OSError as exc:  # a name longer than the filesystem allows, a folder this user cannot list
        from engine.errors import os_error_text

        return [os_error_text(exc)]
    if path.suffix.lower() != ".safetensors":
        return []  # a plain-tensor .pt/.ckpt is read (and checked) when training starts
    try:
        shapes = read_header(path).shapes()
    except HeaderError as exc:
        return [f"{path}: {exc}"]
    downs = {key: shape for key, shape in shapes.items() if key.endswith(_DOWN)}
    if not downs:
        return [f"{path}: holds no LoRA modules (lora_down/lora_up weights)"]
    extra = _untrainable(downs)
    if extra:  # conv_in is 3x3, but no conv_dim makes a training adapt it: "set conv_dim" led to the next refusal
        shown = ", ".join(sorted(extra)[:3]) + (" ..." if len(extra) > 3 else "")
        return [f"{path.name} adapts layers no training here adapts ({shown}: LyCORIS' full preset, ComfyUI's extraction): "
                "a project cannot start from it (merges, previews and bakes take it)"]
    linear = {shape[0] for shape in downs.values() if len(shape) != 4 or shape[2:] == (1, 1)}
    conv = {shape[0] for shape in downs.values() if len(shape) == 4 and shape[2:] != (1, 1)}
    text = any(key.startswith(_TEXT) for key in downs)
    name, out = path.name, []
    if linear and linear != {params.network_dim}:
        out.append(f"{name} has rank {_ranks(linear)} modules, but network_dim = {params.network_dim}: set network_dim = {min(linear)}"
                   if len(linear) == 1 else f"{name} has modules of ranks {_ranks(linear)}: one network_dim cannot start from it")
    if conv and params.conv_dim == 0:
        out.append(f"{name} has 3x3 conv modules (LoCon, rank {_ranks(conv)}), but conv_dim = 0: set conv_dim = {min(conv)}")
    elif conv and conv != {params.conv_dim}:
        out.append(f"{name} has 3x3 conv modules of rank {_ranks(conv)}, but conv_dim = {params.conv_dim}")
    elif not conv and params.conv_dim:
        out.append(f"{name} has no 3x3 conv modules, but conv_dim = {params.conv_dim}: set conv_dim = 0")
    if text and params.network_train_unet_only:
        out.append(f"{name} has text-encoder modules, but network_train_unet_only = true: set it to false")
    elif not text and not params.network_train_unet_only:
        out.append(f"{name} has no text-encoder modules, but network_train_unet_only = false: set it to true")
    return out


# Layers kohya's trainer (and so copylora's) never adapts, in every layout a file may name them
# (kohya's diffusers or SGM names, ComfyUI's and PEFT's keys). Read here from the names alone:
# engine.project sits below engine.lora, which renames them.
_UNTRAINABLE = re.compile(r"^(lora_unet_|diffusion_model\.|model\.diffusion_model\.|unet\.)"
                          r"(conv_in$|conv_out$|time_embedding[._]|add_embedding[._]|input_blocks[._]0[._]0$|time_embed[._]|label_emb[._]|out[._]\d)")


def _untrainable(downs: dict) -> set[str]:
    modules = [next(key[: -len(suffix)] for suffix in _DOWN if key.endswith(suffix)) for key in downs]
    return {name for name in modules if _UNTRAINABLE.match(name)}


def _ranks(ranks: set[int]) -> str:
    return "/".join(str(r) for r in sorted(ranks))
