"""SVD difference merge of LoRA files: +1·B − 1·A (or any ratios) into a new-rank LoRA.

For each module the merged delta is Σ ratio_i · (alpha_i/r_i) · up_i @ down_i over the inputs
that have it (a module present in one input only counts once). Its best rank-k approximation
comes from :func:`engine.merge.low_rank.low_rank_svd` — exact, and never building the dense
matrix. k×k convs are (out, in·k·k) matrices; 1×1 convs keep their 4-D shape on save.

``lbws`` (optional, one LoRA Block Weight vector per input, as sd-scripts' ``--lbws``) scales
each input's delta per block before the merge: Σ ratio_i · lbw_i(block) · ΔW_i.

The output file has one alpha (= ``new_rank``) for every module; a module kept at a lower
rank (capped by its shape or its inputs' total rank) has its scale folded into its factors,
so diffusers, which mis-scales files whose alphas differ, reads it exactly.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from engine.devices import resolve_device
from engine.errors import InputError, Problem, ValidationError
from engine.hashing import file_sha256 as sha256_file
from engine.merge.low_rank import LowRankTerm, TruncatedSVD
from engine.merge.stats import ModuleStats, block_of, kind_of, summarise_blocks


class MergeError(InputError):
    pass


@dataclass
class MergeResult:
    modules: dict  # name -> LoRAWeights (down, up, alpha), fp32 on CPU
    stats: list[ModuleStats]
    family: str
    metadata: dict[str, str]
    seconds: float
    inputs: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said once to the user: ranks capped, module sets differ
    rank: int = 0  # the ranks actually written (new_rank capped by what the inputs hold)
    conv_rank: int | None = None
    device: str = "cpu"  # where the arithmetic ran


def family_of(lora) -> str:
    """SD family from the file's metadata, else from its key names."""
    version = lora.metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):  # kohya has one version for SDXL: a v-prediction LoRA says so in modelspec
        return "sdxl-v" if lora.metadata.get("modelspec.prediction_type") == "v" else "sdxl"
    if version.startswith("sd_v2"):
        return "sd2-v" if version.endswith("_v") else "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    if lora.metadata.get("ss_v2") == "True":  # kohya's files before ss_base_model_version (kohya's merge keeps it so)
        return "sd2-v" if lora.metadata.get("modelspec.prediction_type") == "v" else "sd2"
    from engine.lora.names import is_sdxl_file, sd2_evidence

    if is_sdxl_file(lora.modules.keys(), lora.metadata):
        return "sdxl"
    return "sd2" if sd2_evidence({name: w.down.shape for name, w in lora.modules.items()}) else "sd1"


def _says_family(metadata) -> bool:
    return bool(metadata.get("ss_base_model_version") or metadata.get("ss_v2") == "True")


def same_architecture(families) -> bool:
    """Whether these families' LoRAs fit one model: SD2's v-prediction and epsilon models share
    their layers (a file without metadata can only say "sd2", its widths)."""
    return len({family.split("-")[0] for family in families}) <= 1


def _matrix_shape(w) -> tuple[int, int, int]:
    """(out, in, kernel) of a module's delta from its LoRA factors."""
    kernel = w.down.shape[-1] if w.down.dim() == 4 else 1
    in_features = w.down.shape[1]
    return (w.up.shape[0], in_features, kernel)


def check_compatible(loras: list, paths: list[Path]) -> None:
    """Same-named modules must have the same delta shape in every input."""
    conflicts = []
    for name in sorted(set().union(*(lora.modules.keys() for lora in loras))):
        shapes = {(i, _matrix_shape(lora.modules[name])) for i, lora in enumerate(loras) if name in lora.modules}
        if len({shape for _, shape in shapes}) > 1:
            described = ", ".join(f"{paths[i].name}: {'x'.join(map(str, s))}" for i, s in sorted(shapes))
            conflicts.append(f"{name} ({described})")
    if conflicts:
        shown = "; ".join(conflicts[:3]) + (f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else "")
        raise MergeError(
            f"the inputs are LoRAs for different base models: {len(conflicts)} module(s) differ in shape, e.g. {shown}"
        )
    if not same_architecture(family_of(lora) for lora in loras):
        which = ", ".join(f"{path.name}: {family_of(lora)}" for path, lora in zip(paths, loras))
        raise MergeError(f"the inputs are LoRAs for different model families ({which})")


