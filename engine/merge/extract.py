"""Extract a LoRA from the difference of two checkpoints (kohya's ``extract_lora_from_models.py``).

Bake-and-extract, a third way to the copy-machine LoRA (equal to the SVD route): bake LoRA A and LoRA B into the base
(:mod:`engine.merge.bake`), then extract ``tuned − org`` = (W+ΔB) − (W+ΔA) here. For every LoRA
target module (the same modules training targets: transformer blocks and CLIP attention/MLP;
with ``conv_dim`` also ResNet convs and samplers, as kohya's ``create_network``):

* ``diff = W_tuned − W_org`` in fp32; a k×k conv is the (out, in·k·k) matrix, a 1×1 conv
  (out, in); modules whose diff is exactly zero are skipped (no tensor of the LoRA would be
  anything but zero; baking copies untouched tensors bit for bit, so they are exactly equal);
* truncated SVD to ``dim`` (``conv_dim`` for k×k convs), capped at the matrix's smaller side;
* the factors are written with one alpha (= ``dim``) for every module and each module's
  scale folded into its factors (√S on each side), as :mod:`engine.merge.svd` does.

kohya's ``--min_diff`` (default 0.01 there) is accepted with kohya's meaning: if no
text-encoder weight differs by more than it (max |diff| over all text-encoder modules), the
text encoder is left out entirely. It exists because two separately converted fp16 text
encoders differ by rounding noise; here it is **off by default** (``None``): the copy-machine
deltas of a text encoder are small (max |Δ| is often below 0.01) but real, and dropping them
would make bake-and-extract disagree with the merge. Likewise kohya's 0.99-quantile clamp of the
factors is an option (``clamp_quantile``), not the default.

SVD: matrices whose smaller side is at most :data:`DENSE_MAX_DIM` get a dense
``torch.linalg.svd`` (exact and cheap at that size). Larger ones get a randomized SVD
(``torch.svd_lowrank``, rank + oversampling columns, :data:`POWER_ITERS` power iterations,
fixed seed), kept only when it is certainly accurate: its truncation error is below
``1e-3`` of ‖diff‖ (then nothing can do meaningfully better), or the spectrum it found has
fallen by 10× between the kept rank and the last oversampled value (power iterations then
make the subspace near-optimal). Otherwise the module falls back to a dense SVD.

The recorded ``rel_error`` is the relative Frobenius error of the factors written (before
the save precision). Dense: ``sqrt(Σ dropped σ²)/sqrt(Σ σ²)``. Randomized: the kept part
``U_k S_k V_kᵀ = U_k U_kᵀ·diff`` is an orthogonal projection of diff, so its error is
exactly ``sqrt(‖diff‖² − Σ kept σ̃²)`` with σ̃ the randomized estimates; that difference
cancels to noise in fp32 once the error is below ~3e-4, so it is computed directly as
``‖diff − U_k S_k V_kᵀ‖_F`` (one m·n·k product). ``energy_kept`` = 1 − rel_error².
``singular_values`` of a randomized module are its ``rank + oversampling`` estimates.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from engine.devices import resolve_device
from engine.errors import InputError, Problem, ValidationError
from engine.formats.model_files import BUILTIN_MODELS

if TYPE_CHECKING:
    from torch import Tensor

DENSE_MAX_DIM = 512  # min(m, n) up to this: dense SVD
OVERSAMPLE = 10  # extra columns of the randomized range finder (at least; k/2 for large k)
POWER_ITERS = 4  # subspace (power) iterations of the randomized SVD
CERTAIN_ERROR = 1e-3  # randomized result kept when its relative error is below this ...
CERTAIN_DECAY = 0.1  # ... or when σ_q / σ_k (estimated) is below this
SVD_METHODS = ("auto", "dense", "randomized")


class ExtractError(InputError):
    """The extraction could not be done (models that do not match, nothing to extract...)."""


@dataclass
class TruncatedResult:
    u: Tensor  # (m, k)
    s: Tensor  # (k,)
    v: Tensor  # (n, k)
    singular_values: list[float]  # all (dense) or the estimates (randomized), descending
    rel_error: float  # ‖diff − U S Vᵀ‖_F / ‖diff‖_F
    energy_kept: float
    method: str  # "dense", "randomized", "dense (randomized not certain)"


@dataclass
class ExtractResult:
    path: Path
    stats_path: Path
    modules: dict  # name -> LoRAWeights (fp32, before the save precision)
    stats: list  # ModuleStats
    svd_methods: dict[str, str]
    family: str
    metadata: dict[str, str]
    skipped: list[str] = field(default_factory=list)  # target modules whose diff is exactly zero
    text_encoder_dropped: bool = False  # by min_diff
    seconds: float = 0.0


def truncated_svd(mat, rank: int, method: str = "auto") -> TruncatedResult:
    """Best rank-``rank`` factors of a 2-D matrix: dense, or randomized where certainly accurate."""
    import torch

    m, n = mat.shape
    small = min(m, n)
    k = max(1, min(rank, small))
    q = min(k + max(OVERSAMPLE, k // 2), small)
    norm2 = float(mat.double().pow(2).sum())
    if method == "dense" or q >= small or (method == "auto" and small <= DENSE_MAX_DIM):
        return _dense(mat, k, norm2, "dense")
    devices = [mat.device] if mat.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(mat, q=q, niter=POWER_ITERS)
    u, s, v = u[:, :k], s, v[:, :k]
    # The error of the kept factors, measured directly: ‖diff‖² − Σσ_kept² would be the same
    # number in exact arithmetic, but in fp32 it cancels to noise once the error is below ~3e-4.
    residual2 = float((mat - (u * s[:k]) @ v.T).double().pow(2).sum())
    rel = (residual2 / norm2) ** 0.5 if norm2 > 0 else 0.0
    decay = float(s[q - 1] / s[k - 1]) if float(s[k - 1]) > 0 else 0.0
    if method == "randomized" or rel <= CERTAIN_ERROR or decay <= CERTAIN_DECAY:
        return TruncatedResult(u, s[:k], v, [float(x) for x in s], rel, 1.0 - rel * rel, "randomized")
    return _dense(mat, k, norm2, "dense (randomized not certain)")


def _dense(mat, k: int, norm2: float, label: str) -> TruncatedResult:
    import torch

    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    # Σ of the dropped σ² (all known here): accurate even when the error is tiny.
    all2 = float(s.double().pow(2).sum())
    tail2 = float(s[k:].double().pow(2).sum())
    rel = (tail2 / all2) ** 0.5 if all2 > 0 else 0.0
    return TruncatedResult(u[:, :k], s[:k], vh[:k].T, [float(x) for x in s], rel, 1.0 - rel * rel, label)


def _kohya_clamp(up, down, quantile: float):
    """kohya's extract clamp: both factors (S folded into up) to ±(the q-quantile of their signed values)."""
    import torch

    values = torch.cat([up.flatten(), down.flatten()]).float()
    if values.numel() > 16_000_000:  # torch.quantile's input limit: a fixed random subsample
        values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:16_000_000].to(values.device)]
    limit = torch.quantile(values, quantile)
    return up.clamp(-limit, limit), down.clamp(-limit, limit)


