"""Class (regularisation) images for the DreamBooth-style flow, generated with the base model.

When a project's ``[reg]`` (or one of its ``[[concept]]``) asks for ``num_class_images`` and its
folder holds fewer, the missing ones are generated from its class prompt, each with its own
seed, and written one by one (atomically), so a stopped job keeps what it made and a rerun only
makes what is still missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def missing_class_images(project) -> int:
    """Class pictures still to generate, over [reg]'s folder and every concept's."""
    from engine.project.concepts import class_sets

    return sum(s.missing() for s in class_sets(project))


def generate_class_images(project, *, progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print,
                          model=None) -> list[Path]:
    """Each class folder's missing pictures, from its own class prompt; ``progress`` counts over
    all of them."""
    import torch

    from engine.devices import resolve_device
    from engine.files import atomic_write
    from engine.models.loading import load_base_model
    from engine.project.concepts import class_picture_size, class_sets
    from engine.train.sample import guidance_rescale, make_scheduler

    todo = [(s, s.missing()) for s in class_sets(project) if s.missing()]
    need = sum(n for _, n in todo)
    if need == 0:
        log("class images: none missing")
        return []
    sample = project.sample
    device = resolve_device(None, model)
    if model is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        model = load_base_model(project.base_model_path(), project.info.model_family, dtype=dtype, device=device)
    pipe = model.pipeline()
    pipe.scheduler = make_scheduler(sample.sampler, model.scheduler or model.noise_scheduler)
    pipe.set_progress_bar_config(disable=True)
    width, height = class_picture_size(project)
    written: list[Path] = []
    for class_set, count in todo:
        folder = class_set.folder
        folder.mkdir(parents=True, exist_ok=True)
        log(f"generating {count} class image(s) of {class_set.prompt!r} at {width}x{height} into {folder} ({class_set.key})")
        for path in class_set.generated_paths():  # the names the plan counted the epoch's batches with
            number = int(path.stem.split("-")[1])
            generator = torch.Generator(device="cpu").manual_seed(sample.seed + number)
            with torch.no_grad():
                image = pipe(prompt=class_set.prompt, negative_prompt=sample.negative_prompt or None, width=width, height=height,
                             num_inference_steps=sample.steps, guidance_scale=sample.guidance, generator=generator,
                             guidance_rescale=guidance_rescale(model)).images[0]
            atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
            written.append(path)
            if progress is not None:
                progress(len(written), need)
    return written
