"""The reference library of the merge benchmark (the tests import it; bench/merge_bench.py
times it): the full-size kohya module sets, a trained-like LoRA pair, the error of a merge
against the exact B − A computed from low-rank factors, and the two methods — ours, as
``copylora merge`` calls it, and kohya ``svd_merge_lora.py``'s dense method, written here as the
reference (:func:`merge_dense`).

Nothing heavy is imported at module level: a timed child process pays only for what it uses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

FAMILIES = {"sd15": "sd1", "sdxl": "sdxl"}
BASE_VERSIONS = {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}
KOHYA_CLAMP_QUANTILE = 0.99


# --------------------------------------------------------------------------- module set


@dataclass(frozen=True)
class ModuleShape:
    name: str
    out: int
    inp: int  # input features / channels
    kernel: int  # 1 for Linear and 1x1 conv
    conv: bool  # Conv2d (4-D factors) or Linear
    rank: int

    @property
    def kind(self) -> str:
        return f"conv{self.kernel}x{self.kernel}" if self.conv else "linear"

    @property
    def numel(self) -> int:
        return self.out * self.inp * self.kernel * self.kernel


def module_shapes(family: str, conv: bool, rank: int = 8, conv_rank: int = 8) -> list[ModuleShape]:
    """kohya's LoRA module set of the full-size model: names and shapes, no weights."""
    import torch

    from engine.lora.names import find_targets
    from engine.models.loading import build_empty

    family = FAMILIES.get(family, family)
    unet, encoders = build_empty(family)
    shapes = []
    for target in find_targets(unet, encoders, family, with_conv=conv):
        module = target.module
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0]
            shapes.append(ModuleShape(target.name, module.out_channels, module.in_channels, kernel, True,
                                      conv_rank if target.uses_conv_rank else rank))
        else:
            shapes.append(ModuleShape(target.name, module.out_features, module.in_features, 1, False, rank))
    return shapes


def select_modules(shapes: list[ModuleShape], limit: int | None = None, every: int | None = None) -> list[ModuleShape]:
    """A subset: ``every`` N-th module (in kohya's order), or the ``limit`` smallest modules with
    the kinds (linear, conv1x1, conv3x3) taken in turn so that each kind is in a small subset."""
    if every:
        shapes = shapes[::every]
    if limit:
        by_kind: dict[str, list[ModuleShape]] = {}
        for s in sorted(shapes, key=lambda s: (s.numel, s.name)):
            by_kind.setdefault(s.kind, []).append(s)
        queues = [by_kind[k] for k in sorted(by_kind)]
        picked: list[ModuleShape] = []
        while len(picked) < limit and any(queues):
            for queue in queues:
                if queue and len(picked) < limit:
                    picked.append(queue.pop(0))
        order = {s.name: i for i, s in enumerate(shapes)}
        shapes = sorted(picked, key=lambda s: order[s.name])
    return shapes


# --------------------------------------------------------------------------- a trained-like pair


def make_pair(shapes: list[ModuleShape], seed: int = 0, alpha: float = 1.0, shared: float = 0.9,
              up_scale: float = 0.02, decay: float = 0.75):
    """Two LoRAs ``({name: LoRAWeights}, {name: LoRAWeights})`` shaped like ``shapes``.

    down: kaiming-uniform scale (bound 1/sqrt(fan_in), kohya's init); up: small, non-zero, its
    columns scaled ``up_scale · decay**j`` so each module has a decaying spectrum. B shares most
    of A (copy-machine LoRAs of one picture): B's factors are ``shared`` · A's plus
    sqrt(1 − shared²) of an independent draw, so cos(ΔA, ΔB) ≈ shared² and B − A has full
    rank 16.
    """
    import torch

    from engine.lora.weights import LoRAWeights

    g = torch.Generator().manual_seed(seed)
    rest = (1.0 - shared * shared) ** 0.5
    a, b = {}, {}
    for s in shapes:
        fan_in = s.inp * s.kernel * s.kernel
        bound = fan_in**-0.5
        spectrum = up_scale * decay ** torch.arange(s.rank, dtype=torch.float32)

        def draw():
            down = (torch.rand(s.rank, fan_in, generator=g) * 2 - 1) * bound
            up = torch.randn(s.out, s.rank, generator=g) * spectrum
            return down, up

        down_a, up_a = draw()
        noise_down, noise_up = draw()
        down_b, up_b = shared * down_a + rest * noise_down, shared * up_a + rest * noise_up
        for store, down, up in ((a, down_a, up_a), (b, down_b, up_b)):
            if s.conv:
                down, up = down.reshape(s.rank, s.inp, s.kernel, s.kernel), up.reshape(s.out, s.rank, 1, 1)
            store[s.name] = LoRAWeights(down.contiguous(), up.contiguous(), alpha)
    return a, b