def _validate(dim, conv_dim, save_to: Path, device: str, save_precision: str, clamp_quantile, min_diff, svd) -> None:
    from engine.lora.weights import SAVE_DTYPES

    problems = []
    if not isinstance(dim, int) or dim <= 0:
        problems.append(Problem("dim", f"must be a whole number greater than 0, got {dim!r}"))
    if conv_dim is not None and (not isinstance(conv_dim, int) or conv_dim <= 0):
        problems.append(Problem("conv_dim", f"must be a whole number greater than 0, got {conv_dim!r}"))
    if save_to.suffix.lower() != ".safetensors":
        problems.append(Problem("save_to", f"must end in .safetensors, got {save_to.name}"))
    if save_precision not in SAVE_DTYPES:
        problems.append(Problem("save_precision", f"unknown precision {save_precision!r}; use float, fp16 or bf16"))
    if clamp_quantile is not None and not 0 < clamp_quantile <= 1:
        problems.append(Problem("clamp_quantile", f"must be in (0, 1], got {clamp_quantile}"))
    if min_diff is not None and min_diff < 0:
        problems.append(Problem("min_diff", f"must be 0 or more, got {min_diff}"))
    if svd not in SVD_METHODS:
        problems.append(Problem("svd", f"must be one of {', '.join(SVD_METHODS)}, got {svd!r}"))
    if not (device in ("cpu", "auto") or device.startswith("cuda")):
        problems.append(Problem("device", f"use cpu, cuda, cuda:N or auto, got {device!r}"))
    if problems:
        raise ValidationError(problems)


