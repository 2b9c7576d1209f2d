"""kohya-ss/sd-scripts' ``train_network.py`` beside copylora (issue 26): the same base model, the
same teacher picture at the same training size, the same settings (rank 8, alpha 1, fp16,
AdamW8bit, latents cached, SDPA, batch 1, U-Net only, caption-free), its steps/s beside ours.

sd-scripts is not a dependency: point ``--kohya`` of ``bench/gpu_acceptance.py`` (or
:func:`run_kohya`) at a checkout of it (``train_network.py``, ``library/``, ``networks/``) and
give it its packages (``requirements.txt``: accelerate, diffusers, transformers, ...) on
``PYTHONPATH`` or in the environment. Its ``import cv2`` is only for resizing and colour
augmentation: with the picture already at the training size and no augmentation, a stand-in
module (:func:`cv2_stand_in`) lets it run where opencv (60 MB) cannot be carried; any cv2 call
it would really need raises, naming itself.

The rate read back is tqdm's from its progress bar (``steps: 100%|…| 60/60 [00:12<00:00,
4.85it/s, avr_loss=…]``): the last one shown (an average over the recent steps) and the whole
bar's (steps / elapsed, the first steps included).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

# The settings both trainers use (the issue's): what the copy-machine recipe trains with on a GPU.
SETTINGS = {"rank": 8, "alpha": 1.0, "learning_rate": 1e-4, "seed": 42}

_BAR = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<[^,\]]*,\s*([\d.]+)(it/s|s/it)")

# Stand-ins for what sd-scripts imports but this run does not need, used only where the real
# package is missing (opencv-python is 60 MB, more than a device call may carry; a torchvision
# that does not match the box's torch fails to import at all). cv2: resizing and colour
# augmentation, none of which this run does (the picture is at the training size already);
# any call raises, naming itself. torchvision: the two transforms its image loading uses,
# ToTensor and Normalize, written out as torchvision defines them; anything else raises.
STAND_INS = {
    "cv2.py": '''"""copylora's stand-in for opencv (bench/kohya_side_by_side.py): every call raises."""
INTER_AREA, INTER_LINEAR, INTER_CUBIC, INTER_LANCZOS4, INTER_NEAREST, INTER_NEAREST_EXACT = 3, 1, 2, 4, 0, 6
COLOR_BGR2RGB = COLOR_RGB2BGR = COLOR_BGRA2RGBA = COLOR_RGBA2BGRA = COLOR_BGR2HSV = COLOR_HSV2BGR = 0
IMREAD_UNCHANGED = -1


def __getattr__(name):
    def missing(*args, **kwargs):
        raise RuntimeError(f"cv2.{name} was called: this run needs the real opencv-python")
    return missing
''',
    "torchvision/__init__.py": '''"""copylora's stand-in for torchvision (bench/kohya_side_by_side.py): transforms only."""
from . import transforms  # noqa: F401
''',
    "torchvision/transforms/__init__.py": '''"""ToTensor and Normalize as torchvision defines them; nothing else."""
import numpy as np
import torch

from . import functional  # noqa: F401


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class ToTensor:
    """HWC uint8 (a PIL image or an array) -> CHW float in [0, 1]."""

    def __call__(self, picture):
        array = np.asarray(picture)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, tensor):
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return (tensor - mean) / std


def __getattr__(name):
    raise AttributeError(f"torchvision.transforms.{name}: this run needs the real torchvision")
''',
    "torchvision/transforms/functional.py": '''"""Nothing of torchvision.transforms.functional: every call raises."""


def __getattr__(name):
    def missing(*args, **kwargs):
        raise RuntimeError(f"torchvision.transforms.functional.{name} was called: this run needs the real torchvision")
    return missing