def write_pair(shapes: list[ModuleShape], folder: Path, family: str, seed: int = 0) -> tuple[Path, Path]:
    """``A.safetensors``, ``B.safetensors`` in fp16, with kohya's base-model metadata."""
    from engine.lora.files import save_lora_file

    family = FAMILIES.get(family, family)
    a, b = make_pair(shapes, seed)
    has_conv = any(s.kernel > 1 for s in shapes)
    meta = {
        "ss_base_model_version": BASE_VERSIONS[family],
        "ss_network_module": "networks.lora",
        "ss_network_dim": "8",
        "ss_network_alpha": "1.0",
        "ss_network_args": json.dumps({"conv_dim": "8", "conv_alpha": "1.0"}) if has_conv else "",
    }
    folder.mkdir(parents=True, exist_ok=True)
    return (save_lora_file(folder / "A.safetensors", a, meta, "fp16"),
            save_lora_file(folder / "B.safetensors", b, meta, "fp16"))


# --------------------------------------------------------------------------- error vs exact


def _flat(w):
    rank = w.down.shape[0]
    return w.up.reshape(w.up.shape[0], rank), w.down.reshape(rank, -1)


def _lowrank_norm_sq(terms) -> float:
    """‖Σ weight·up@down‖_F² in fp64 from the factors: ‖R_u R_dᵀ‖² of the stacked factors' QRs."""
    import torch

    ups = torch.cat([up.double() * weight for weight, up, _ in terms], dim=1)
    downs = torch.cat([down.double() for _, _, down in terms], dim=0)
    r_u = torch.linalg.qr(ups, mode="r").R
    r_d = torch.linalg.qr(downs.T, mode="r").R
    return float(torch.linalg.matrix_norm(r_u @ r_d.T) ** 2)


def rel_error(result: dict, inputs: list[tuple[dict, float]], per_module: bool = False):
    """sqrt(Σ‖result − Σ ratio·ΔW_i‖² / Σ‖Σ ratio·ΔW_i‖²) over every module, in fp64.

    ``result`` and each input are ``{name: LoRAWeights}``; a module the result lacks counts as
    zero. With ``per_module`` also ``{name: relative error of that module}``."""
    names = list(dict.fromkeys(n for modules, _ in inputs for n in modules))
    err_sq = ref_sq = 0.0
    modules = {}
    for name in names:
        exact = []
        for lora, ratio in inputs:
            if name in lora:
                w = lora[name]
                up, down = _flat(w)
                exact.append((ratio * w.alpha / w.rank, up, down))
        e_sq = _lowrank_norm_sq(exact)
        if name in result:
            w = result[name]
            up, down = _flat(w)
            d_sq = _lowrank_norm_sq([(w.alpha / w.rank, up, down)] + [(-s, u, d) for s, u, d in exact])
        else:
            d_sq = e_sq
        err_sq += d_sq
        ref_sq += e_sq
        modules[name] = (d_sq / e_sq) ** 0.5 if e_sq > 0 else 0.0
    total = (err_sq / ref_sq) ** 0.5 if ref_sq > 0 else 0.0
    return (total, modules) if per_module else total