def extract_lora(
    model_org: str,
    model_tuned: str,
    *,
    dim: int,
    conv_dim: int | None = None,
    save_to: str | os.PathLike,
    device: str = "cpu",
    save_precision: str = "fp16",
    clamp_quantile: float | None = None,
    min_diff: float | None = None,
    family: str = "auto",
    config_dir: str | os.PathLike | None = None,
    svd: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
) -> ExtractResult:
    """Write the LoRA ``model_tuned − model_org`` at rank ``dim`` to ``save_to`` and its ``.stats.json``.

    Models are anything :func:`engine.models.loading.load_base_model` loads (``tiny``, a diffusers
    folder, a single file; ``family``/``config_dir`` are passed on). ``conv_dim`` also
    extracts ResNet/sampler convs (k×k at that rank). ``svd``: "auto" (see the module doc),
    "dense" or "randomized" (forced, no fallback). Raises :class:`ValidationError` for bad
    arguments, :class:`ModelError` for unloadable models, :class:`ExtractError` for models
    that do not match or do not differ; nothing is written then.
    """
    import torch

    from engine.lora.files import save_lora_file
    from engine.lora.names import find_targets
    from engine.lora.weights import LoRAWeights
    from engine.merge.stats import ModuleStats, block_of, kind_of
    from engine.models.loading import load_base_model

    started = time.perf_counter()
    save_to = Path(save_to).expanduser()
    _validate(dim, conv_dim, save_to, device, save_precision, clamp_quantile, min_diff, svd)
    device = resolve_device(device, error=ExtractError)

    # the difference of two v-prediction (or EDM) models is a LoRA for them like any other
    org = load_base_model(model_org, family, config_dir=config_dir, epsilon_only=False)
    tuned = load_base_model(model_tuned, family, config_dir=config_dir, epsilon_only=False)
    if org.family != tuned.family:
        raise ExtractError(f"the models are of different families: {model_org} is {org.family}, {model_tuned} is {tuned.family}")
    with_conv = conv_dim is not None
    targets_o = find_targets(org.unet, org.text_encoders, org.family, with_conv)
    targets_t = {t.name: t for t in find_targets(tuned.unet, tuned.text_encoders, tuned.family, with_conv)}
    differ = [
        t.name for t in targets_o
        if t.name not in targets_t or targets_t[t.name].module.weight.shape != t.module.weight.shape
    ] + sorted(set(targets_t) - {t.name for t in targets_o})
    if differ:
        raise ExtractError(
            f"the models do not have the same architecture: {len(differ)} LoRA target module(s) are missing or "
            f"differ in shape, e.g. {', '.join(differ[:4])}"
        )

    text_dropped = False
    if min_diff is not None:
        largest = 0.0
        for t in targets_o:
            if t.is_text:
                diff = targets_t[t.name].module.weight.detach().float() - t.module.weight.detach().float()
                largest = max(largest, float(diff.abs().max()))
        if largest <= min_diff and any(t.is_text for t in targets_o):
            text_dropped = True
            targets_o = [t for t in targets_o if not t.is_text]

    alpha = float(dim)
    modules: dict[str, LoRAWeights] = {}
    stats: list[ModuleStats] = []
    methods: dict[str, str] = {}
    skipped: list[str] = []
    with torch.no_grad():
        for index, target in enumerate(targets_o):
            w_org = target.module.weight.detach()
            diff = targets_t[target.name].module.weight.detach().float() - w_org.float()
            if progress is not None:
                progress(index + 1, len(targets_o), target.name)
            if not bool(diff.any()):
                skipped.append(target.name)
                continue
            if not bool(torch.isfinite(diff).all()):  # the SVD would fail with LAPACK's words, naming nothing
                raise ExtractError(f"{target.name}: the weights of model_org or model_tuned hold NaN or infinite values there; "
                                   "nothing can be extracted from a broken model")
            out_f = diff.shape[0]
            kernel = diff.shape[-1] if diff.dim() == 4 else 1
            in_f = diff.shape[1]
            mat = diff.reshape(out_f, -1).to(device)
            rank = conv_dim if (target.uses_conv_rank and conv_dim is not None) else dim
            svd_result = truncated_svd(mat, rank, svd)
            k = svd_result.s.numel()
            if clamp_quantile is None:
                from engine.merge.low_rank import TruncatedSVD, split_factors

                up, down = split_factors(TruncatedSVD(svd_result.u, svd_result.s, svd_result.v, svd_result.s), alpha / k)
            else:  # kohya's factors (S in up), clamped, then our alpha folded into up
                up, down = _kohya_clamp(svd_result.u * svd_result.s.unsqueeze(0), svd_result.v.T, clamp_quantile)
                up = up * (k / alpha)
            if diff.dim() == 4:
                down = down.reshape(k, in_f, kernel, kernel)
                up = up.reshape(out_f, k, 1, 1)
            weights = LoRAWeights(down.float().cpu().contiguous(), up.float().cpu().contiguous(), alpha)
            modules[target.name] = weights
            methods[target.name] = svd_result.method
            diff_norm = float(mat.double().norm())
            stats.append(
                ModuleStats(
                    name=target.name,
                    block=block_of(target.name),
                    kind=kind_of(weights, kernel),
                    shape=[out_f, in_f, kernel] if kernel > 1 else [out_f, in_f],
                    input_ranks=[],
                    kept_rank=k,
                    singular_values=svd_result.singular_values[:64],
                    energy_kept=svd_result.energy_kept,
                    rel_error=svd_result.rel_error,
                    input_norms=[diff_norm],
                    result_norm=float(svd_result.s.double().pow(2).sum()) ** 0.5,
                    cos_inputs=None,
                )
            )
    if not modules:
        raise ExtractError(
            f"{model_tuned} and {model_org} are identical in every LoRA target module"
            + (" (the text encoder was left out by min_diff)" if text_dropped else "")
            + ": nothing to extract"
        )

    org_name, tuned_name = _display(model_org), _display(model_tuned)
    inputs = [{"file": f"{tuned_name} − {org_name}", "ratio": 1.0, "model_org": org_name, "model_tuned": tuned_name}]
    metadata = _metadata(org.family, org_name, tuned_name, dim, conv_dim, alpha, clamp_quantile, min_diff, svd, modules, save_to)
    path = save_lora_file(save_to, modules, metadata, save_precision)
    seconds = time.perf_counter() - started
    stats_path = _save_stats(save_to, org.family, inputs, seconds, stats, methods, skipped, text_dropped, min_diff)
    return ExtractResult(path, stats_path, modules, stats, methods, org.family, metadata, skipped, text_dropped, seconds)