def _as_conv(name: str, weights: list, family: str) -> bool:
    """Whether a kernel-1 module's merged factors are written 4-D (a 1x1 conv's layout). Where
    the inputs agree, as they are; where one file has Linear factors on it (A1111 and ComfyUI
    reshape them, and so do we on reading) and another conv factors, as kohya's own module is,
    since its loader takes no other shape: SD1's transformer proj_in/proj_out are 1x1 convs,
    SD2's and SDXL's Linear; every other kernel-1 module with conv factors is a conv (a
    ResNet's conv_shortcut). It was the first input's: put first, a Linear-factored file made
    a merge kohya could not load."""
    layouts = {w.down.dim() == 4 for w in weights}
    if len(layouts) == 1:
        return layouts.pop()
    return family == "sd1" or not name.endswith(("_proj_in", "_proj_out"))


def _clamp(up, down, quantile: float):
    """kohya's svd_merge_lora clamp, reproduced as it is: the q-quantile of the *signed* values
    of both factors (S folded into up) becomes the limit of both ends, ±limit."""
    import torch

    values = torch.cat([up.flatten(), down.flatten()])
    if values.numel() > 16_000_000:  # torch.quantile's input limit; subsample like a histogram
        values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:16_000_000]]
    limit = torch.quantile(values.float(), quantile)
    return up.clamp(-limit, limit), down.clamp(-limit, limit)


def _check_scales(names: list[str], loras: list, paths: list[Path], ratios: list[float], block_weights: list) -> None:
    """Every module's up factor times its ratio (with its block weight) and alpha/rank must stay
    within float32, where the merged factors are kept, and so must its change (scale·up@down,
    bounded by scale·‖up‖·‖down‖: the SVD's products; ratio 1e39 on factors of 0.05 passed the
    first test and failed inside the SVD as an internal error); checked for all modules before
    the first SVD, so a ratio too large is an input to fix (exit 2), found before any work."""
    import torch

    limit = float(torch.finfo(torch.float32).max)
    for name in names:
        for path, lora, ratio, weight_of in zip(paths, loras, ratios, block_weights):
            if name not in lora.modules:
                continue
            w = lora.modules[name]
            up, down = w.up.double(), w.down.double()
            peak = float(up.abs().max())
            change = float(torch.linalg.vector_norm(up)) * float(torch.linalg.vector_norm(down))
            scale = w.alpha / w.rank * ratio
            if not (peak * abs(scale) <= limit and change * abs(scale) <= limit):  # also catches inf and NaN
                raise ValidationError([Problem("ratios", f"{path.name}: module {name} times its ratio and alpha/rank "
                                                         f"({scale:g}) overflows float32; use a smaller ratio")])
            weighted = scale * weight_of(name)
            if not (peak * abs(weighted) <= limit and change * abs(weighted) <= limit):  # the block weight went past it
                raise ValidationError([Problem("lbws", f"{path.name}: module {name} times its block weight ({weight_of(name):g}), "
                                                       f"ratio and alpha/rank ({weighted:g}) overflows float32; use a smaller block weight")])


