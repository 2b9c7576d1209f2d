"""Starting a side's LoRA from a file (``[train] network_weights``, kohya's ``--network_weights``).

The network is built as the project says (rank, alpha, modules), then every module takes the
file's weights. The module sets must be equal and the shapes too (kohya silently keeps fresh
modules where the file has none; a LoRA half trained, half new is not what anyone asked for).
An alpha that differs from the project's is folded into ``up`` (``up * file alpha / alpha``), so
the network computes exactly the file's LoRA at step 0 and trains on at the project's alpha,
the update scale kohya trains at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from engine.errors import LoRAFileError


class StartWeightsError(LoRAFileError):
    """The file does not fit the project: an input to fix (the CLI exits 2, as for any unusable LoRA file)."""


def load_start_weights(network, path: Path, side: str, log: Callable[[str], None]) -> None:
    """Copy the LoRA file at ``path`` into ``network`` (a LoRANetwork as the project builds it)."""
    import torch

    from engine.lora.files import load_lora_file, require_finite

    where = f"side {side.upper()}'s network_weights {path}"
    try:
        modules = load_lora_file(path, family=getattr(network, "family", None)).modules
        require_finite(path, modules, "trained on from")
    except LoRAFileError as exc:
        raise StartWeightsError(f"{where}: {exc}") from None
    mine = {lora.name: lora for lora in network.loras()}
    missing, extra = sorted(set(mine) - set(modules)), sorted(set(modules) - set(mine))
    if missing or extra:
        parts = [f"{len(missing)} module(s) this project trains are not in it ({_some(missing)})" if missing else "",
                 f"{len(extra)} module(s) in it are not trained by this project ({_some(extra)})" if extra else ""]
        raise StartWeightsError(f"{where} does not fit the LoRA this project trains: {'; '.join(p for p in parts if p)} "
                                "(check conv_dim, network_train_unet_only and the base model's family)")
    from engine.lora.network import fitted_factor

    folded = set()
    with torch.no_grad():
        for name, w in modules.items():
            lora = mine[name]
            # Linear factors on a 1x1 conv (and the other way) fit, as sample and bake take them
            down, up = fitted_factor(w.down, lora.lora_down.weight.shape), fitted_factor(w.up, lora.lora_up.weight.shape)
            if down is None or up is None:
                if w.down.shape[0] != lora.rank:
                    raise StartWeightsError(f"{where}: module {name} has rank {w.down.shape[0]}, this project trains it at rank "
                                            f"{lora.rank} (network_dim / conv_dim)")
                raise StartWeightsError(f"{where}: module {name} has shapes {tuple(w.down.shape)}/{tuple(w.up.shape)}, which do not "
                                        f"fit this model's {tuple(lora.lora_down.weight.shape)}/{tuple(lora.lora_up.weight.shape)} "
                                        "(a LoRA for another model?)")
            alpha = float(lora.alpha)
            lora.lora_down.weight.copy_(down.float())
            lora.lora_up.weight.copy_(up.double().mul(w.alpha / alpha).float() if w.alpha != alpha else up.float())
            if w.alpha != alpha:
                folded.add(f"{w.alpha:g}")
    note = f"; its alpha {'/'.join(sorted(folded))} is folded into the weights (the project's alpha trains on)" if folded else ""
    log(f"{side.upper()} starts from {path.name} ({len(modules)} modules){note}")


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
