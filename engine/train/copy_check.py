"""Copy fidelity, live: how well each side's LoRA copies its teacher, measured while it trains.

The copy-machine method wants each LoRA to overfit until it draws its picture from noise; the
recipe's fixed 4000 steps only guess when that happens. Every ``copy_check_every_n_steps`` the
trainer draws each side's picture the cheap way: from fixed pure noise (two seeds, from a stream
of its own), a 4-step deterministic DDIM run of the U-Net with the side's LoRA (and, for the
differential route's B, A under it), on the prompt the side trains with, no CFG, no VAE decode;
the final latent is scored against the teacher latent:

    PSNR = 10·log10(peak² / MSE),  peak = the teacher latent's max − min.

That is 8 U-Net evaluations of one picture per side, a few training steps' worth. The figure is
in latent space, so it compares checkpoints of one run (and rules over them), not runs on
different models. Chosen by measurement (bench/copy_fidelity_bench.py, docs/BENCHMARKS.md): over
a toy run's checkpoints it ranks them as the sampled copy check does (CFG 7, 20 steps, decoded)
better than one-step x0 predictions at fixed timesteps, or DDIM with CFG.

Nothing here touches the training's random stream or weights: a run with checks gives
bit-identical LoRAs to one without (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from engine.project.copy_rule import StopRule, stop_rule
from engine.train.results import Log
from engine.train.side_run import Draw, SideRun

if TYPE_CHECKING:
    from engine.models.loading import BaseModel

SEEDS = 2  # noise seeds per picture (one batch): one seed's figure moves with the noise it drew
DDIM_STEPS = 4
PROBE_SEED_OFFSET = 0x5EED  # the probes' noise stream, apart from the training's own


@dataclass
class Probe:
    """One teacher picture of one side as a copy check draws it: fixed start noise (a batch of
    SEEDS), the prompt it trains under, its SDXL size conditions, and the teacher latent."""

    noise: Any
    cond: Any
    added: dict | None
    latent: Any

    def draw(self, x, t) -> Draw:
        """The U-Net inputs of one DDIM step, in the shape a driver batches (a training Draw's)."""
        import torch

        return Draw(-1, x, torch.full((x.shape[0],), int(t), device=x.device), self.cond, self.added, self.latent, None)


def probe(latent, text, time_ids, *, seed: int, device: str, dtype) -> Probe:
    """The fixed inputs of one teacher latent (1, C, H, W) under ``text`` (a TextEmbedding)."""
    import torch

    from engine.train.conditioning import added_conditions

    generator = torch.Generator().manual_seed(seed + PROBE_SEED_OFFSET)
    noise = torch.randn((SEEDS, *latent.shape[1:]), generator=generator).to(device)
    cond = text.hidden.detach().expand(SEEDS, -1, -1)
    added = added_conditions([text] * SEEDS, [time_ids] * SEEDS, device=device, dtype=dtype)
    return Probe(noise, cond, added, latent.to(device))


def side_probes(run: SideRun) -> list[Probe]:
    """One probe per teacher picture of the side (its own pictures, not [reg]'s or further
    concepts'), under the prompt it trains with. The noise is the same for A and B (same seed),
    as their training noise is."""
    import torch

    from engine.train.conditioning import encode_text

    data = run.data
    own = len(run.sp.images)
    prompt_of: dict[int, int] = {}
    for item in data.items:
        if item.latent_index < own:
            prompt_of.setdefault(item.latent_index, item.cond_index)
    probes = []
    for index in range(own):
        cond_index = prompt_of.get(index, 0)
        with torch.no_grad():
            text = run.text_cache[cond_index] if run.text_cache is not None else encode_text(run.model, data.prompts[cond_index],
                                                                                             run.p.clip_skip, max_tokens=run.p.max_token_length)
        probes.append(probe(data.latents[index], text, data.time_ids[index], seed=run.p.seed, device=run.device, dtype=run.weight_dtype))
    return probes


def latent_psnr(x, latent) -> float:
    """PSNR in dB of latents ``x`` (a batch) against the teacher ``latent`` (peak: its range)."""
    import torch

    latent = latent.float()
    peak = float(latent.max() - latent.min()) or 1.0
    mse = float(torch.mean((x.float() - latent) ** 2))
    return 99.0 if mse <= 0 else 10 * math.log10(peak * peak / mse)


def copy_psnr(unet_batch: Callable[[list[Draw]], Any], probes: list[Probe], scheduler_config) -> list[float]:
    """Draw every probe (one per side, batched as ``unet_batch`` routes them) with a short DDIM
    run; each one's PSNR against its teacher."""
    import torch
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config)  # deterministic (eta 0) and stateless per step
    scheduler.set_timesteps(DDIM_STEPS)
    xs = [p.noise * scheduler.init_noise_sigma for p in probes]
    with torch.no_grad():
        for t in scheduler.timesteps:
            pred = unet_batch([p.draw(x, t) for p, x in zip(probes, xs)]).float()
            size = xs[0].shape[0]
            xs = [scheduler.step(pred[i * size:(i + 1) * size], t, x.float()).prev_sample for i, x in enumerate(xs)]
    return [latent_psnr(x, p.latent) for p, x in zip(probes, xs)]


class CopyWatch:
    """Each side's copy checks in one run: when they are due, the figures, the sides' stop rules.

    ``driver`` batches the probes as it batches a training step (a twin run's two halves
    through A's and B's LoRA), so what is scored is exactly the network that trains."""

    def __init__(self, driver, model: BaseModel, amp, weight_dtype, log: Log) -> None:
        self.driver, self.model, self.amp, self.weight_dtype, self.log = driver, model, amp, weight_dtype, log
        self.runs: list[SideRun] = driver.runs
        self.rules: list[StopRule] = [stop_rule(run.p) for run in self.runs]
        # One interval for the run: the shortest a side asks for (a twin's sides may differ in it).
        self.every = min((rule.every for rule in self.rules if rule.every), default=0)
        if not getattr(driver, "copy_checks", True):  # the one-LoRA routes have no copier to score
            self.every = 0
        self.probes = [side_probes(run) for run in self.runs] if self.every else []

    def due(self, step: int, total: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == total)

    def latest(self) -> list[float | None]:
        """The newest figure of each side (None before its first check)."""
        return [run.copy_history[-1][1] if run.copy_history else None for run in self.runs]

    def _unet(self, draws: list[Draw]):
        noisy, timesteps, cond, added = self.driver.inputs(draws)
        with self.amp:
            return self.model.unet(noisy.to(self.weight_dtype), timesteps, cond.to(self.weight_dtype), added_cond_kwargs=added).sample

    def check(self, step: int) -> list[float]:
        """Score every side now, record it in its history and the log."""
        figures = [copy_psnr(self._unet, list(per_picture), self.model.noise_scheduler.config) for per_picture in zip(*self.probes)]
        values = [sum(picture[i] for picture in figures) / len(figures) for i in range(len(self.runs))]
        for run, value in zip(self.runs, values):
            if run.stopped is None:  # a side that stopped keeps its figure at its stop
                run.copy_history.append((step, value))
        shown = " ".join(f"{run.side.upper()} {v:.2f} dB" for run, v in zip(self.runs, values))
        self.log(f"copy check at step {step}: {shown}")
        return values

    def newly_copied(self) -> list[tuple[SideRun, str]]:
        """The sides whose rule is reached by their newest check (and that train still)."""
        found = []
        for run, rule in zip(self.runs, self.rules):
            if run.stopped is None:
                reason = rule.reached(run.copy_history)
                if reason is not None:
                    found.append((run, reason))
        return found