def _display(spec: str) -> str:
    return spec if spec in BUILTIN_MODELS else Path(spec).name


def _metadata(family, org_name, tuned_name, dim, conv_dim, alpha, clamp_quantile, min_diff, svd, modules, save_to) -> dict[str, str]:
    from engine.lora.metadata import computed_lora_metadata

    record = {"model_org": org_name, "model_tuned": tuned_name, "dim": dim, "conv_dim": conv_dim, "clamp_quantile": clamp_quantile,
              "min_diff": min_diff, "svd": svd,
              "method": "truncated SVD of W_tuned − W_org per module (dense, or randomized where certainly accurate)"}
    return computed_lora_metadata(modules, family, dim=dim, conv_dim=conv_dim, alpha=alpha, record_key="copylora_extract", record=record,
                                  model_name=org_name, title=save_to.stem, description=f"extracted: {tuned_name} − {org_name}")


def _save_stats(save_to: Path, family, inputs, seconds, stats, methods, skipped, text_dropped, min_diff) -> Path:
    from engine.files import atomic_write
    from engine.merge.stats import summarise_blocks

    stats_path = save_to.with_name(save_to.stem + ".stats.json")
    document = {
        "file": save_to.name,
        "family": family,
        "kind": "extract",
        "inputs": inputs,
        "seconds": seconds,
        "modules": [{**asdict(s), "svd": methods[s.name]} for s in stats],
        "blocks": summarise_blocks(stats),
        "skipped_identical": skipped,
        "text_encoder_dropped": text_dropped,
        "min_diff": min_diff,
        "error_note": (
            "rel_error = ‖diff − kept‖_F/‖diff‖_F of the factors written (before the save precision): "
            "'dense' modules from the dropped singular values, 'randomized' ones measured directly "
            "(= sqrt(‖diff‖² − Σ kept σ̃²) with the randomized estimates σ̃, computed without cancellation); "
            "singular_values of randomized modules are estimates"
        ),
    }
    atomic_write(stats_path, lambda tmp: tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False)))
    return stats_path