def merge_loras(
    given: Sequence[Path | str],
    ratios: list[float],
    *,
    new_rank: int,
    new_conv_rank: int | None = None,
    device: str = "cpu",
    precision: str = "float",
    clamp_quantile: float | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    lbws: list | None = None,
) -> MergeResult:
    """``lbws``: None, or one block-weight vector per path (a JSON list string or a list of
    12/17/20/26 numbers; None for an input left unscaled), see :mod:`engine.lora.block_weights`."""
    import torch

    from engine.lora.files import load_lora_file, require_finite
    from engine.lora.weights import LoRAWeights
    from engine.merge.low_rank import inner, low_rank_svd

    started = time.perf_counter()
    paths = [Path(p) for p in given]
    if len(paths) != len(ratios):
        raise MergeError(f"{len(paths)} model(s) but {len(ratios)} ratio(s): give one ratio per model")
    if lbws is not None and len(lbws) != len(paths):
        raise MergeError(f"{len(paths)} model(s) but {len(lbws)} block-weight vector(s) (lbws): give one per model")
    if not paths:
        raise MergeError("no input LoRAs")
    if new_rank <= 0 or (new_conv_rank is not None and new_conv_rank <= 0):
        raise MergeError("new_rank and new_conv_rank must be greater than 0")
    if clamp_quantile is not None and not 0 < clamp_quantile <= 1:
        raise MergeError(f"clamp_quantile must be in (0, 1], got {clamp_quantile}")
    device = resolve_device(device, error=MergeError)
    dtype = torch.float64 if precision in ("fp64", "double") else torch.float32
    conv_rank = new_conv_rank or new_rank
    asked = (new_rank, conv_rank)

    loras = [load_lora_file(p) for p in paths]
    for path, lora in zip(paths, loras):  # LoRAFileError, as sample and bake say it: the input to fix
        require_finite(path, lora.modules, "merged")
    check_compatible(loras, paths)
    said = [family_of(lora) for lora in loras if _says_family(lora.metadata)]
    family = said[0] if said else family_of(loras[0])  # an input that says "sd2-v" over one whose widths say "sd2"
    vectors, block_weights = _block_weights(lbws, family, len(loras))
    names = list(dict.fromkeys(name for lora in loras for name in lora.modules))
    _check_scales(names, loras, paths, ratios, block_weights)
    notes = module_set_notes(loras, paths) + unlisted_block_notes(vectors, loras, paths, family)
    new_rank, conv_rank, capped = _capped_ranks(loras, names, new_rank, conv_rank)
    notes += capped
    alpha_out = float(new_rank)
    merged: dict[str, LoRAWeights] = {}
    stats: list[ModuleStats] = []
    cancelled: list[str] = []
    for index, name in enumerate(names):
        # each input's ratio, times its block weight of this module (sd-scripts: scale *= lbw)
        present = [(lora.modules[name], ratio * weight_of(name)) for lora, ratio, weight_of in zip(loras, ratios, block_weights)
                   if name in lora.modules]
        first = present[0][0]
        out_f, in_f, kernel = _matrix_shape(first)
        raw_terms = [
            LowRankTerm(w.alpha / w.rank, w.up.reshape(out_f, w.rank).to(device), w.down.reshape(w.rank, -1).to(device))
            for w, _ in present
        ]
        terms = [LowRankTerm(t.weight * ratio, t.up, t.down) for t, (_, ratio) in zip(raw_terms, present)]
        rank = conv_rank if kernel > 1 else new_rank
        svd = low_rank_svd(terms, rank, dtype)
        norms = [max(inner([t], [t]), 0.0) ** 0.5 for t in raw_terms]
        if cancels(svd, [abs(ratio) * n for (_, ratio), n in zip(present, norms)], dtype):
            svd = TruncatedSVD(svd.u, torch.zeros_like(svd.s), svd.v, torch.zeros_like(svd.all_s))
            cancelled.append(name)
        k = svd.s.numel()
        if clamp_quantile is None:
            from engine.merge.low_rank import split_factors

            up, down = split_factors(svd, alpha_out / k)
        else:  # kohya's shape of the factors (S in up), clamped, then our alpha folded into up
            up, down = _clamp(svd.u * svd.s.unsqueeze(0), svd.v.T, clamp_quantile)
            up = up * (k / alpha_out)
        if kernel > 1:
            down = down.reshape(k, in_f, kernel, kernel)
            up = up.reshape(out_f, k, 1, 1)
        elif _as_conv(name, [w for w, _ in present], family):  # 1x1 conv: keep the 4-D layout tools expect
            down = down.reshape(k, in_f, 1, 1)
            up = up.reshape(out_f, k, 1, 1)
        merged[name] = LoRAWeights(down.float().cpu().contiguous(), up.float().cpu().contiguous(), alpha_out)

        energy_all = float((svd.all_s.double() ** 2).sum())
        energy_kept = float((svd.s.double() ** 2).sum())
        cos = None
        if len(raw_terms) == 2 and norms[0] > 0 and norms[1] > 0:
            cos = inner([raw_terms[0]], [raw_terms[1]]) / (norms[0] * norms[1])
        # Per input file (0 where a file lacks the module), in the order the files were given.
        norm_iter = iter(norms)
        input_norms = [next(norm_iter) if name in lora.modules else 0.0 for lora in loras]
        input_ranks = [lora.modules[name].rank if name in lora.modules else 0 for lora in loras]
        stats.append(
            ModuleStats(
                name=name,
                block=block_of(name),
                kind=kind_of(first, kernel),
                shape=[out_f, in_f, kernel] if kernel > 1 else [out_f, in_f],
                input_ranks=input_ranks,
                kept_rank=k,
                singular_values=svd.all_s[:64].double().cpu().tolist(),
                energy_kept=energy_kept / energy_all if energy_all > 0 else 1.0,
                rel_error=((energy_all - energy_kept) / energy_all) ** 0.5 if energy_all > 0 else 0.0,
                input_norms=input_norms,
                result_norm=energy_kept**0.5,
                cos_inputs=cos,
            )
        )
        if progress is not None:
            progress(index + 1, len(names), name)

    notes += cancel_notes(cancelled, len(names))
    inputs = [
        {"file": p.name, "sha256": sha256_file(p), "ratio": r, "ranks": sorted({w.rank for w in lora.modules.values()}),
         "lbw": list(v) if v is not None else None}
        for p, r, lora, v in zip(paths, ratios, loras, vectors)
    ]
    seconds = time.perf_counter() - started
    metadata = _metadata(family, inputs, new_rank, conv_rank, alpha_out, precision, clamp_quantile, merged, asked,
                         [lora.metadata for lora in loras])
    has_conv = any(w.down.dim() == 4 and w.down.shape[-1] > 1 for w in merged.values())
    return MergeResult(merged, stats, family, metadata, seconds, inputs, notes, new_rank, conv_rank if has_conv else None, device)


