"""A full-size SD1.5 (or SDXL) diffusers folder with random weights, built from the shipped configs.

Real checkpoints cannot be downloaded on the machines this project is built on, but the
full-size *shapes* are what GPU memory, speed and the loading code care about. The folder is
the layout a user's downloaded diffusers model has (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/), written as fp16 safetensors like the published ones.

The tokenizer is a stand-in with CLIP's vocabulary size (49408 tokens, a valid BPE: bytes,
bytes+</w>, 48894 two-symbol merges, the two specials), since CLIP's own vocabulary files are
not on these machines either; with random weights the tokens mean nothing anyway.

    python bench/random_model.py /tmp/sd15-random [--device cuda] [--family sdxl]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

CLIP_VOCAB_SIZE = 49408


def stand_in_merges(count: int) -> list[str]:
    """``count`` distinct two-symbol merges over CLIP's byte alphabet (each makes a new token)."""
    from engine.models.tiny import byte_symbols

    symbols = byte_symbols()
    merges = [f"{a} {b}" for a in symbols for b in symbols]
    if count > len(merges):
        raise ValueError(f"at most {len(merges)} two-symbol merges")
    return merges[:count]


def stand_in_tokenizer():
    from transformers import CLIPTokenizer

    from engine.models.tiny import byte_symbols, clip_vocab

    merges = stand_in_merges(CLIP_VOCAB_SIZE - 2 * len(byte_symbols()) - 2)
    tokenizer = CLIPTokenizer(vocab=clip_vocab(merges), merges=[tuple(m.split()) for m in merges], model_max_length=77)
    assert len(tokenizer) == CLIP_VOCAB_SIZE, len(tokenizer)
    return tokenizer


def configs_dir(family: str = "sd1") -> Path:
    import engine.models

    return Path(engine.models.__file__).parent / "configs" / family


def build_random_sd15(dest: str | Path, *, device: str = "cpu", seed: int = 0, log=print) -> Path:
    """Write a random-weight full-size SD1.5 diffusers folder to ``dest`` (fp16 safetensors).

    ``device="cuda"`` draws the random weights on the GPU (seconds instead of a minute)."""
    return build_random(dest, "sd1", device=device, seed=seed, log=log)


def build_random(dest: str | Path, family: str = "sd1", *, device: str = "cpu", seed: int = 0, log=print) -> Path:
    """A random-weight full-size diffusers folder of ``family`` ("sd1" or "sdxl": SDXL's two text
    encoders and tokenizers) from the shipped configs, as fp16 safetensors."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    dest = Path(dest)
    cfg = configs_dir(family)
    started = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    builders = {
        "unet": lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet")),
        "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae")),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")),
    }
    if family == "sdxl":
        builders["text_encoder_2"] = lambda: CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg / "text_encoder_2"))
    for name, build in builders.items():  # one at a time: SDXL's U-Net alone is 2.6 G parameters
        with torch.device(device):
            module = build()
        module.to(torch.float16).save_pretrained(dest / name, safe_serialization=True)
        log(f"  {name}: {sum(p.numel() for p in module.parameters()) / 1e6:.0f} M parameters")
        del module
    tokenizer = stand_in_tokenizer()
    tokenizer.save_pretrained(dest / "tokenizer")
    if family == "sdxl":
        tokenizer.pad_token = "!"  # SDXL's second tokenizer pads with "!" (its shipped config)
        tokenizer.save_pretrained(dest / "tokenizer_2")
    shutil.copytree(cfg / "scheduler", dest / "scheduler", dirs_exist_ok=True)
    shutil.copy(cfg / "model_index.json", dest / "model_index.json")
    log(f"random full-size {family} written to {dest} in {time.perf_counter() - started:.1f} s")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default="sd1", choices=("sd1", "sdxl"))
    args = parser.parse_args(argv)
    build_random(args.dest, args.family, device=args.device, seed=args.seed)
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    raise SystemExit(main())
