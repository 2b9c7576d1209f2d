"""The yardstick of a copy-machine LoRA: does it make the wanted change, and nothing else?

Measured on pictures generated with the same seed at several strengths (strength 0 is the base):

- **effect**: mean HSV saturation at strength 1 ÷ at strength 0 (a colour → monochrome LoRA
  drives it towards 0);
- **collateral**: SSIM of the luminance (gray) pictures at strength 1 vs 0 (1 = the same
  picture, only the colour changed);
- **copy check**: PSNR of what a LoRA draws on the empty prompt against its teacher picture
  (A alone vs picture A; A with the result vs picture B);
- **colour accuracy** of a base model: on prompts naming a shape's and a background's colours,
  the share of named colours that are the ones drawn (engine.models.toy_data's world).

Library functions, so the effect benchmark, the tests and future training options share one
measure. Pictures are PIL images; numbers are plain floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.models.loading import BaseModel


def saturation(image) -> float:
    """Mean HSV saturation (0..1) of an RGB picture."""
    import numpy as np

    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float64)
    return float(hsv[..., 1].mean() / 255.0)


def luminance(image):
    import numpy as np

    return np.asarray(image.convert("L"), dtype=np.float64)


def ssim(a, b, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004, the usual constants, a uniform window) of two gray arrays
    in 0..255."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def local_mean(x):
        return sliding_window_view(x, (window, window)).mean(axis=(-1, -2))

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(np.mean(value))


def psnr(image, reference) -> float:
    """PSNR in dB of ``image`` against ``reference`` (RGB, the reference resized to match)."""
    import numpy as np

    ref = reference.convert("RGB").resize(image.size)
    error = np.mean((np.asarray(image.convert("RGB"), dtype=np.float64) - np.asarray(ref, dtype=np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


@dataclass
class EffectReport:
    """Per strength: mean saturation over every (prompt, seed); the effect and collateral of
    the top strength against strength 0, over the same pairs."""

    strengths: list[float]
    saturation: dict[float, float]
    effect: float  # saturation at the top strength ÷ at strength 0
    collateral_ssim: float  # mean luminance SSIM, top strength vs strength 0
    pairs: int
    per_prompt: list[dict] = field(default_factory=list)
    per_colour: dict[str, dict] = field(default_factory=dict)  # see colour_breakdown


def colour_breakdown(per_prompt: list[dict]) -> dict[str, dict]:
    """Which prompt colours lose their colour and which do not: for each colour named in the
    toy world's prompts ("a C1 SHAPE on a C2 background"), the saturation at the top strength ÷
    at strength 0 over the pictures whose prompt names it as the shape's colour, and over those
    naming it as the background's (the background is most of a picture, so that column says most
    about the colour). Prompts of another form are left out; a colour never named is absent."""
    from engine.models.toy_data import COLOURS

    sums: dict[str, dict[str, list[float]]] = {}
    for row in per_prompt:
        words = row["prompt"].split(",")[0].split()
        if len(words) != 7 or words[0] != "a" or words[-1] != "background":
            continue
        for role, colour in (("shape", words[1]), ("background", words[-2])):
            if colour in COLOURS:
                pair = sums.setdefault(colour, {}).setdefault(role, [0.0, 0.0, 0])
                pair[0] += row["saturation"][0]
                pair[1] += row["saturation"][-1]
                pair[2] += 1
    out: dict[str, dict] = {}
    for colour in (c for c in COLOURS if c in sums):
        out[colour] = {}
        for role in ("shape", "background"):
            s0, s1, n = sums[colour].get(role, [0.0, 0.0, 0])
            out[colour][role] = {"effect": s1 / s0 if s0 > 0 else float("nan"), "pictures": n} if n else None
    return out


def measure_effect(images: dict[tuple[str, int], list], strengths: list[float]) -> EffectReport:
    """``images[(prompt, seed)]`` = one picture per strength (strength 0 first, the top last)."""
    top = len(strengths) - 1
    sat = {s: 0.0 for s in strengths}
    ssims, rows = [], []
    for (prompt, seed), row in images.items():
        values = [saturation(img) for img in row]
        for s, v in zip(strengths, values):
            sat[s] += v / len(images)
        value = ssim(luminance(row[0]), luminance(row[top]))
        ssims.append(value)
        rows.append({"prompt": prompt, "seed": seed, "saturation": values, "ssim": value})
    base = sat[strengths[0]]
    return EffectReport(strengths, sat, sat[strengths[top]] / base if base > 0 else float("nan"), sum(ssims) / len(ssims),
                        len(images), rows, colour_breakdown(rows))


def generate_rows(model: BaseModel, network, prompts: list[str], seeds: list[int], strengths: list[float], *, steps: int = 20,
                  guidance: float = 5.0, size: tuple[int, int] = (64, 64), sampler: str = "euler_a",
                  base_pictures: dict | None = None) -> dict:
    """Pictures of ``network`` (a LoRANetwork on ``model``, or None) for every (prompt, seed) at
    every strength, the same seed along a row.

    ``base_pictures``: a dict kept by the caller for one base model and these sampling settings.
    Strength 0 is the base itself (the LoRA's change times 0 adds exactly nothing), so its
    pictures are drawn once, kept there, and reused by every LoRA measured after: a benchmark of
    many results draws a third fewer pictures."""
    from engine.train.sample import SampleSettings, generate

    kept = base_pictures if base_pictures is not None and 0.0 in strengths else None
    out = {}
    for seed in seeds:
        cached = kept is not None and all((prompt, seed) in kept for prompt in prompts)
        drawn = [s for s in strengths if not (cached and s == 0.0)]
        settings = SampleSettings(prompts=list(prompts), seed=seed, steps=steps, guidance=guidance, size=list(size),
                                  strengths=drawn, sampler=sampler)
        for prompt, row in zip(prompts, generate(model, settings, network)):
            pictures = dict(zip(drawn, row))
            if kept is not None:
                pictures[0.0] = kept.setdefault((prompt, seed), pictures.get(0.0))
            out[(prompt, seed)] = [pictures[s] for s in strengths]
    return out


def lora_effect(model: BaseModel, lora_path: Path, prompts: list[str], seeds: list[int], strengths: list[float], *,
                base_pictures: dict | None = None, **sampling) -> EffectReport:
    """The effect and collateral of a LoRA file on ``model`` (a BaseModel); ``base_pictures``: see
    :func:`generate_rows`."""
    from engine.lora.network import LoRANetwork

    network = LoRANetwork.from_file(lora_path, model.unet, model.text_encoders, model.family)
    network.to(device=model.unet.device)
    return measure_effect(generate_rows(model, network, prompts, seeds, strengths, base_pictures=base_pictures, **sampling), strengths)


def colour_accuracy(model: BaseModel, prompts: list[str], seeds: list[int], **sampling) -> dict:
    """On prompts "a C1 SHAPE on a C2 background": the share of named colours drawn (shape and
    background counted separately), read by :func:`engine.models.toy_data.region_colours`."""
    from engine.models.toy_data import read_scene, region_colours

    rows = generate_rows(model, None, prompts, seeds, [0.0], **sampling)
    hits, total, details = 0, 0, []
    for (prompt, seed), (image,) in rows.items():
        words = prompt.split()
        wanted = (words[1], words[-2])  # "a C1 SHAPE on a C2 background"
        drawn = region_colours(image)
        hits += (drawn[0] == wanted[0]) + (drawn[1] == wanted[1])
        total += 2
        details.append({"prompt": prompt, "seed": seed, "drawn": list(drawn), "shape": read_scene(image)[1]})
    return {"accuracy": hits / total, "pictures": len(rows), "details": details}
