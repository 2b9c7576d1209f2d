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
``pretrain.json`` (the command, seeds, steps, losses, minutes). Regenerate the shipped model
(60.1 minutes on the 2-core CPU it was made on; the defaults are its settings, which it ran as
``--out /tmp/toyrun9/toy --vae-steps 2000 --unet-steps 10000 --unet-batch 16 --te-lr 2e-3 --noise-offset 0.5``):

    OMP_NUM_THREADS=2 python bench/pretrain_toy.py --out engine/models/toy

and the smoke test (seconds): ``python bench/pretrain_toy.py --out /tmp/toy --vae-steps 2 --unet-steps 2 --pool 64``.
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


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def pictures_tensor(pictures) -> "torch.Tensor":  # noqa: F821
    import numpy as np
    import torch

    array = np.stack([np.asarray(p, dtype=np.float32) for p in pictures]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def build(seed: int, vae_levels: int = 3):
    """The toy model's components, untrained: tiny's U-Net (SD1.5's topology), a text encoder
    sized for the toy tokenizer, tiny's scheduler, and a VAE of ``vae_levels`` levels.

    SD's VAE has 4 levels (8× smaller latents). On 64×64 pictures that leaves an 8×8 latent,
    which the U-Net's three downsamplings bring to 1×1, and a VAE that must pack a picture into
    256 numbers; a first run so (30 min) drew washed-out colours (19 % colour accuracy) from a
    VAE that reconstructed purple as gray. With 3 levels (4× smaller, 16×16 latents) both have
    room. LoRAs never touch the VAE, so every LoRA name is still SD1.5's."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models import tiny
    from engine.models.toy import toy_tokenizer

    components = tiny.build_tiny_components(seed)
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
            vocab_size=len(tokenizer), hidden_size=tiny.CLIP_HIDDEN, intermediate_size=tiny.CLIP_HIDDEN * 4,
            num_hidden_layers=tiny.CLIP_LAYERS, num_attention_heads=tiny.CLIP_HEADS, max_position_embeddings=77,
            hidden_act="quick_gelu", projection_dim=tiny.CLIP_HIDDEN, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        components["text_encoder"] = CLIPTextModel(config)
    components["tokenizer"] = tokenizer
    # The pictures are 64×64: the pipeline's default size follows the U-Net's sample size.
    components["unet"].register_to_config(sample_size=64 // 2 ** (vae_levels - 1))
    return components


def train_vae(vae, pool, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    losses = []
    started = time.time()
    for step in range(1, steps + 1):
        index = torch.randint(0, pool.shape[0], (batch,), generator=generator)
        x = pool[index]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        out = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(out, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss))
        if step % 100 == 0 or step == steps:
            log(f"vae step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} ({(time.time() - started) / step:.2f} s/step)")
    vae.eval()
    return losses


def encode_pool(vae, pool, batch: int = 64):
    import torch

    with torch.no_grad():
        return torch.cat([vae.encode(pool[i:i + batch]).latent_dist.mean for i in range(0, pool.shape[0], batch)])


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


def train_unet(components, latents, captions: list[str], steps: int, batch: int, lr: float, seed: int,
               te_lr: float | None = None, noise_offset: float = 0.0, weights=None, min_snr_gamma: float = 0.0) -> list[float]:
    import torch
    from diffusers import DDPMScheduler

    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(seed)
    params = [*unet.parameters(), *text_encoder.parameters()]
    groups = [{"params": list(unet.parameters()), "lr": lr}, {"params": list(text_encoder.parameters()), "lr": te_lr or lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 200) * max(0.1, 1 - s / steps))
    unet.train()
    text_encoder.train()
    losses = []
    started = time.time()
    for step in range(1, steps + 1):
        index = torch.randint(0, latents.shape[0], (batch,), generator=generator)
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        if noise_offset:  # as sd-scripts' noise_offset: see --noise-offset's help
            noise = noise + noise_offset * torch.randn((batch, x0.shape[1], 1, 1), generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        hidden = text_encoder(ids[index])[0]
        pred = unet(noisy, t, hidden).sample
        if weights is None and not min_snr_gamma:
            loss = torch.nn.functional.mse_loss(pred, noise)  # the shipped model's loss, as it was computed
        else:
            per_sample = (((pred - noise) ** 2) * (weights[index] if weights is not None else 1.0)).mean(dim=(1, 2, 3))
            if min_snr_gamma:
                per_sample = per_sample * min_snr_weights(noise_scheduler, t, min_snr_gamma)
            loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss))
        if step % 100 == 0 or step == steps:
            log(f"unet step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} ({(time.time() - started) / step:.2f} s/step)")
    unet.eval()
    text_encoder.eval()
    return losses


def save(components, out: Path, record: dict) -> None:
    """The diffusers folder, weights stored in fp16 (half the size: the shipped model must
    stay small; it loads in fp32 like any fp16 checkpoint), with SHA256SUMS."""
    import torch

    from engine.models.tiny import _pipeline_from

    for name in ("unet", "vae", "text_encoder"):
        components[name].to(torch.float16)
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
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--pool", type=int, default=8192, help="pictures drawn once and trained on")
    # The defaults are the shipped model's run (run 9 in docs/BENCHMARKS.md).
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae-levels", type=int, default=3, help="3: 16×16 latents of 64×64 pictures (SD's VAE has 4)")
    parser.add_argument("--resave", type=Path, help="only write this already trained folder again (in fp16) to --out")
    parser.add_argument("--start-from", type=Path, help="continue from a folder this script wrote (its VAE kept unless --vae-steps > 0)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.resave:
        return resave(args.resave, args.out)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    started = time.time()

    from engine.models.toy_data import dataset_scenes, draw, shape_mask

    components = load_components(args.start_from) if args.start_from else build(args.seed, args.vae_levels)
    scenes = dataset_scenes(args.seed, args.pool)
    pool = pictures_tensor([draw(scene) for scene, _ in scenes])
    captions = [c for _, c in scenes]
    masks = None
    if args.shape_weight != 1.0:
        masks = pictures_tensor([shape_mask(scene).convert("RGB") for scene, _ in scenes])[:, :1] * 0.5 + 0.5
    log(f"{args.pool} pictures drawn in {time.time() - started:.1f} s")

    vae_losses = train_vae(components["vae"], pool, args.vae_steps, args.vae_batch, args.vae_lr, args.seed) if args.vae_steps else [0.0]
    vae_minutes = (time.time() - started) / 60
    latents = encode_pool(components["vae"], pool)
    if args.vae_steps or not args.start_from:  # a kept VAE keeps its latent scale
        components["vae"].register_to_config(scaling_factor=float(1.0 / latents.std()))
    scale = float(components["vae"].config.scaling_factor)
    log(f"latent std {1 / scale:.3f}: scaling_factor {scale:.5f}")
    weights = latent_weights(masks, args.shape_weight, latents.shape[-1]) if masks is not None else None
    unet_losses = train_unet(components, latents * scale, captions, args.unet_steps, args.unet_batch, args.unet_lr, args.seed,
                             te_lr=args.te_lr, noise_offset=args.noise_offset, weights=weights, min_snr_gamma=args.min_snr_gamma)
    minutes = (time.time() - started) / 60

    mean = lambda values: sum(values) / max(1, len(values))  # noqa: E731
    record = {
        "command": "python bench/pretrain_toy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "pool": args.pool, "threads": args.threads, "torch": torch.__version__, "vae_levels": args.vae_levels,
        "vae": {"steps": args.vae_steps, "batch": args.vae_batch, "lr": args.vae_lr, "loss_first_100": mean(vae_losses[:100]),
                "loss_last_100": mean(vae_losses[-100:]), "minutes": round(vae_minutes, 1)},
        "scaling_factor": scale,
        "unet": {"steps": args.unet_steps, "batch": args.unet_batch, "lr": args.unet_lr, "te_lr": args.te_lr or args.unet_lr, "noise_offset": args.noise_offset,
                 "shape_weight": args.shape_weight, "min_snr_gamma": args.min_snr_gamma,
                 "loss_first_100": mean(unet_losses[:100]),
                 "loss_last_100": mean(unet_losses[-100:]), "minutes": round(minutes - vae_minutes, 1)},
        "minutes": round(minutes, 1),
    }
    save(components, args.out, record)
    log(f"wrote {args.out} in {minutes:.1f} min: {json.dumps(record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
