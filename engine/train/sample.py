"""Preview images: the same prompt and seed with the LoRA at several strengths, side by side.

This is how a copy-machine LoRA is checked: strength 0.0 is the base model, 1.0 applies the
change (e.g. colour → monochrome), and everything else in the picture should stay put because
the seed is the same. The LoRA is applied with our own network (the code training uses), and
the grid PNG carries its parameters as PNG text (``copylora`` as JSON, and ``parameters`` in
A1111's format so image viewers and web UIs show them).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from engine.errors import InputError

if TYPE_CHECKING:
    from engine.models.loading import BaseModel

# name (engine.project.params.SAMPLERS) -> (diffusers scheduler, A1111's label, its settings). The
# Karras ones are diffusers' documented equivalents of A1111's "DPM++ 2M Karras" and "DPM++ SDE
# Karras"; the SDE one draws its noise through torchsde's Brownian tree.
SAMPLERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "euler_a": ("EulerAncestralDiscreteScheduler", "Euler a", {}),
    "euler": ("EulerDiscreteScheduler", "Euler", {}),
    "ddim": ("DDIMScheduler", "DDIM", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", "DPM++ 2M", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", "DPM++ 2M Karras", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpmpp_sde_karras": ("DPMSolverSDEScheduler", "DPM++ SDE Karras", {"use_karras_sigmas": True}),
    "pndm": ("PNDMScheduler", "PNDM", {}),
    "lms": ("LMSDiscreteScheduler", "LMS", {}),
    "heun": ("HeunDiscreteScheduler", "Heun", {}),
    # the rest of sd-scripts' sample_sampler names, as it configures them
    "dpmsolver": ("DPMSolverMultistepScheduler", "DPM 2M", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),  # diffusers: "zero" is for ++
    "dpmsingle": ("DPMSolverSinglestepScheduler", "DPM++ single", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", "DPM2", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", "DPM2 a", {}),
}


class SampleError(InputError):
    pass


@dataclass
class SampleSettings:
    prompts: list[str] = field(default_factory=lambda: [""])
    negative_prompt: str = ""
    seed: int = 1234
    steps: int = 20
    guidance: float = 7.0
    size: list[int] = field(default_factory=lambda: [512, 768])
    strengths: list[float] = field(default_factory=lambda: [0.0, 1.0])
    sampler: str = "euler_a"
    # The CLIP layer prompts are read from, as the LoRA trained ([train] clip_skip): previews of an
    # anime base trained at clip skip 2 were drawn at 1, unlike kohya's samples and A1111.
    clip_skip: int = 1

    @classmethod
    def from_params(cls, params, clip_skip: int = 1) -> "SampleSettings":
        """From a project's [sample] table (engine.project.params.SampleParams) and [train] clip_skip."""
        return cls(**{k: getattr(params, k) for k in cls.__dataclass_fields__ if hasattr(params, k)}, clip_skip=clip_skip)


# A full-size SD1.5 preview as set by default (600x900, 20 steps, two strengths) took 17 minutes
# on a 2-core CPU, 35x the three training steps before it. Without CUDA, project previews are
# drawn within this area and step count unless [sample] cpu_full_size = true.
CPU_MAX_PIXELS = 384 * 384
CPU_MAX_STEPS = 10