# A module's merged change is zero when its largest singular value is at the arithmetic's
# rounding of its inputs: +1·B −1·A of one LoRA given twice came out as noise of ~1e-7 of the
# inputs, written as a rank-k LoRA with "energy kept 0.97" of that noise.
CANCEL_EPS_MULTIPLE = 64


def cancels(svd: TruncatedSVD, weighted_norms: list[float], dtype) -> bool:
    """Whether Σ ratio·ΔW is zero up to rounding: σ₁ ≤ 64 ε Σ‖ratio·ΔW_i‖ (ε of ``dtype``)."""
    import torch

    scale = sum(weighted_norms)
    top = float(svd.all_s[0]) if svd.all_s.numel() else 0.0
    return scale > 0 and top <= CANCEL_EPS_MULTIPLE * torch.finfo(dtype).eps * scale


def cancel_notes(cancelled: list[str], total: int) -> list[str]:
    if not cancelled:
        return []
    if len(cancelled) == total:
        return ["the inputs cancel in every module (their weighted sum is zero up to rounding): the merged LoRA changes "
                "nothing. The same LoRA given twice, or A and B trained on the same picture?"]
    shown = ", ".join(cancelled[:3]) + (", …" if len(cancelled) > 3 else "")
    return [f"{len(cancelled)} of {total} modules cancel (zero up to rounding), written as zeros: {shown}"]


def _block_weights(lbws: list | None, family: str, count: int) -> tuple[list, list[Callable[[str], float]]]:
    """(the parsed vectors, a module name -> weight function per input) for ``lbws``."""
    from engine.lora.block_weights import BlockWeightError, check_lbws, expand_lbw, module_weight

    if lbws is None:
        return [None] * count, [lambda name: 1.0] * count
    try:
        vectors = check_lbws(lbws, family)
    except BlockWeightError as exc:
        raise MergeError(str(exc)) from None
    def weight_of(expanded: dict[str, float]) -> Callable[[str], float]:
        return lambda name: module_weight(name, expanded, family)

    return list(vectors), [weight_of(expand_lbw(vector) if vector is not None else {}) for vector in vectors]


def unlisted_block_notes(vectors: list, loras: list, paths: list[Path], family: str) -> list[str]:
    """A line per input whose short block-weight vector (12, 17, 20 values) leaves blocks its
    modules are in at weight 1, as sd-scripts' svd_merge_lora does. The LoRA Block Weight
    extension, where most presets are copied from, gives those blocks 0: the same preset on a
    LoRA with conv layers (blocks of resnets only) would merge differently without a word."""
    from engine.lora.block_weights import BLOCK_LISTS, LENGTHS, block_sort_key, lbw_block, lbw_family

    notes = []
    longest = max(LENGTHS.get(lbw_family(family) or "sd", (26,)))
    for vector, lora, path in zip(vectors, loras, paths):
        if vector is None:
            continue
        blocks = {lbw_block(name, lbw_family(family)) for name in lora.modules}
        left = {block for block in blocks if block is not None} - set(BLOCK_LISTS[len(vector)])
        if left:
            shown = ", ".join(sorted(left, key=block_sort_key))
            advice = f"; give all {longest} values to set them" if len(vector) < longest else ""
            notes.append(f"{path.name}: its {len(vector)}-value block weights leave {shown} at 1, as sd-scripts does "
                         f"(the LoRA Block Weight extension gives them 0){advice}")
    return notes