def dense_rel_error(result: dict, inputs: list[tuple[dict, float]]) -> float:
    """The same figure from dense fp64 matrices (slow; the test oracle for :func:`rel_error`)."""
    import torch

    err_sq = ref_sq = 0.0
    for name in dict.fromkeys(n for modules, _ in inputs for n in modules):
        exact = sum(ratio * (w.alpha / w.rank) * (u.double() @ d.double())
                    for lora, ratio in inputs if name in lora for w in [lora[name]] for u, d in [_flat(lora[name])])
        approx = torch.zeros_like(exact)
        if name in result:
            w = result[name]
            u, d = _flat(w)
            approx = (w.alpha / w.rank) * (u.double() @ d.double())
        err_sq += float(((approx - exact) ** 2).sum())
        ref_sq += float((exact**2).sum())
    return (err_sq / ref_sq) ** 0.5


# --------------------------------------------------------------------------- the two methods


def merge_ours(paths, ratios, *, new_rank: int, new_conv_rank: int | None = None, device: str = "cpu", progress=None):
    """Our merge, exactly as ``copylora merge`` calls it: ``MergeResult``."""
    from engine.merge.svd import merge_loras

    return merge_loras(paths, ratios, new_rank=new_rank, new_conv_rank=new_conv_rank, device=device, progress=progress)


def merge_dense(paths, ratios, *, new_rank: int, new_conv_rank: int | None = None, device: str = "cpu",
                clamp_quantile: float | None = KOHYA_CLAMP_QUANTILE, full_matrices: bool = True,
                hold_all: bool = True, timings: dict | None = None) -> dict:
    """kohya ``svd_merge_lora.py``'s method, written here as the reference: ``{name: LoRAWeights}``.

    Every module's dense delta Σ ratio·alpha/r·up@down as an (out, in·k·k) fp32 matrix (all of
    them first, then the SVDs, as kohya holds them: ``hold_all``), a full ``torch.linalg.svd``
    (``full_matrices`` as kohya's default call), the top k = min(rank, in, out) kept with S
    folded into U, then — with ``clamp_quantile`` — both factors clamped to ±(the q-quantile of
    the signed values of U·S and Vh together), as kohya does. Output alpha = k (scale 1).
    ``timings`` (a dict) receives ``load``, ``dense``, ``svd`` seconds.
    """
    import torch

    from engine.lora.files import load_lora_file
    from engine.lora.weights import LoRAWeights

    timings = {} if timings is None else timings
    started = time.perf_counter()
    loras = [load_lora_file(p).modules for p in paths]
    timings["load"] = time.perf_counter() - started
    conv_rank = new_conv_rank or new_rank
    names = list(dict.fromkeys(n for lora in loras for n in lora))
    layout = {}
    dense_s = svd_s = 0.0

    def build(name):
        mat = None
        for lora, ratio in zip(loras, ratios):
            if name not in lora:
                continue
            w = lora[name]
            up, down = _flat(w)
            term = (ratio * w.alpha / w.rank) * (up.to(device, torch.float32) @ down.to(device, torch.float32))
            mat = term if mat is None else mat + term
            layout[name] = (w.down.dim() == 4, tuple(w.down.shape[1:]), w.up.shape[0])
        return mat

    def extract(name, mat):
        conv, down_shape, out = layout[name]
        kernel = down_shape[1] if conv else 1
        k = min(conv_rank if kernel > 1 else new_rank, down_shape[0], out)
        u, s, vh = torch.linalg.svd(mat, full_matrices=full_matrices)
        up, down = u[:, :k] * s[:k], vh[:k]
        if clamp_quantile is not None:
            limit = torch.quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
            up, down = up.clamp(-limit, limit), down.clamp(-limit, limit)
        if conv:
            up, down = up.reshape(out, k, 1, 1), down.reshape(k, *down_shape)
        return LoRAWeights(down.float().cpu().contiguous(), up.float().cpu().contiguous(), float(k))

    merged = {}
    with torch.no_grad():
        if hold_all:
            t = time.perf_counter()
            dense = {name: build(name).cpu() for name in names}
            dense_s = time.perf_counter() - t
            t = time.perf_counter()
            for name in names:
                merged[name] = extract(name, dense.pop(name).to(device))
            svd_s = time.perf_counter() - t
        else:
            for name in names:
                t = time.perf_counter()
                mat = build(name)
                t2 = time.perf_counter()
                merged[name] = extract(name, mat)
                dense_s += t2 - t
                svd_s += time.perf_counter() - t2
    timings["dense"], timings["svd"] = dense_s, svd_s
    return merged


