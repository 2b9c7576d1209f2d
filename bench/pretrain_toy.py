"""Pretrain the built-in ``toy`` base model (engine/models/toy/) on a 2-core CPU.

The ``tiny`` SD1.5 topology (the same modules and names), its own word-level tokenizer, and
pictures drawn from a seed by :mod:`engine.models.toy_data` (coloured shapes on coloured
backgrounds, 64×64, captioned, some in grayscale, 15 % with an empty caption, a fifth of the
colour/shape/background combinations never shown). Two phases, straight lines:

1. the VAE alone: reconstruction MSE + a tiny KL, AdamW at 3e-4 (the pilot saw it stall at 1e-3);
   then its latent scale is set to 1/std of the pool's latents, as SD's 0.18215 was;
2. the U-Net and the text encoder together on the pool's latents: DDPM ε-prediction loss,
   AdamW, gradient clipping 1.

Then the folder is written (diffusers format, fp16 safetensors) with ``SHA256SUMS`` and
``pretrain.json`` (the command, seeds, steps, losses, minutes, evals). The shipped model is
run 28 (docs/BENCHMARKS.md; 154.2 minutes on the 2-core CPU it was made on, 9 of them its
evals); its command, in ``engine/models/toy/pretrain.json``, regenerates it (the U-Net phase
stops on the clock, ``--max-unet-minutes 120``, so a faster machine trains more steps):

    python bench/pretrain_toy.py --out /tmp/toy --vae-steps 2500 --unet-steps 13000 --unet-batch 16 \
        --unet-lr 1e-3 --te-lr 2e-3 --noise-offset 0.5 --radius 0.24,0.38 --max-length 16 --te-width 64 \
        --te-layers 4 --unet-heads 4 --shape-weight 4 --te-probe 0.1 --te-probe-steps 600 \
        --colour-jitter 25 --saturation-jitter 0.4 --ema 0.999 --eval-every 4000 --eval-prompts 48 \
        --max-unet-minutes 120 --threads 0

The flags' defaults are still run 9's, the first shipped toy (60.1 minutes), so that every
lever below is named on the command line of the run that used it. The smoke test (seconds):
``python bench/pretrain_toy.py --out /tmp/toy --vae-steps 2 --unet-steps 2 --pool 64``.

Issue 24's levers (docs/BENCHMARKS.md, "A toy base that draws what it is asked"): the text
encoder's width and depth (``--te-width``/``--te-layers``; on ``--start-from`` a trained U-Net
gets the new width by new cross-attention ``to_k``/``to_v``), the U-Net's widths and heads, the
shapes' size (``--radius``), 1/√SNR weighting (``--debiased``), a VAE taken from another run
(``--vae-from``), ``--device cuda`` for a lent GPU, ``--te-probe``/``--te-probe-steps`` (a probe that keeps every
caption word in the text encoder's position-averaged output: run 17's had let "circle" and
"square" collapse there), ``--ema DECAY`` (a moving average of the weights, written to ``--out``;
the last step's go beside it, in ``OUT-last``), and ``--eval-every N``: the share of
shapes' colours, backgrounds and shapes drawn as asked on held-out prompts at CFG 7, logged and
kept in ``pretrain.json`` (``evals``) so a run can be stopped at its plateau. A continued run's
record holds the one it started from (``from``) and the minutes of the whole chain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def govern() -> None:
    """The thread governor's tick (engine/threads.py): with ``--threads 0`` the run narrows when
    other work starts on the machine instead of thrashing beside it."""
    from engine.threads import govern as tick

    tick()


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def pictures_tensor(pictures) -> "torch.Tensor":  # noqa: F821
    import numpy as np
    import torch

    array = np.stack([np.asarray(p, dtype=np.float32) for p in pictures]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def build(seed: int, vae_levels: int = 3, *, te_width: int = 32, te_layers: int = 12, te_heads: int = 4,
          unet_channels: tuple[int, ...] = (32, 64, 96, 96), unet_heads: int = 2):
    """The toy model's components, untrained: tiny's U-Net (SD1.5's topology), a text encoder
    sized for the toy tokenizer, tiny's scheduler, and a VAE of ``vae_levels`` levels.

    SD's VAE has 4 levels (8× smaller latents). On 64×64 pictures that leaves an 8×8 latent,
    which the U-Net's three downsamplings bring to 1×1, and a VAE that must pack a picture into
    256 numbers; a first run so (30 min) drew washed-out colours (19 % colour accuracy) from a
    VAE that reconstructed purple as gray. With 3 levels (4× smaller, 16×16 latents) both have
    room. LoRAs never touch the VAE, so every LoRA name is still SD1.5's.

    The text conditioning's width (``te_width``: the text encoder's hidden size, which is the
    U-Net's cross-attention width) and depth, and the U-Net's widths, are levers of issue 24:
    tiny's are 32 wide and 12 deep (SD1.5's 768 and 12). A text encoder of fewer layers still
    names its LoRA modules as SD1.5's (``layers_0`` … ``layers_{n-1}``), a subset of them."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models import tiny
    from engine.models.toy import toy_tokenizer

    components = tiny.build_tiny_components(seed)
    if te_width != tiny.CLIP_HIDDEN or tuple(unet_channels) != tiny.UNET_CHANNELS or unet_heads != 2:
        from diffusers import UNet2DConditionModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            components["unet"] = UNet2DConditionModel.from_config({
                **components["unet"].config, "block_out_channels": tuple(unet_channels), "cross_attention_dim": te_width,
                "attention_head_dim": unet_heads})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        components["vae"] = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * vae_levels,
            up_block_types=("UpDecoderBlock2D",) * vae_levels, block_out_channels=tiny.VAE_CHANNELS[:vae_levels],
            layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=64, scaling_factor=0.18215,
            force_upcast=True,
        )
    tokenizer = toy_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        config = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=te_width, intermediate_size=te_width * 4,
            num_hidden_layers=te_layers, num_attention_heads=te_heads, max_position_embeddings=77,
            hidden_act="quick_gelu", projection_dim=te_width, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        components["text_encoder"] = CLIPTextModel(config)
    components["tokenizer"] = tokenizer
    # The pictures are 64×64: the pipeline's default size follows the U-Net's sample size.
    components["unet"].register_to_config(sample_size=64 // 2 ** (vae_levels - 1))
    return components


def swap_cross_attention_inputs(unet, width: int, seed: int) -> None:
    """Give a trained U-Net a text encoder of another width: every cross-attention's ``to_k``
    and ``to_v`` (the only layers that read the text) made anew for ``width`` inputs, the rest of
    what it learned (drawing the world's shapes) kept."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                for part in ("to_k", "to_v"):
                    old = getattr(module, part)
                    setattr(module, part, torch.nn.Linear(width, old.out_features, bias=old.bias is not None))
    unet.register_to_config(cross_attention_dim=width)


def train_vae(vae, pool, steps: int, batch: int, lr: float, seed: int, device: str = "cpu") -> list[float]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    losses = []
    started = time.time()
    for step in range(1, steps + 1):
        index = torch.randint(0, pool.shape[0], (batch,), generator=generator)
        x = pool[index].to(device)
        posterior = vae.encode(x).latent_dist
        # drawn on the CPU's generator whatever the device: the same numbers on a GPU
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(device)
        out = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(out, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss))
        govern()
        if step % 100 == 0 or step == steps:
            log(f"vae step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} ({(time.time() - started) / step:.2f} s/step)")
    vae.eval()
    return losses


def encode_pool(vae, pool, batch: int = 64, device: str = "cpu"):
    import torch

    with torch.no_grad():
        return torch.cat([vae.encode(pool[i:i + batch].to(device)).latent_dist.mean.cpu() for i in range(0, pool.shape[0], batch)])


def latent_weights(masks, shape_weight: float, latent_size: int):
    """Per-latent-pixel loss weights: 1 on the background, ``shape_weight`` on the shape (the
    masks averaged down to the latent grid). The shape covers 8–32 % of a picture, so a plain
    mean lets the background's colour dominate the loss: run 9 drew 72 % of the backgrounds'
    colours and 22 % of the shapes'."""
    import torch

    pooled = torch.nn.functional.adaptive_avg_pool2d(masks, latent_size)
    return 1.0 + (shape_weight - 1.0) * pooled


def min_snr_weights(noise_scheduler, t, gamma: float):
    """min(SNR, γ) / SNR per sample (Hang et al. 2023, "Min-SNR"; sd-scripts' min_snr_gamma):
    the low-noise steps, which only refine detail, stop dominating the ε loss; colour and
    layout are decided at the noisy ones."""
    alphas = noise_scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    return snr.clamp(max=gamma) / snr


def as_base_model(components):
    """The components being trained, as the BaseModel the sampler and the effect measures take."""
    from engine.models.loading import BaseModel, training_scheduler

    return BaseModel(family="sd15", prediction_type="epsilon", unet=components["unet"], vae=components["vae"],
                     text_encoders=[components["text_encoder"]], tokenizers=[components["tokenizer"]],
                     noise_scheduler=training_scheduler(), scheduler=components["scheduler"], name="toy (pretraining)")


def evaluate(components, prompts: list[str], seeds: list[int], guidance: float) -> dict:
    """What the model draws now on held-out prompts: the share of shapes' colours, backgrounds'
    colours and shapes drawn as named (read by toy_data's readers), Euler a 20 steps."""
    import torch

    from engine.models.toy_data import read_scene, region_colours
    from engine.train.effect import generate_rows, saturation

    unet, text_encoder = components["unet"], components["text_encoder"]
    unet.eval()
    text_encoder.eval()
    started = time.time()
    grey_prompts = [p + ", monochrome" for p in prompts[::3]]
    with torch.no_grad():
        rows = generate_rows(as_base_model(components), None, prompts, seeds, [0.0], guidance=guidance)
        grey = generate_rows(as_base_model(components), None, grey_prompts, seeds[:1], [0.0], guidance=guidance)
    unet.train()
    text_encoder.train()
    colour = background = shape = 0
    for (prompt, _seed), (image,) in rows.items():
        words = prompt.split()  # "a C1 SHAPE on a C2 background"
        drawn_colour, drawn_background = region_colours(image)
        colour += drawn_colour == words[1]
        background += drawn_background == words[-2]
        shape += read_scene(image)[1] == words[2]
    n = len(rows)
    grey_saturation = sum(saturation(image) for (image,) in grey.values()) / max(1, len(grey))
    return {"shape_colour": round(colour / n, 4), "background": round(background / n, 4), "shape": round(shape / n, 4),
            "monochrome_saturation": round(grey_saturation, 4), "pictures": n, "cfg": guidance,
            "seconds": round(time.time() - started, 1)}


def debiased_weights(noise_scheduler, t):
    """1/√SNR per sample (kohya's ``--debiased_estimation_loss``, Yu et al. 2024): the ε loss
    counts a noisy step's error in x₀ by its SNR, so at the noisiest steps — where a picture's
    colours and layout are decided, and where the caption is all the model has — it hardly
    teaches anything; this weight lifts those steps (SNR capped at 1000, as kohya does)."""
    alphas = noise_scheduler.alphas_cumprod[t]
    return 1.0 / (alphas / (1 - alphas)).clamp(max=1000).sqrt()


def caption_labels(captions: list[str]):
    """(shape colour, shape, background, monochrome) class indices of each caption, the last
    class of each word meaning "not named" (the empty caption)."""
    import torch

    from engine.models.toy_data import COLOURS, SHAPES

    colours, shapes = list(COLOURS), list(SHAPES)
    rows = []
    for caption in captions:
        words = caption.replace(",", " ").split()  # "a C1 SHAPE on a C2 background [monochrome]"
        if not words:
            rows.append((len(colours), len(shapes), len(colours), 0))
            continue
        rows.append((colours.index(words[1]), shapes.index(words[2]), colours.index(words[5]), int("monochrome" in words)))
    return torch.tensor(rows)


class CaptionProbe:
    """Issue 24's text-encoder probe: cross-entropy of the caption's words read back from the
    text encoder's output *averaged over every position*, through fixed-temperature cosine
    classifiers (not saved: the shipped text encoder is plain CLIP).

    Why the average: the U-Net's cross-attention starts flat, so what it hands each pixel is
    about that average; run 17's text encoder had let "circle" and "square" collapse there
    (0.4 % apart, against 99–141 % for a colour word), and a word the average does not carry
    cannot be drawn. Why cosine at a fixed temperature: a free linear head could read a
    tiny difference by growing its weights; this one needs the averages to point apart."""

    TEMPERATURE = 10.0

    def __init__(self, width: int, seed: int, device: str = "cpu"):
        import torch

        from engine.models.toy_data import COLOURS, SHAPES

        self.sizes = (len(COLOURS) + 1, len(SHAPES) + 1, len(COLOURS) + 1, 2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 5)
            self.weight = torch.nn.Parameter(torch.randn(sum(self.sizes), width).to(device))

    def parameters(self):
        return [self.weight]

    def loss(self, hidden, labels):
        """Mean cross-entropy of the four words; ``hidden`` is (batch, positions, width)."""
        import torch

        pooled = torch.nn.functional.normalize(hidden.mean(dim=1), dim=-1)
        logits = self.TEMPERATURE * pooled @ torch.nn.functional.normalize(self.weight, dim=-1).T
        total, start = 0.0, 0
        for word, size in enumerate(self.sizes):
            total = total + torch.nn.functional.cross_entropy(logits[:, start:start + size], labels[:, word])
            start += size
        return total / len(self.sizes)


def pretrain_text_encoder(components, captions: list[str], steps: int, batch: int, lr: float, seed: int,
                          probe: "CaptionProbe", device: str = "cpu") -> list[float]:
    """The text encoder alone on the probe (seconds): like SD's CLIP, it comes to the U-Net
    already telling every word apart in its averaged output."""
    import torch

    text_encoder, tokenizer = components["text_encoder"], components["tokenizer"]
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    labels = caption_labels(captions)
    generator = torch.Generator().manual_seed(seed + 6)
    optimizer = torch.optim.AdamW([*text_encoder.parameters(), *probe.parameters()], lr=lr, weight_decay=1e-2)
    text_encoder.train()
    losses = []
    for step in range(1, steps + 1):
        index = torch.randint(0, len(captions), (batch,), generator=generator)
        loss = probe.loss(text_encoder(ids[index].to(device))[0], labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == steps:
            log(f"text encoder step {step}/{steps} probe loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    return losses


def fit_probe_head(text_encoder, probe: "CaptionProbe", ids, labels, lr: float, seed: int, device: str = "cpu", steps: int = 200) -> float:
    """The probe's fresh head fitted to the text encoder as it is (the text encoder untouched),
    so that the probe's first gradients in the joint phase do not pull a text encoder that
    already tells the words apart toward a random head. Returns the last probe loss."""
    import torch

    generator = torch.Generator().manual_seed(seed + 7)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.0)
    loss = torch.zeros(())
    for _ in range(steps):
        index = torch.randint(0, ids.shape[0], (64,), generator=generator)
        with torch.no_grad():
            hidden = text_encoder(ids[index].to(device))[0]
        loss = probe.loss(hidden, labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    log(f"probe head fitted to the text encoder: loss {float(loss.detach()):.4f}")
    return float(loss.detach())


def cuda_graph(device: str):
    """The U-Net phase's graph (--cuda-graph), its side stream on ``device``."""
    import torch

    from engine.train.cuda_graph import CudaGraph

    with torch.cuda.device(device):
        return CudaGraph()


GRAPH_WARMUP = 3  # eager steps before the capture: AdamW makes its state, cuDNN picks its kernels


class GraphedTrainStep:
    """``body(inputs)`` run eagerly :data:`GRAPH_WARMUP` times, then captured once on copies of
    its inputs and replayed: each later call copies its inputs into those and replays."""

    def __init__(self, body, graph, warmup: int = GRAPH_WARMUP) -> None:
        self.body, self.graph, self.warmup = body, graph, warmup
        self.static: dict | None = None  # the tensors the graph reads
        self.out = None  # the loss the graph writes

    def __call__(self, inputs: dict):
        if self.warmup:
            self.warmup -= 1
            with self.graph.warming():
                return self.body(inputs)
        if self.static is None:
            self.static = {name: value.clone() for name, value in inputs.items()}

            def captured() -> None:
                assert self.static is not None
                self.out = self.body(self.static)

            self.graph.capture(captured)
            log(f"cuda graph: the training step captured after {GRAPH_WARMUP} eager steps; replayed from here on")
        else:
            for name, value in inputs.items():
                self.static[name].copy_(value)
        self.graph.replay()  # the capture ran nothing: its step is the first replay
        return self.out.clone()


def train_unet(components, latents, captions: list[str], steps: int, batch: int, lr: float, seed: int,
               te_lr: float | None = None, noise_offset: float = 0.0, weights=None, min_snr_gamma: float = 0.0,
               eval_every: int = 0, evaluate_now=None, evals: list | None = None, debiased: bool = False, start_eval: bool = False,
               device: str = "cpu", attn_lr_mult: float = 1.0, probe: "CaptionProbe | None" = None,
               probe_weight: float = 0.0, fit_head: bool = True, ema_decay: float = 0.0, last: dict | None = None,
               graph=None, max_minutes: float = 0.0) -> list[float]:
    """The U-Net and text encoder trained together. ``graph`` (--cuda-graph: an
    :class:`engine.train.cuda_graph.CudaGraph`; the tests pass its CPU stand-in): after
    :data:`GRAPH_WARMUP` eager steps the whole step (forward, loss, backward, clipping, AdamW) is
    captured once and replayed, each step's draws copied into its inputs. The toy's kernels are
    tiny, so an eager step on a GPU is all launch overhead. ``max_minutes`` (> 0): stop after the step
    that passes that many minutes (a lent GPU's call has a limit); the steps done are the
    losses' length."""
    import torch
    from diffusers import DDPMScheduler
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(seed)
    params = [*unet.parameters(), *text_encoder.parameters()]
    # cross-attention's query and key decide where each pixel looks in the caption; a U-Net whose
    # attention stayed flat averages the shape word away, so they may learn faster (--attn-lr-mult)
    sharp = [p for name, p in unet.named_parameters() if ".attn2.to_q." in name or ".attn2.to_k." in name]
    sharp_ids = {id(p) for p in sharp}
    rest = [p for p in unet.parameters() if id(p) not in sharp_ids]
    groups = [{"params": rest, "lr": lr}, {"params": list(text_encoder.parameters()), "lr": te_lr or lr}]
    if sharp:
        groups.append({"params": sharp, "lr": lr * attn_lr_mult})
    labels = caption_labels(captions) if probe is not None and probe_weight else None
    if labels is not None:
        groups.append({"params": probe.parameters(), "lr": te_lr or lr})
        if fit_head:  # a head the --te-probe-steps phase just trained is fitted already
            fit_probe_head(text_encoder, probe, ids, labels, te_lr or lr, seed, device)
    if graph is not None and str(device).startswith("cuda"):
        # A captured optimizer step reads its learning rates and step counts from the device:
        # capturable AdamW, and each group's rate a tensor that the schedule fills in place
        # (torch.optim.lr_scheduler's _update_param_group_val) so the replays see it change.
        for group in groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        optimizer = torch.optim.AdamW(groups, weight_decay=1e-2, capturable=True, foreach=True)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 200) * max(0.1, 1 - s / steps))
    # --ema: a moving average of the weights (what diffusion models ship; a small model's last
    # steps wander around the minimum). Each eval measures both; the average is what is written.
    averages = [AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) for model in (unet, text_encoder)] \
        if ema_decay else []

    def with_average(measure):
        raw = [{k: v.clone() for k, v in model.state_dict().items()} for model in (unet, text_encoder)]
        for model, average in zip((unet, text_encoder), averages):
            model.load_state_dict(average.module.state_dict())
        try:
            return measure()
        finally:
            for model, state in zip((unet, text_encoder), raw):
                model.load_state_dict(state)

    def measured() -> dict:
        figures = evaluate_now()
        return {**figures, "ema": with_average(evaluate_now)} if averages else figures

    unet.train()
    text_encoder.train()
    losses = []
    started = time.time()
    if evaluate_now is not None and eval_every and evals is not None and start_eval:
        evals.append({"step": 0, "minutes": 0.0, **evaluate_now()})
        log("eval " + json.dumps(evals[-1]))

    def draw() -> dict:
        """The step's batch, noise and timesteps, drawn on the CPU from the run's generator (the
        same numbers on any device, graphed or not), with what the loss needs of them, moved."""
        index = torch.randint(0, latents.shape[0], (batch,), generator=generator)
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        if noise_offset:  # as sd-scripts' noise_offset: see --noise-offset's help
            noise = noise + noise_offset * torch.randn((batch, x0.shape[1], 1, 1), generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator)
        inputs = {"x0": x0, "noise": noise, "t": t, "ids": ids[index]}
        if weights is not None:
            inputs["weights"] = weights[index]
        if min_snr_gamma:
            inputs["snr"] = min_snr_weights(noise_scheduler, t, min_snr_gamma)
        if debiased:
            inputs["debiased"] = debiased_weights(noise_scheduler, t)
        if labels is not None:
            inputs["labels"] = labels[index]
        return {name: value.to(device) for name, value in inputs.items()}

    def train_step(inputs: dict):
        """Forward, loss, backward, clipping and the optimizer's step: the device's work, all of
        it capturable (--cuda-graph). The loss, detached."""
        noisy = noise_scheduler.add_noise(inputs["x0"], inputs["noise"], inputs["t"])
        hidden = text_encoder(inputs["ids"])[0]
        pred = unet(noisy, inputs["t"], hidden).sample
        if weights is None and not min_snr_gamma and not debiased:
            loss = torch.nn.functional.mse_loss(pred, inputs["noise"])  # the shipped model's loss, as it was computed
        else:
            per_sample = (((pred - inputs["noise"]) ** 2) * (inputs["weights"] if weights is not None else 1.0)).mean(dim=(1, 2, 3))
            if min_snr_gamma:
                per_sample = per_sample * inputs["snr"]
            if debiased:
                per_sample = per_sample * inputs["debiased"]
            loss = per_sample.mean()
        if labels is not None:  # keeps every word in the averaged text (--te-probe)
            loss = loss + probe_weight * probe.loss(hidden, inputs["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss.detach()

    step_fn = GraphedTrainStep(train_step, graph) if graph is not None else train_step
    for step in range(1, steps + 1):
        loss = step_fn(draw())
        schedule.step()  # outside a graph: it writes the groups' learning rates (tensors when graphed) in place
        for model, average in zip((unet, text_encoder), averages):
            average.update_parameters(model)
        losses.append(float(loss.detach()))
        govern()
        if step % 100 == 0 or step == steps:
            log(f"unet step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} ({(time.time() - started) / step:.2f} s/step)")
        out_of_time = bool(max_minutes) and time.time() - started >= 60 * max_minutes and step < steps
        if out_of_time:
            log(f"unet: {max_minutes:g} minutes reached at step {step} of {steps} (--max-unet-minutes): stopping here")
        if evaluate_now is not None and eval_every and (step % eval_every == 0 or step == steps or out_of_time):
            figures = {"step": step, "minutes": round((time.time() - started) / 60, 1), **measured()}
            log("eval " + json.dumps(figures))
            if evals is not None:
                evals.append(figures)
        if out_of_time:
            break
    if averages and last is not None:  # --ema: the last step's weights too, to be written and scored beside the average
        last.update({name: {k: v.detach().clone() for k, v in model.state_dict().items()}
                     for name, model in (("unet", unet), ("text_encoder", text_encoder))})
    for model, average in zip((unet, text_encoder), averages):
        model.load_state_dict(average.module.state_dict())
    unet.eval()
    text_encoder.eval()
    return losses


def vae_origin(folder: Path) -> dict:
    """Where a ``--vae-from`` VAE was trained: the folder, and the run of its lineage that trained
    it (its steps and minutes), so that a model's record counts the VAE's minutes in its budget."""
    def read(where: Path):  # a record that is missing or unreadable only leaves the minutes unknown
        try:
            return json.loads((where / "pretrain.json").read_text())
        except (OSError, ValueError):
            return None

    record = read(folder)
    while isinstance(record, dict) and not record.get("vae", {}).get("steps"):
        borrowed = record.get("vae_from")  # older records name the folder only
        if isinstance(borrowed, str):
            borrowed = {"run": read(Path(borrowed))}
        record = record.get("from") if isinstance(record.get("from"), dict) else (borrowed or {}).get("run")
    if not isinstance(record, dict):
        return {"path": str(folder), "steps": None, "minutes": 0.0}
    return {"path": str(folder), "steps": record["vae"]["steps"], "minutes": record["vae"]["minutes"], "run": record}


def last_step_folder(out: Path) -> Path:
    """Where an --ema run writes its last step's weights, beside the average: ``OUT-last``."""
    return out.with_name(out.name + "-last")


def save(components, out: Path, record: dict) -> None:
    """The diffusers folder, weights stored in fp16 (half the size: the shipped model must
    stay small; it loads in fp32 like any fp16 checkpoint), with SHA256SUMS."""
    import torch

    from engine.models.tiny import _pipeline_from

    for name in ("unet", "vae", "text_encoder"):
        components[name].to("cpu", torch.float16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _pipeline_from(components).save_pretrained(tmp, safe_serialization=True)
    (tmp / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
    sums = []
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        sums.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(tmp)}")
    (tmp / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def load_components(folder: Path) -> dict:
    """A folder this script wrote, in fp32, to write again or to train further."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return {
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32),
        "vae": AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32),
        "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32),
        "tokenizer": CLIPTokenizer.from_pretrained(folder / "tokenizer"), "scheduler": PNDMScheduler.from_pretrained(folder / "scheduler"),
    }


def resave(folder: Path, out: Path) -> int:
    """A trained folder written again by :func:`save` (fp16, sums), its record kept."""
    save(load_components(folder), out, json.loads((folder / "pretrain.json").read_text()))
    log(f"wrote {out} from {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--pool", type=int, default=8192, help="pictures drawn once and trained on")
    # The defaults are run 9's, the first shipped toy; the shipped one (run 28) ran with the command in its pretrain.json.
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vae-batch", type=int, default=8)
    parser.add_argument("--vae-lr", type=float, default=3e-4)
    parser.add_argument("--unet-steps", type=int, default=10000)
    parser.add_argument("--unet-batch", type=int, default=16)
    parser.add_argument("--unet-lr", type=float, default=5e-4)
    parser.add_argument("--te-lr", type=float, default=2e-3, help="the text encoder's learning rate")
    parser.add_argument("--noise-offset", type=float, default=0.5,
                        help="add this × one random number per sample and channel to the noise (sd-scripts' noise_offset): "
                             "SD's schedule leaves a picture's mean colour in the noisiest latents, so without it the model "
                             "learns to read the background colour from the noise instead of from the caption")
    parser.add_argument("--shape-weight", type=float, default=1.0,
                        help="weight of the shape's latent pixels in the U-Net's loss (1: a plain mean)")
    parser.add_argument("--min-snr-gamma", type=float, default=0.0, help="Min-SNR loss weighting (0: off; 5 is the paper's)")
    parser.add_argument("--radius", help="MIN,MAX: the shapes' radius range (a fraction of the side; the world's: "
                        "engine.models.toy_data.RADIUS), to try a world of bigger shapes before changing it")
    parser.add_argument("--colour-jitter", type=int, default=0,
                        help="move each drawn colour's RGB channels by up to ± this (0–255; the world's: 0): colours vary around their names")
    parser.add_argument("--saturation-jitter", type=float, default=0.0,
                        help="blend each drawn colour toward its gray by up to this (0–1; the world's: 0): a continuous saturation axis")
    parser.add_argument("--debiased", action="store_true",
                        help="weight the U-Net's loss by 1/√SNR (kohya's debiased_estimation_loss): the noisiest steps, where "
                             "the caption decides the colours, count more")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (a lent GPU: the same run in minutes; random numbers are drawn "
                        "on the CPU either way)")
    parser.add_argument("--max-unet-minutes", type=float, default=0.0,
                        help="stop the U-Net phase after this many minutes (0: run every step); pretrain.json says where it stopped")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="with --device cuda: capture the U-Net phase's whole step as a CUDA graph after 3 eager steps and replay "
                        "it (the toy's kernels are tiny: an eager step on a GPU is all launch overhead); the same draws")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: chosen from the free cores and kept right while the run goes, engine/threads.py)")
    parser.add_argument("--te-width", type=int, default=32, help="the text encoder's hidden size = the U-Net's cross-attention width")
    parser.add_argument("--te-layers", type=int, default=12, help="the text encoder's layers (SD1.5: 12)")
    parser.add_argument("--te-heads", type=int, default=4)
    parser.add_argument("--ema", type=float, default=0.0,
                        help="keep a moving average of the U-Net's and text encoder's weights with this decay (0: off; "
                        "0.999 ≈ the last 1000 steps) and write it to --out, the last step's weights to OUT-last; evals measure both")
    parser.add_argument("--attn-lr-mult", type=float, default=1.0,
                        help="learning-rate multiplier for the U-Net's cross-attention to_q/to_k (sharper attention on the caption)")
    parser.add_argument("--centred", action="store_true",
                        help="draw every training shape at the picture's centre (issue 24: does the U-Net learn the shape word "
                             "when the caption alone decides the picture?)")
    parser.add_argument("--te-probe", type=float, default=0.0,
                        help="weight of the text-encoder probe loss beside the U-Net's (0: off): every caption word read back from the "
                             "text encoder's position-averaged output (CaptionProbe)")
    parser.add_argument("--te-probe-steps", type=int, default=0,
                        help="text-encoder-only steps on the probe before the U-Net phase (needs --te-probe or trains it alone)")
    parser.add_argument("--max-length", type=int, default=0,
                        help="the tokenizer's padded length (0: CLIP's 77). The toy prompts take ~10 tokens: at 77 the padding's "
                             "copies take ~87 %% of the U-Net's cross-attention and the shape word is lost (docs/BENCHMARKS.md)")
    parser.add_argument("--unet-channels", default="32,64,96,96", help="the U-Net's block widths (tiny's: 32,64,96,96)")
    parser.add_argument("--unet-heads", type=int, default=2, help="attention heads in the U-Net's transformer blocks")
    parser.add_argument("--vae-from", type=Path, help="take the VAE (and its latent scale) of this folder instead of training one")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="every N U-Net steps, sample --eval-prompts held-out prompts and log the share of colours and shapes drawn")
    parser.add_argument("--eval-prompts", type=int, default=24)
    parser.add_argument("--eval-cfg", type=float, default=7.0, help="CFG of those samples (7: what SD1.5 users sample at)")
    parser.add_argument("--vae-levels", type=int, default=3, help="3: 16×16 latents of 64×64 pictures (SD's VAE has 4)")
    parser.add_argument("--resave", type=Path, help="only write this already trained folder again (in fp16) to --out")
    parser.add_argument("--start-from", type=Path, help="continue from a folder this script wrote (its VAE kept unless --vae-steps > 0)")
    args = parser.parse_args(argv)
    if not 0 <= args.colour_jitter <= 255 or not 0 <= args.saturation_jitter <= 1:
        parser.error("--colour-jitter must be in 0–255 and --saturation-jitter in 0–1")
    if args.te_probe < 0 or args.te_probe_steps < 0:  # a negative weight would teach the text encoder to blur the words
        parser.error("--te-probe and --te-probe-steps must be 0 or more")
    if not 0 <= args.ema < 1:
        parser.error("--ema must be in [0, 1) (0: off)")
    if args.max_unet_minutes < 0:
        parser.error("--max-unet-minutes must be 0 (off) or more")
    if args.cuda_graph and not args.device.startswith("cuda"):
        parser.error("--cuda-graph needs --device cuda")
    import torch  # after the arguments: a refused one costs no torch import

    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        from engine.threads import configure_threads

        log(f"threads: {configure_threads(log=log).describe()}")
    if args.resave:
        return resave(args.resave, args.out)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    started = time.time()

    from engine.models import toy_data
    from engine.models.toy_data import dataset_scenes, draw, shape_mask

    if args.radius:
        toy_data.RADIUS = tuple(float(r) for r in args.radius.split(","))
    toy_data.COLOUR_JITTER, toy_data.SATURATION_JITTER = args.colour_jitter, args.saturation_jitter

    channels = tuple(int(c) for c in args.unet_channels.split(","))
    components = load_components(args.start_from) if args.start_from else build(
        args.seed, args.vae_levels, te_width=args.te_width, te_layers=args.te_layers, te_heads=args.te_heads,
        unet_channels=channels, unet_heads=args.unet_heads)
    if args.start_from and (args.te_width, args.te_layers) != (components["text_encoder"].config.hidden_size,
                                                                components["text_encoder"].config.num_hidden_layers):
        fresh = build(args.seed, args.vae_levels, te_width=args.te_width, te_layers=args.te_layers, te_heads=args.te_heads)
        components["text_encoder"] = fresh["text_encoder"]
        swap_cross_attention_inputs(components["unet"], args.te_width, args.seed)
    if args.max_length:  # saved with the tokenizer: the engine pads to it when it trains and samples
        components["tokenizer"].model_max_length = args.max_length
    origin = vae_origin(args.vae_from) if args.vae_from else None  # read before hours of training, not after
    if args.vae_from:
        components["vae"] = load_components(args.vae_from)["vae"]
        args.vae_steps = 0
    if args.device != "cpu":
        from engine.devices import resolve_device

        args.device = resolve_device(args.device)  # cuda without a GPU: one line, before any work
        for name in ("unet", "vae", "text_encoder"):
            components[name].to(args.device)
    scenes = dataset_scenes(args.seed, args.pool)
    if args.centred:  # every shape at the centre: which shape it is then depends on the word alone
        from dataclasses import replace as replaced

        scenes = [(replaced(scene, cx=0.5, cy=0.5), caption) for scene, caption in scenes]
    pool = pictures_tensor([draw(scene) for scene, _ in scenes])
    captions = [c for _, c in scenes]
    masks = None
    if args.shape_weight != 1.0:
        masks = pictures_tensor([shape_mask(scene).convert("RGB") for scene, _ in scenes])[:, :1] * 0.5 + 0.5
    log(f"{args.pool} pictures drawn in {time.time() - started:.1f} s")

    vae_losses = train_vae(components["vae"], pool, args.vae_steps, args.vae_batch, args.vae_lr, args.seed, args.device) if args.vae_steps else [0.0]
    vae_minutes = (time.time() - started) / 60
    latents = encode_pool(components["vae"], pool, device=args.device)
    if args.vae_steps or not (args.start_from or args.vae_from):  # a kept VAE keeps its latent scale
        components["vae"].register_to_config(scaling_factor=float(1.0 / latents.std()))
    scale = float(components["vae"].config.scaling_factor)
    log(f"latent std {1 / scale:.3f}: scaling_factor {scale:.5f}")
    weights = latent_weights(masks, args.shape_weight, latents.shape[-1]) if masks is not None else None
    from engine.models.toy_data import held_out_prompts

    every_nth = held_out_prompts()[::max(1, len(held_out_prompts()) // max(1, args.eval_prompts))][:args.eval_prompts]
    evals: list[dict] = []
    probe = CaptionProbe(components["text_encoder"].config.hidden_size, args.seed, args.device) if args.te_probe or args.te_probe_steps else None
    probe_losses = pretrain_text_encoder(components, captions, args.te_probe_steps, 64, args.te_lr, args.seed, probe, args.device) \
        if args.te_probe_steps else []
    last: dict = {}  # --ema: the last step's weights (the average is what --out gets)
    unet_losses = train_unet(components, latents * scale, captions, args.unet_steps, args.unet_batch, args.unet_lr, args.seed,
                             attn_lr_mult=args.attn_lr_mult, te_lr=args.te_lr, noise_offset=args.noise_offset, weights=weights,
                             min_snr_gamma=args.min_snr_gamma,
                             eval_every=args.eval_every, evals=evals, debiased=args.debiased, start_eval=bool(args.start_from), device=args.device,
                             evaluate_now=lambda: evaluate(components, every_nth, [1], args.eval_cfg),
                             probe=probe, probe_weight=args.te_probe, fit_head=not args.te_probe_steps, ema_decay=args.ema, last=last,
                             graph=cuda_graph(args.device) if args.cuda_graph else None, max_minutes=args.max_unet_minutes)
    minutes = (time.time() - started) / 60

    mean = lambda values: sum(values) / max(1, len(values))  # noqa: E731
    record = {
        "command": "python bench/pretrain_toy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "pool": args.pool, "radius": list(toy_data.RADIUS),
        "colour_jitter": args.colour_jitter, "saturation_jitter": args.saturation_jitter, "threads": args.threads or "auto", "device": args.device,
        "cuda_graph": args.cuda_graph,
        "torch": torch.__version__, "vae_levels": args.vae_levels,
        "text_encoder": {"width": args.te_width, "layers": args.te_layers, "heads": args.te_heads,
                         "max_length": components["tokenizer"].model_max_length},
        "unet_channels": list(channels), "unet_heads": args.unet_heads, "centred": args.centred,
        "attn_lr_mult": args.attn_lr_mult,
        "te_probe": {"weight": args.te_probe, "steps": args.te_probe_steps,
                     "loss_last_100": mean(probe_losses[-100:])},
        "vae_from": origin,
        "vae": {"steps": args.vae_steps, "batch": args.vae_batch, "lr": args.vae_lr, "loss_first_100": mean(vae_losses[:100]),
                "loss_last_100": mean(vae_losses[-100:]), "minutes": round(vae_minutes, 1)},
        "scaling_factor": scale,
        "unet": {"steps": args.unet_steps, "batch": args.unet_batch, "lr": args.unet_lr, "te_lr": args.te_lr or args.unet_lr, "noise_offset": args.noise_offset,
                 "steps_done": len(unet_losses), "max_minutes": args.max_unet_minutes,
                 "shape_weight": args.shape_weight, "ema": args.ema, "min_snr_gamma": args.min_snr_gamma, "debiased": args.debiased,
                 "loss_first_100": mean(unet_losses[:100]),
                 "loss_last_100": mean(unet_losses[-100:]), "minutes": round(minutes - vae_minutes, 1)},
        "evals": evals,
        "minutes": round(minutes, 1),
    }
    if args.start_from:  # the run it continued, and so on back to the first: the whole recipe
        earlier = args.start_from / "pretrain.json"
        record["from"] = json.loads(earlier.read_text()) if earlier.is_file() else str(args.start_from)
        record["total_minutes"] = round(minutes + float(record["from"].get("total_minutes", record["from"].get("minutes", 0)))
                                        if isinstance(record["from"], dict) else minutes, 1)
    if args.vae_from and not args.start_from:  # the borrowed VAE's training is part of this model's cost
        record["total_minutes"] = round(minutes + origin["minutes"], 1)
    if last:  # written first: save() casts the components to fp16 on the CPU
        averaged = {name: {k: v.clone() for k, v in components[name].state_dict().items()} for name in last}
        for name, state in last.items():
            components[name].load_state_dict(state)
        save(components, last_step_folder(args.out), {**record, "weights": f"the last step's (the --ema {args.ema} average is in {args.out})"})
        for name, state in averaged.items():
            components[name].to(torch.float32).load_state_dict(state)
        components["vae"].to(torch.float32)
        record["last_step_weights"] = str(last_step_folder(args.out))
    save(components, args.out, record)
    log(f"wrote {args.out} in {minutes:.1f} min: {json.dumps(record)}")
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    from engine.errors import CopyloraError

    try:
        sys.exit(main())
    except CopyloraError as exc:  # e.g. --device cuda without a GPU: one line, no traceback
        print(f"pretrain_toy: error: {exc}", file=sys.stderr)
        sys.exit(2)