def module_set_notes(loras: list, paths: list[Path]) -> list[str]:
    """A line per input that lacks modules another input has. kohya merges the union without
    a word; a module only one side trained is usually a sign of two different recipes
    (text encoder on one side only, conv rank on one side only)."""
    every = set().union(*(lora.modules.keys() for lora in loras))
    notes = []
    for lora, path in zip(loras, paths):
        missing = sorted(every - lora.modules.keys())
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            notes.append(f"{path.name} lacks {len(missing)} module(s) that another input has ({shown}); "
                         "they are merged as if its change there were zero")
    return notes


def _capped_ranks(loras: list, names: list[str], new_rank: int, conv_rank: int) -> tuple[int, int, list[str]]:
    """(rank, conv rank, notes): the asked ranks, lowered to the most any module can hold
    (min of its shape and the sum of its inputs' ranks), so the file's rank and its
    ss_network_dim say what is in it."""
    most = {False: 0, True: 0}  # conv3x3?
    for name in names:
        present = [lora.modules[name] for lora in loras if name in lora.modules]
        out_f, in_f, kernel = _matrix_shape(present[0])
        holds = min(out_f, in_f * kernel * kernel, sum(w.rank for w in present))
        most[kernel > 1] = max(most[kernel > 1], holds)
    notes = []
    rank = new_rank
    if most[False] and new_rank > most[False]:
        rank = most[False]
        notes.append(f"new_rank {new_rank} is more than the inputs hold: written at rank {rank} (the largest any module's difference has)")
    conv = conv_rank
    if most[True] and conv_rank > most[True]:
        conv = most[True]
        notes.append(f"new_conv_rank {conv_rank} is more than the inputs' 3x3 convs hold: written at rank {conv}")
    return rank, conv, notes


def _metadata(family, inputs, new_rank, conv_rank, alpha, precision, clamp_quantile, modules, asked, input_metadata) -> dict[str, str]:
    from engine.lora.metadata import computed_lora_metadata, trained_resolution

    record = {
        "inputs": inputs,
        # as asked (what `copylora run` compares with [merge]), and as written
        "new_rank": asked[0], "new_conv_rank": asked[1], "written_rank": new_rank, "written_conv_rank": conv_rank,
        "precision": precision, "clamp_quantile": clamp_quantile,
        "method": "exact low-rank SVD (QR of stacked factors + SVD of the core)",
    }
    # The resolution its inputs were trained at, not the family's default: a 64×64 toy LoRA is not a 512×512 one.
    return computed_lora_metadata(modules, family, dim=new_rank, conv_dim=conv_rank, alpha=alpha, record_key="copylora_merge", record=record,
                                  resolution=trained_resolution(input_metadata), merged_from=", ".join(i["file"] for i in inputs),
                                  title="copylora merge")


def save_merge(result: MergeResult, save_to: Path | str, save_precision: str = "fp16", extra: dict | None = None) -> tuple[Path, Path]:
    """Write the LoRA and ``<stem>.stats.json`` beside it (both atomically). ``extra``: more
    top-level keys of the stats document (a project's route, see engine.merge.project_result)."""
    from engine.files import atomic_write
    from engine.lora.files import save_lora_file

    save_to = Path(save_to)
    if save_to.suffix.lower() != ".safetensors":
        raise MergeError(f"save_to must end in .safetensors, got {save_to.name}")
    # Named as the file is, as kohya's svd_merge_lora titles its output: "copylora merge" on every
    # merged LoRA, and ss_output_name "None", were what a LoRA browser or a civitai upload showed.
    metadata = {**result.metadata, "modelspec.title": save_to.stem, "ss_output_name": save_to.stem}
    path = save_lora_file(save_to, result.modules, metadata, save_precision)
    stats_path = save_to.with_name(save_to.stem + ".stats.json")
    document = {
        "file": save_to.name,
        "family": result.family,
        "inputs": result.inputs,
        "seconds": result.seconds,
        "modules": [asdict(s) for s in result.stats],
        "blocks": summarise_blocks(result.stats),
        "lbw_blocks": summarise_blocks(result.stats, by="lbw_block"),
        **(extra or {}),
    }
    atomic_write(stats_path, lambda tmp: tmp.write_text(json.dumps(document, indent=1)))
    return path, stats_path