''',
}


def stand_ins(folder: Path, python: str = sys.executable) -> tuple[Path, list[str]]:
    """A folder of the stand-ins for what ``python`` cannot import, to put on ``PYTHONPATH``; their names."""
    used = []
    for module in ("cv2", "torchvision"):
        found = subprocess.run([python, "-c", f"import {module}.transforms" if module == "torchvision" else f"import {module}"],
                               capture_output=True, timeout=120)
        if found.returncode == 0:
            continue
        used.append(module)
        for path, source in STAND_INS.items():
            if path.split("/")[0].removesuffix(".py") == module:
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                (folder / path).write_text(source)
    return folder, used


def kohya_dataset(folder: Path, picture: Path, size: tuple[int, int]) -> Path:
    """sd-scripts' folder layout (``N_name``: N repeats) with A's picture at the training size
    (as copylora crops it: no resize left for sd-scripts to do) and an empty caption."""
    from PIL import Image

    from engine.project.plan import bucket_size

    images = folder / "1_"  # no class word and no caption file: the empty caption (an empty .txt is refused)
    images.mkdir(parents=True, exist_ok=True)
    with Image.open(picture) as opened:
        image = opened.convert("RGB")
    width, height = bucket_size(image.width, image.height, list(size))
    scale = max(width / image.width, height / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image.crop((left, top, left + width, top + height)).save(images / "a.png")
    return folder


def kohya_tokenizers(folder: Path, base: Path) -> Path | None:
    """sd-scripts takes SD1.5's tokenizer from the Hub (``openai/clip-vit-large-patch14``) unless
    its ``--tokenizer_cache_dir`` holds it: there, the base model's own (the same tokenizer for a
    real SD1.5; the boxes this runs on have no Hub)."""
    import shutil

    if not (base / "tokenizer").is_dir():
        return None  # a single-file checkpoint: its tokenizer is the Hub's, as for any sd-scripts user
    target = folder / "openai_clip-vit-large-patch14"
    if not target.exists():
        shutil.copytree(base / "tokenizer", target)
        _slow_files(target)
    return folder


def _slow_files(folder: Path) -> None:
    """vocab.json and merges.txt from tokenizer.json: newer transformers save only the latter,
    and sd-scripts' (4.x) CLIPTokenizer reads only the former."""
    import json

    if (folder / "vocab.json").exists() or not (folder / "tokenizer.json").exists():
        return
    model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def kohya_command(sd_scripts: Path, base: str, data: Path, out: Path, *, size: tuple[int, int], steps: int, precision: str,
                  optimizer: str, cuda: bool, python: str = sys.executable, tokenizers: Path | None = None) -> list[str]:
    """``train_network.py``'s command line for the side-by-side run."""
    command = [python, str(sd_scripts / "train_network.py"), "--pretrained_model_name_or_path", base,
               "--train_data_dir", str(data), "--resolution", f"{size[0]},{size[1]}", "--output_dir", str(out),
               "--output_name", "kohya_a", "--save_model_as", "safetensors", "--network_module", "networks.lora",
               "--network_dim", str(SETTINGS["rank"]), "--network_alpha", str(SETTINGS["alpha"]), "--network_train_unet_only",
               "--learning_rate", str(SETTINGS["learning_rate"]), "--lr_scheduler", "constant", "--optimizer_type", optimizer,
               "--train_batch_size", "1", "--max_train_steps", str(steps), "--seed", str(SETTINGS["seed"]),
               "--caption_extension", ".txt", "--max_data_loader_n_workers", "0", "--cache_latents", "--sdpa"]
    if tokenizers is not None:
        command += ["--tokenizer_cache_dir", str(tokenizers)]
    if precision in ("fp16", "bf16"):
        command += ["--mixed_precision", precision]
    if not cuda:  # its defaults expect a GPU: on the CPU (the smoke) ask for fp32 and no 8-bit optimizer
        command[command.index("--optimizer_type") + 1] = "AdamW"
    return command


def parse_rate(output: str) -> dict:
    """tqdm's rate from the output: the last one shown, and steps / elapsed of the whole bar."""
    last = None
    for match in _BAR.finditer(output.replace("\r", "\n")):
        last = match
    if last is None:
        return {"it_per_s_last": None, "it_per_s_average": None, "steps_seen": None}
    done, _total, hours, minutes, seconds, value, unit = last.groups()
    rate = float(value) if unit == "it/s" else 1 / float(value)
    elapsed = int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)
    return {"it_per_s_last": round(rate, 2), "it_per_s_average": round(int(done) / elapsed, 2) if elapsed else None,
            "steps_seen": int(done)}


def run_kohya(sd_scripts: Path, base: str, picture: Path, work: Path, *, size: tuple[int, int], steps: int, precision: str,
              optimizer: str, timeout: float, site: Path | None = None, python: str = sys.executable, log=print) -> dict:
    """Train A's LoRA with sd-scripts; what it took and its rate. ``site``: a folder of its
    packages (installed from carried wheels), put first on its ``PYTHONPATH``."""
    import torch

    sd_scripts = Path(sd_scripts).resolve()
    if not (sd_scripts / "train_network.py").is_file():
        raise FileNotFoundError(f"no train_network.py in {sd_scripts}: give --kohya a checkout of kohya-ss/sd-scripts")
    cuda = torch.cuda.is_available()
    data = kohya_dataset(work / "kohya-data", picture, size)
    tokenizers = kohya_tokenizers(work / "kohya-tokenizers", Path(base))
    out = work / "kohya-out"
    command = kohya_command(sd_scripts, base, data, out, size=size, steps=steps, precision=precision, optimizer=optimizer, cuda=cuda,
                            python=python, tokenizers=tokenizers)
    paths = [str(site)] if site else []
    folder, stood_in = stand_ins(work / "stand-ins", python)
    paths.append(str(folder))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([*paths, str(sd_scripts), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    log("$ " + " ".join(command))
    started = time.perf_counter()
    done = subprocess.run(command, cwd=sd_scripts, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    facts = {"exit_code": done.returncode, "run_seconds": round(seconds, 1), "command": " ".join(command[1:]), **parse_rate(output),
             "lora_written": (out / "kohya_a.safetensors").is_file(), "stand_ins": stood_in}
    if done.returncode != 0 or not facts["lora_written"]:
        facts["output_tail"] = output.replace("\r", "\n").splitlines()[-30:]
        raise RuntimeError(f"train_network.py failed (exit {done.returncode}): " + " | ".join(facts["output_tail"][-3:]))
    return facts