def preview_settings(params, device: str, clip_skip: int = 1) -> tuple[SampleSettings, str | None]:
    """The settings a project's preview uses on ``device``, and a line for the log when they
    differ from [sample] (``params``: a SampleParams; ``clip_skip``: the training's)."""
    settings = SampleSettings.from_params(params, clip_skip)
    if str(device).startswith("cuda") or getattr(params, "cpu_full_size", False):
        return settings, None
    width, height = settings.size
    steps = min(settings.steps, CPU_MAX_STEPS)
    if width * height > CPU_MAX_PIXELS:
        factor = math.sqrt(CPU_MAX_PIXELS / (width * height))
        width, height = (max(64, int(side * factor) // 8 * 8) for side in (width, height))
    if [width, height] == list(settings.size) and steps == settings.steps:
        return settings, None
    note = (f"no CUDA: preview drawn at {width}x{height}, {steps} steps instead of "
            f"{settings.size[0]}x{settings.size[1]}, {settings.steps} steps (set [sample] cpu_full_size = true to draw it as set)")
    return replace(settings, size=[width, height], steps=steps), note


def make_scheduler(name: str, base_scheduler, seed: int = 0):
    """The diffusers scheduler of sampler ``name`` (any spelling canonical_sampler reads), configured
    as the base model's. ``seed``: the SDE sampler's Brownian noise, so a grid draws the same twice."""
    import diffusers

    from engine.project.params import canonical_sampler, sampler_hint

    canonical = canonical_sampler(name)
    if canonical is None:
        raise SampleError(f"unknown sampler {name!r}{sampler_hint(name)}")
    class_name, _, settings = SAMPLERS[canonical]
    if class_name == "DPMSolverSDEScheduler":
        settings = {**settings, "noise_sampler_seed": seed}
        try:
            import torchsde  # noqa: F401
        except ImportError:
            raise SampleError(f"sampler {canonical} needs the torchsde package: pip install torchsde") from None
    cls = getattr(diffusers, class_name)
    if base_scheduler.config.get("rescale_betas_zero_snr") and not _zero_snr_able(cls):
        fit = ", ".join(n for n, (c, _, _) in SAMPLERS.items() if _zero_snr_able(getattr(diffusers, c)))
        raise SampleError(f"sampler {canonical} cannot draw from this model's zero-terminal-SNR schedule (diffusers' {class_name} "
                          f"has no rescale_betas_zero_snr; it would draw from another schedule than the model's): use one of {fit}")
    return cls.from_config(base_scheduler.config, **settings)


def _zero_snr_able(cls) -> bool:
    import inspect

    return "rescale_betas_zero_snr" in inspect.signature(cls.__init__).parameters


# Guidance rescale φ for a zero-terminal-SNR model: Lin et al. 2023 ("Common Diffusion Noise
# Schedules and Sample Steps are Flawed", §3.4), whose value diffusers' pipelines document for
# such models; classifier-free guidance over-exposes their pictures otherwise. Other models: 0,
# the pipelines' default (previews drawn as before).
ZERO_SNR_GUIDANCE_RESCALE = 0.7


def guidance_rescale(model: BaseModel) -> float:
    return ZERO_SNR_GUIDANCE_RESCALE if getattr(model, "zero_snr", False) else 0.0


# Prompts drawn at once share each U-Net call (one picture at a time leaves a small model
# waiting on per-call overhead: the toy's 64×64 effect benchmark drew ~15× faster in batches).
# Bounded by pixels so a full-size SD1.5/SDXL preview still draws one picture at a time (its
# memory, not the call overhead, is what counts there).
BATCH_PIXELS = 1024 * 1024


def sample_batch(settings: SampleSettings) -> int:
    """How many prompts ``generate`` draws in one call: as many as fit BATCH_PIXELS; one with
    the SDE sampler, whose Brownian noise is drawn for the whole batch (a prompt's picture would
    then depend on the prompts beside it)."""
    from engine.project.params import canonical_sampler

    if canonical_sampler(settings.sampler) == "dpmpp_sde_karras":
        return 1
    width, height = settings.size
    return max(1, BATCH_PIXELS // max(1, width * height))


def generate(model: BaseModel, settings: SampleSettings, network=None, *, device: str | None = None,
             progress: Callable[[int, int], None] | None = None, batch: int | None = None) -> list[list]:
    """Images[prompt][strength]. ``network`` (a LoRANetwork on ``model``) is applied at each
    strength and left as it was found (applied or not, at its old multiplier).

    The caller's random state is untouched: every image has its own generator from the seed,
    and the global RNG is forked, so sampling in the middle of training changes nothing there.
    Prompts are drawn ``batch`` at a time (default :func:`sample_batch`); each picture still
    draws its noise from its own generator, so it is the picture drawn alone, up to the float
    rounding of a batched matmul.
    """
    import torch

    width, height = settings.size
    if width % 8 or height % 8:
        raise SampleError(f"sample size {width}x{height}: both sides must be multiples of 8")
    device = device or str(model.unet.device)
    batch = max(1, batch or sample_batch(settings))
    pipe = model.pipeline()
    pipe.scheduler = make_scheduler(settings.sampler, model.scheduler or model.noise_scheduler, settings.seed)
    pipe.set_progress_bar_config(disable=True)
    was_training = model.unet.training
    vae_device = model.vae.device
    model.vae.to(device)
    model.unet.eval()
    hooked = network is not None and any(lora._hook is not None for lora in network.loras())
    old_multiplier = network.multiplier if network is not None else None
    images: list[list] = [[None] * len(settings.strengths) for _ in settings.prompts]
    total, done = len(settings.prompts) * len(settings.strengths), 0
    # a LoRA of the text encoder changes the conditioning at each strength: encoded there (below)
    on_text = network is not None and len(network.text_encoder_loras) > 0
    embedded, negative = (None, None) if on_text else _own_encoding(model, pipe, settings)
    by_strength: dict[float, tuple] = {}  # with a text encoder LoRA: each strength's encoding, made once
    try:
        if network is not None and not hooked:
            network.apply_to()
        with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []), torch.no_grad():
            for first in range(0, len(settings.prompts), batch):
                chunk = settings.prompts[first:first + batch]
                for column, strength in enumerate(settings.strengths):
                    if network is not None:
                        network.set_multiplier(float(strength))
                    if on_text:
                        if strength not in by_strength:
                            by_strength[strength] = _own_encoding(model, pipe, settings)
                        embedded, negative = by_strength[strength]
                    texts = embedded[first:first + len(chunk)] if embedded else None
                    result = pipe(
                        **(_prompt_arguments(texts, negative) if texts else
                           {"prompt": list(chunk),
                            "negative_prompt": [settings.negative_prompt] * len(chunk) if settings.negative_prompt else None}),
                        num_inference_steps=settings.steps,
                        guidance_scale=settings.guidance,
                        guidance_rescale=guidance_rescale(model),
                        width=width,
                        height=height,
                        generator=[torch.Generator(device="cpu").manual_seed(settings.seed) for _ in chunk],
                        output_type="pil",
                    )
                    for offset, image in enumerate(result.images):
                        images[first + offset][column] = image
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    finally:
        if network is not None:
            network.set_multiplier(old_multiplier)
            if not hooked:
                network.remove()
        model.vae.to(vae_device)
        model.unet.train(was_training)
    return images


# Tokens of a preview prompt read at most: kohya's samples read three chunks of 75 (its LPW
# pipeline); A1111 reads on, in chunks.
PREVIEW_MAX_TOKENS = 225


def _own_encoding(model: BaseModel, pipe, settings: SampleSettings, force: bool = False) -> tuple[list | None, Any]:
    """The prompts' (and negative prompt's) conditioning when the pipeline's own would differ from
    how the LoRA trained and A1111 draws: clip skip past 1, or a prompt past 75 tokens (read in
    chunks, up to PREVIEW_MAX_TOKENS, as engine.train.conditioning joins them). (None, None): the
    pipeline encodes them itself, as it always has."""
    import torch

    from engine.train.conditioning import CHUNK_TOKENS, encode_text, prompt_tokens

    if not settings.prompts:
        return None, None
    tokenizer = model.tokenizers[0] if model.tokenizers else None
    texts = [*settings.prompts, settings.negative_prompt]
    longest = max((prompt_tokens(tokenizer, text) for text in texts), default=0) if tokenizer is not None else 0
    room = (tokenizer.model_max_length - 2) if tokenizer is not None else CHUNK_TOKENS
    if settings.clip_skip <= 1 and longest <= room and not force:
        return None, None
    chunks = min(PREVIEW_MAX_TOKENS // CHUNK_TOKENS, max(1, -(-longest // room)))
    tokens = chunks * CHUNK_TOKENS
    with torch.no_grad():
        embedded = [encode_text(model, prompt, settings.clip_skip, max_tokens=tokens) for prompt in settings.prompts]
        if model.is_sdxl and not settings.negative_prompt and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            first = embedded[0]  # SDXL's pipeline leaves an empty negative prompt as zeros: so does this
            negative = type(first)(torch.zeros_like(first.hidden), torch.zeros_like(first.pooled))
        else:
            negative = encode_text(model, settings.negative_prompt, settings.clip_skip, max_tokens=tokens)
    return embedded, negative


def _prompt_arguments(texts: list, negative) -> dict[str, Any]:
    """The pipeline's keyword arguments for prompts encoded here (a batch of them)."""
    import torch

    arguments = {"prompt_embeds": torch.cat([t.hidden for t in texts]),
                 "negative_prompt_embeds": torch.cat([negative.hidden] * len(texts))}
    if texts[0].pooled is not None:  # SDXL
        arguments["pooled_prompt_embeds"] = torch.cat([t.pooled for t in texts])
        arguments["negative_pooled_prompt_embeds"] = torch.cat([negative.pooled] * len(texts))
    return arguments


def grid(images: list[list], settings: SampleSettings, title: str = "", columns: list[str] | None = None,
         log: Callable[[str], None] | None = None):
    """A labelled grid: one row per prompt, one column per strength (or per ``columns`` label).
    Labels wrap (or shrink) to fit their cells, whatever the cell size (engine.train.grid_labels);
    ``log`` is told when some of their characters no font here draws (engine.train.label_fonts)."""
    from PIL import Image, ImageDraw

    from engine.train.grid_labels import FONT_SIZES, draw_labels, grid_layout
    from engine.train.label_fonts import undrawable_note

    strength_columns, rows = _labels(settings)
    columns = columns or strength_columns
    layout = grid_layout(images[0][0].size, title, columns, rows)
    if log is not None:
        note = undrawable_note([title, *columns, *rows], FONT_SIZES[0])
        if note:
            log(note)
    canvas = Image.new("RGB", layout.size, "white")
    draw_labels(ImageDraw.Draw(canvas), layout)
    for row, places in zip(images, layout.cells):
        for image, place in zip(row, places):
            canvas.paste(image, place)
    return canvas


def _labels(settings: SampleSettings) -> tuple[list[str], list[str]]:
    """The grid's column and row labels (strengths, prompts)."""
    columns = [f"strength {strength:g}" for strength in settings.strengths]
    rows = [f"prompt: {prompt!r}" if prompt else "prompt: (empty)" for prompt in settings.prompts]  # '' read as one "
    return columns, rows


def grid_size_problem(settings: SampleSettings, title: str) -> str | None:
    """Why the grid of ``settings`` would be a PNG that Pillow refuses to open, or None: said
    before any picture is drawn. [sample]'s own check (engine.project.folder.MOST_GRID_PIXELS)
    counts the pictures alone; the label bands above each row and column add to them, so 16
    prompts x 16 strengths at 832x832 (177 MP of pictures) made a 181 MP grid that Pillow (the
    app's preview pane, A1111's and ComfyUI's loaders) would not open."""
    from engine.project.folder import MOST_GRID_PIXELS
    from engine.train.grid_labels import grid_layout

    width, height = grid_layout((settings.size[0], settings.size[1]), title, *_labels(settings)).size
    if width * height <= MOST_GRID_PIXELS:
        return None
    return (f"{len(settings.prompts)} prompt(s) x {len(settings.strengths)} strength(s) at {settings.size[0]}x{settings.size[1]} "
            f"make a {width}x{height} grid with its labels ({width * height / 1e6:.0f} megapixels): at most "
            f"{MOST_GRID_PIXELS // 1_000_000} megapixels, which Pillow still opens; draw several grids")


def sampler_label(name: str) -> str:
    """A1111's name of a sampler ("DPM++ 2M Karras"), as its infotext writes it."""
    from engine.project.params import canonical_sampler

    canonical = canonical_sampler(name)
    return SAMPLERS[canonical][1] if canonical else name


def _quoted(value: str) -> str:
    """A value of the infotext's last line as A1111 writes it (its ``quote``): in JSON quotes when
    it holds a comma, colon or newline. Unquoted, "Strengths: 0, 0.5, 1" was read back (A1111's
    PNG Info, Civitai, any reader of the format) as "Strengths: 0"."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def a1111_parameters(settings: SampleSettings, prompt: str, model_name: str, lora_name: str) -> str:
    width, height = settings.size
    return (
        f"{prompt}\nNegative prompt: {settings.negative_prompt}\n"
        f"Steps: {settings.steps}, Sampler: {sampler_label(settings.sampler)}, CFG scale: {settings.guidance:g}, "
        f"Seed: {settings.seed}, Size: {width}x{height}, Model: {_quoted(model_name)}, "
        f"LoRA: {_quoted(lora_name)}, Strengths: {_quoted(', '.join(f'{s:g}' for s in settings.strengths))}"
        + (f", Clip skip: {settings.clip_skip}" if settings.clip_skip > 1 else "")
    )


def save_grid(image, path: Path, settings: SampleSettings, *, model_name: str, lora_name: str, extra: dict | None = None) -> Path:
    """Write the PNG atomically with its parameters as text chunks."""
    from PIL.PngImagePlugin import PngInfo

    from engine.files import atomic_write

    info = PngInfo()
    record = {"settings": asdict(settings), "model": model_name, "lora": lora_name, "created": time.time(), **(extra or {})}
    info.add_text("copylora", json.dumps(record))
    info.add_text("parameters", a1111_parameters(settings, settings.prompts[0], model_name, lora_name))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    return path


def read_grid_parameters(path: Path) -> dict:
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.info["copylora"])  # PNG text chunks, read before the pixels


def sample_with_network(model: BaseModel, network, settings: SampleSettings, out_path: Path, *, model_name: str, title: str = "",
                        extra: dict | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Grid of a LoRA network that is being trained (used by the trainer's previews)."""
    images = generate(model, settings, network)
    return save_grid(grid(images, settings, title, log=log), out_path, settings, model_name=model_name, lora_name=title, extra=extra)


# Kana, kanji (CJK ideographs), hangul, half-width katakana: scripts CLIP's tokenizer has almost
# no words of, so it reads them as UTF-8 byte pieces, three or so a character.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff66-\uff9f]")
_A1111_SYNTAX = re.compile(r"\([^()]*:\s*-?[\d.]+\s*\)|<(lora|lyco|hypernet):[^>]*>|\[[^\[\]]*:[^\[\]]*:[^\[\]]*\]")


def prompt_notes(model: BaseModel, prompts: list[str]) -> list[str]:
    """What of each prompt the model will not read as a user of A1111 expects: past
    PREVIEW_MAX_TOKENS (read in chunks of 75 up to there, as kohya's samples; A1111 reads on),
    Japanese (CJK) words, which CLIP reads as byte pieces (a user typing 白黒の少女 was told
    nothing, and the grid drew something else), and A1111's syntax ((word:1.3), <lora:…>, [a:b:0.5]), read here as the words it is made of.
    Said, not refused: the grid is drawn all the same (a 1000-token prompt was cut to 77 silently)."""
    from engine.train.conditioning import CHUNK_TOKENS, prompt_tokens

    notes = []
    tokenizer = model.tokenizers[0] if model.tokenizers else None
    for prompt in dict.fromkeys(prompts):
        shown = prompt if len(prompt) <= 40 else prompt[:37] + "..."
        if tokenizer is not None:
            count = prompt_tokens(tokenizer, prompt)  # less its start and end tokens
            room = (tokenizer.model_max_length - 2) * (PREVIEW_MAX_TOKENS // CHUNK_TOKENS)
            if count > room:
                notes.append(f"prompt {shown!r} is {count} tokens: only its first {room} are read")
            if _CJK.search(prompt):  # drawn all the same, from what the encoder makes of the byte pieces: mostly not the words
                notes.append(f"prompt {shown!r} is written in Japanese, Chinese or Korean: CLIP's tokenizer reads it as {count} byte "
                             f"pieces for {len(prompt)} characters, which SD's text encoder barely learned; write prompts in English "
                             "(or Danbooru tags: 1girl, monochrome)")
        if _A1111_SYNTAX.search(prompt):
            notes.append(f"prompt {shown!r} has A1111 syntax ((word:1.3), <lora:…>, [a:b:n]): read as plain words here, "
                         "no weighting, no other LoRA")
    return notes


def sample_lora(model: BaseModel, lora_path: Path | None, settings: SampleSettings, out_path: Path, *, model_name: str,
                title: str = "", progress: Callable[[int, int], None] | None = None, extra: dict | None = None,
                log: Callable[[str], None] | None = None) -> Path:
    """Grid of ``lora_path`` on ``model`` at the configured strengths (no LoRA: base only).
    ``extra``: more keys for the PNG's ``copylora`` record; ``log``: notes on its labels."""
    from engine.lora.network import LoRANetwork

    name = lora_path.name if lora_path is not None else "none"
    if problem := grid_size_problem(settings, title or name):
        raise SampleError(problem)
    network = None
    if lora_path is not None:
        network = LoRANetwork.from_file(lora_path, model.unet, model.text_encoders, model.family)
        network.to(device=model.unet.device)
    for note in prompt_notes(model, settings.prompts + ([settings.negative_prompt] if settings.negative_prompt else [])):
        if log is not None:
            log(note)
    images = generate(model, settings, network, progress=progress)
    from engine.hashing import file_sha256

    extra = {**(extra or {}), **({"lora_sha256": file_sha256(lora_path)} if lora_path is not None else {})}
    return save_grid(grid(images, settings, title or name, log=log), out_path, settings, model_name=model_name, lora_name=name, extra=extra)


def route_check(model: BaseModel, a_path: Path, multiplier: float, result_path: Path, picture_b: Path, settings: SampleSettings,
                out_path: Path, *, model_name: str, progress: Callable[[int, int], None] | None = None,
                extra: dict | None = None, log: Callable[[str], None] | None = None, caption: str = "") -> Path:
    """The differential route's check picture, under the caption B trained with ("" by the
    method, caption-free: a toy project's caption drew A's LoRA from an empty prompt, nothing
    like picture A): A at its multiplier, then A with the result at 1 (which should draw picture
    B), then picture B itself."""
    from PIL import ImageOps

    from engine.hashing import file_sha256
    from engine.lora.network import LoRANetwork

    check = replace(settings, prompts=[caption], strengths=[0.0, 1.0])
    a_network = LoRANetwork.from_file(a_path, model.unet, model.text_encoders, model.family, multiplier)
    a_network.to(device=model.unet.device)
    result = LoRANetwork.from_file(result_path, model.unet, model.text_encoders, model.family)
    result.to(device=model.unet.device)
    a_network.apply_to()
    try:
        images = generate(model, check, result, progress=progress)
    finally:
        a_network.remove()
    from engine.project.images import load_picture

    images[0].append(ImageOps.fit(load_picture(picture_b), (check.size[0], check.size[1])))  # as B trained: upright, 8-bit, on white
    columns = [f"A at {multiplier:g}", f"A at {multiplier:g} + result at 1", "picture B"]
    extra = {**(extra or {}), "lora_sha256": file_sha256(result_path), "a_sha256": file_sha256(a_path), "check": True}
    title = "check: A + the result should draw picture B"
    # its text says what the columns are (it said "LoRA: result, Strengths: 0, 1", with A's file and multiplier missing)
    lora_name = f"{result_path.name} over {a_path.name} at {multiplier:g}"
    return save_grid(grid(images, check, title, columns, log=log), out_path, check, model_name=model_name, lora_name=lora_name, extra=extra)
