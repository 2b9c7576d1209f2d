"""Class (regularisation) images for the DreamBooth-style flow, generated with the base model.

When a project's ``[reg]`` asks for ``num_class_images`` and its folder holds fewer, the missing
ones are generated from the class prompt, each with its own seed, and written one by one
(atomically), so a stopped job keeps what it made and a rerun only makes what is still missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from engine.project.images import image_files

_NAME = re.compile(r"^class-(\d+)\.png$")


def missing_class_images(project) -> int:
    reg = project.reg
    if reg is None or reg.num_class_images <= 0:
        return 0
    folder = project.root / reg.folder
    have = len(image_files(folder)) if folder.is_dir() else 0
    return max(0, reg.num_class_images - have)


def generate_class_images(project, *, progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print,
                          model=None) -> list[Path]:
    import torch

    from engine.files import atomic_write
    from engine.models.loading import load_base_model
    from engine.train.sample import make_scheduler
    from engine.train.trainer import pick_device

    need = missing_class_images(project)
    if need == 0:
        log("class images: none missing")
        return []
    reg, sample = project.reg, project.sample
    folder = project.root / reg.folder
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    first = max(numbers, default=-1) + 1
    device = pick_device(None)
    if model is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        model = load_base_model(project.base_model_path(), project.info.model_family, dtype=dtype, device=device)
    pipe = model.pipeline()
    pipe.scheduler = make_scheduler(sample.sampler, model.scheduler or model.noise_scheduler)
    pipe.set_progress_bar_config(disable=True)
    width, height = (side // 8 * 8 for side in project.train.resolution)
    log(f"generating {need} class image(s) of {reg.class_prompt!r} at {width}x{height} into {folder}")
    written = []
    for i in range(need):
        number = first + i
        generator = torch.Generator(device="cpu").manual_seed(sample.seed + number)
        with torch.no_grad():
            image = pipe(prompt=reg.class_prompt, negative_prompt=sample.negative_prompt or None, width=width, height=height,
                         num_inference_steps=sample.steps, guidance_scale=sample.guidance, generator=generator).images[0]
        path = folder / f"class-{number:04d}.png"
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
        written.append(path)
        if progress is not None:
            progress(i + 1, need)
    return written
