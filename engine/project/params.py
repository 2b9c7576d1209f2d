"""The concept project's parameters, as plain data.

Each TOML table of ``copylora.toml`` is one dataclass here. Field names follow kohya-ss
sd-scripts where a parameter exists there, so kohya users recognise them (and
``copylora import-kohya`` can fill them). Defaults are the copy-machine recipe (SD1.5, rank 8,
alpha 1, AdamW8bit, lr 1e-4 constant, 5 repeats x 800 epochs, 600x900, fp16) where it says
something, and sd-scripts' defaults otherwise.

Every field carries a :func:`spec` with its one-line documentation (written as the comment
above the key in saved files) and its constraints (checked by :mod:`engine.project.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from engine.project.copy_rule import parse_stop_when_copied
from engine.project.names import parse_project_name

OPTIMIZERS = (
    "AdamW8bit",
    "AdamW",
    "PagedAdamW8bit",
    "Lion8bit",
    "PagedLion8bit",
    "SGDNesterov",
    "SGDNesterov8bit",
    "Adafactor",
)
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("float", "fp16", "bf16")
MERGE_PRECISIONS = ("float", "fp64")
MODEL_FAMILIES = ("auto", "sd1", "sd2", "sd2-v", "sdxl", "sdxl-v")
MERGE_DEVICES = ("auto", "cpu", "cuda")
# The two routes to the copy-machine LoRA (README "Two routes"). svd-merge: A and B each on the
# base, then +1·B −1·A. differential: B trains on the base with A applied (sd-scripts
# --base_weights), so B learns only A→B and is itself the result. addift and slider train one
# LoRA on the pair (engine.project.pair_route): ADDifT (hako-mikan's TrainTrain) and the Concept
# Sliders image-pair objective.
METHODS = ("svd-merge", "differential", "addift", "slider")

# No layer of an SD1/SD2/SDXL U-Net or text encoder has min(in, out) above 1280, so a larger
# rank adds nothing anywhere (engine.formats.model_files bounds it by the actual base model).
MAX_RANK = 1280
MAX_STEPS = 10_000_000
MAX_SIDE = 4096  # pixels per side of a training bucket or a preview
MIN_SIDE = 64  # and at least (one bucket step)
MAX_SEED = 2**63 - 1
# Preview samplers, by the names kohya's --sample_sampler uses, plus the two DPM++ Karras samplers
# A1111 users pick most ("DPM++ 2M Karras", "DPM++ SDE Karras"; kohya has no Karras spellings).
SAMPLERS = ("euler_a", "euler", "ddim", "dpmsolver++", "dpmpp_2m_karras", "dpmpp_sde_karras", "pndm", "lms", "heun",
            "dpmsolver", "dpmsingle", "dpm_2", "dpm_2_a")
# Other spellings of them: kohya's k_ names, A1111's labels, ComfyUI's. Matched after squash_name.
SAMPLER_ALIASES = {
    "k_euler_a": "euler_a", "euler a": "euler_a", "euler_ancestral": "euler_a", "k_euler": "euler", "k_lms": "lms",
    "dpm++ 2m": "dpmsolver++", "dpmpp_2m": "dpmsolver++", "dpm++ 2m karras": "dpmpp_2m_karras", "k_dpmpp_2m_karras": "dpmpp_2m_karras",
    "dpm++ sde karras": "dpmpp_sde_karras", "k_dpmpp_sde_karras": "dpmpp_sde_karras",
    "k_dpm_2": "dpm_2", "k_dpm_2_a": "dpm_2_a", "dpm2": "dpm_2", "dpm2 a": "dpm_2_a",
}
# What the kohya log_with key may say here: TensorBoard only ("" = no training logs but the queue's own).
LOG_WITH = ("", "tensorboard")


def squash_name(name: str) -> str:
    """A name with case, spaces, "_" and "-" ignored and "+" read as "p": "DPM++ 2M Karras",
    "dpmpp_2m_karras" and "DPMPP-2M-Karras" are one name."""
    return "".join(c for c in name.lower().replace("+", "p") if c not in " _-")


def canonical_sampler(name: str) -> str | None:
    """The sampler ``name`` means (one of SAMPLERS), or None."""
    known = {squash_name(n): n for n in SAMPLERS} | {squash_name(k): v for k, v in SAMPLER_ALIASES.items()}
    return known.get(squash_name(name)) if isinstance(name, str) else None


def sampler_hint(name: str) -> str:
    """A did-you-mean for an unknown sampler name (its aliases count), else the list of names."""
    import difflib

    known = {squash_name(n): n for n in SAMPLERS} | {squash_name(k): v for k, v in SAMPLER_ALIASES.items()}
    close = difflib.get_close_matches(squash_name(str(name)), list(known), n=1, cutoff=0.6)
    return f" (did you mean {known[close[0]]!r}?)" if close else f" (one of: {', '.join(SAMPLERS)})"


MAX_TOKEN_LENGTHS = (75, 150, 225)


def parse_max_token_length(value: Any) -> int:
    """``[train] max_token_length`` as kept: 75, 150 or 225 (sd-scripts' choices; its default,
    none, is 75). Raises ValueError with the line a user reads."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or value not in MAX_TOKEN_LENGTHS:
        raise ValueError("must be 75, 150 or 225 (tokens: chunks of 75)")
    return int(value)


def spec(
    doc: str,
    *,
    default: Any = None,
    factory: Any = None,
    choices: tuple[str, ...] | None = None,
    alias: Any = None,
    hint: Any = None,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    length: int | None = None,
    fixed_or_pair: bool = False,
    parse: Any = None,
) -> Any:
    """A dataclass field with documentation and constraints.

    ``positive``: must be > 0. ``minimum``/``maximum``: must be within them (limits keep an
    absurd value, e.g. a rank of 1e11 that would ask for terabytes, from reaching the GPU;
    every number must also be finite: TOML accepts ``nan`` and ``inf``). ``choices``: one of these
    strings (matched case-insensitively, stored in the canonical spelling, as sd-scripts
    lowercases optimizer names); ``alias``: a function naming the choice another spelling means (or None),
    ``hint``: one giving the did-you-mean of a value that is no choice (see :func:`canonical_sampler`). ``length``: a list of exactly this many items.
    ``fixed_or_pair``: an int N means [N, N], a "W,H" string or a [W, H] list is kept.
    ``parse``: a function that reads a value of more than one type (``stop_when_copied``: a
    number or a word) into the kept one, raising ValueError with the message a user reads.
    """
    meta = {
        "doc": doc,
        "choices": choices,
        "alias": alias,
        "hint": hint,
        "minimum": minimum,
        "maximum": maximum,
        "positive": positive,
        "length": length,
        "fixed_or_pair": fixed_or_pair,
        "parse": parse,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ProjectInfo:
    name: str = spec("Project name; output files are named after it.", default="", parse=parse_project_name)
    base_model: str = spec(
        'Base model: "tiny" or "tiny-sdxl" (built-in test models, random weights), "toy" (built-in, '
        "draws coloured shapes at 64x64), a single-file .safetensors "
        "checkpoint, or a diffusers folder. Relative paths are relative to this file.",
        default="tiny",
    )
    model_family: str = spec(
        "auto (detect from the weights), sd1, sd2, sd2-v (v-prediction), sdxl or sdxl-v (v-prediction, e.g. NoobAI-XL V-Pred).",
        default="auto",
        choices=MODEL_FAMILIES,
    )
    output_dir: str = spec("Where LoRAs, checkpoints and previews go (relative to this file).", default="output")
    method: str = spec(
        'How the difference is made: "svd-merge" trains A and B on the base and merges +1·B −1·A; '
        '"differential" trains B on the base with A applied ([b] base_weights_multiplier), and B is the result; '
        '"addift" (ADDifT) and "slider" (Concept Sliders, image pairs) train one LoRA on the pair in a few hundred steps.',
        default="svd-merge",
        choices=METHODS,
    )
    twin_training: bool = spec(
        "Train A and B together as one batch of two when their settings match (faster: training waits on kernel "
        "launches, which a batch of two pays once); false trains them one after the other.", default=True)


@dataclass
class TrainParams:
    network_dim: int = spec("LoRA rank of linear/attention modules.", default=8, positive=True, maximum=MAX_RANK)
    network_alpha: float = spec("LoRA alpha; the update is scaled by alpha/rank.", default=1.0, positive=True, maximum=10_000)
    conv_dim: int = spec(
        "Rank of ResNet/sampler 3x3 convs (LoCon); 0 leaves convs untouched.", default=0, minimum=0, maximum=MAX_RANK
    )
    conv_alpha: float = spec("Alpha of the conv modules.", default=1.0, positive=True, maximum=10_000)
    learning_rate: float = spec("Learning rate.", default=1e-4, positive=True, maximum=10.0)
    unet_lr: float | None = spec("U-Net learning rate (unset: learning_rate).", default=None, positive=True, maximum=10.0)
    text_encoder_lr: float | None = spec(
        "Text-encoder learning rate (unset: learning_rate).", default=None, positive=True, maximum=10.0
    )
    lr_scheduler: str = spec("Learning-rate schedule.", default="constant", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = spec("Warm-up steps of the schedule (not with \"constant\": use constant_with_warmup).", default=0, minimum=0, maximum=MAX_STEPS)
    lr_scheduler_num_cycles: int = spec("Cycles of cosine_with_restarts.", default=1, positive=True, maximum=100_000)
    lr_scheduler_power: float = spec("Power of the polynomial schedule.", default=1.0, positive=True, maximum=100.0)
    optimizer_type: str = spec(
        "AdamW8bit (bitsandbytes; falls back to AdamW without CUDA), AdamW, Lion8bit, "
        "SGDNesterov, Adafactor, ...",
        default="AdamW8bit",
        choices=OPTIMIZERS,
    )
    optimizer_args: dict = spec(
        "Extra optimizer arguments, e.g. { weight_decay = 0.01 }.", factory=dict
    )
    max_train_epochs: int | None = spec(
        "Epochs (one epoch = every image x num_repeats). Set this or max_train_steps.",
        default=800,
        positive=True,
        maximum=1_000_000,
    )
    max_train_steps: int | None = spec(
        "Total optimizer steps; use instead of max_train_epochs.", default=None, positive=True, maximum=MAX_STEPS
    )
    num_repeats: int = spec(
        'Repeats of each image per epoch (a kohya folder name like "5_x" overrides it).',
        default=5,
        positive=True,
        maximum=100_000,
    )
    train_batch_size: int = spec("Images per step.", default=1, positive=True, maximum=256)
    resolution: list = spec(
        "Maximum training size [width, height] (or one number for a square); the image is "
        "resized into a bucket within this area, sides multiples of 64, aspect kept.",
        factory=lambda: [600, 900],
        fixed_or_pair=True,
    )
    mixed_precision: str = spec("no, fp16 or bf16.", default="fp16", choices=MIXED_PRECISIONS)
    save_precision: str = spec("Precision of saved LoRAs: float, fp16 or bf16.", default="fp16", choices=SAVE_PRECISIONS)
    seed: int = spec(
        "Random seed. A and B use the same seed, so their noise is the same and cancels in B-A.",
        default=42,
        minimum=0,
        maximum=MAX_SEED,
    )
    noise_offset: float = spec("Noise offset (0 = off).", default=0.0, minimum=0, maximum=1.0)
    min_snr_gamma: float | None = spec("Min-SNR weighting gamma (unset = off; 5 is common).", default=None, positive=True, maximum=1000.0)
    max_grad_norm: float = spec("Gradient clipping norm (0 = off).", default=1.0, minimum=0)
    gradient_checkpointing: bool = spec("Trade compute for memory.", default=False)
    compile: bool = spec(
        "CUDA only: run the U-Net through torch.compile (fewer kernel launches per step; the first "
        "steps wait a minute or more for the compiler). Ignored on the CPU, where it gave wrong gradients.",
        default=False,
    )
    cuda_graphs: bool = spec(
        "CUDA only: capture the step's forward and backward as one CUDA graph after a few eager steps, "
        "and replay it (one launch instead of thousands). Falls back to eager, saying why in the log, "
        "where the step's shapes or work change (several buckets, a trained text encoder, the addift/slider routes).",
        default=False,
    )
    caption: str = spec(
        'The prompt A\'s and B\'s pictures train under ("" = caption-free, the method as published). '
        "On a base that takes its colours from the prompt, the same caption on both sides (it cancels in B-A) "
        "keeps the change alive on other prompts under CFG; \"\" leaves it to the empty prompt (docs/BENCHMARKS.md). "
        "Not with a reg table, whose instance_prompt is the prompt there.",
        default="",
    )
    network_train_unet_only: bool = spec(
        "Train only the U-Net LoRA (caption-free training gives the text encoder nothing to learn).",
        default=True,
    )
    clip_skip: int = spec("Use the output of the N-th last CLIP layer (SD1: 1; anime models often 2).", default=1, positive=True, maximum=12)
    max_token_length: int = spec(
        "Caption tokens the text encoder reads: 75, or 150 / 225 (kohya's max_token_length: a longer caption in chunks "
        "of 75, joined as sd-scripts joins them). Only captions ([filewords], caption) use more than 75.",
        default=75, parse=parse_max_token_length,
    )
    flip_aug: bool = spec("Random horizontal flips (off: a copy machine copies the exact picture).", default=False)
    random_crop: bool = spec("Random instead of center crop into the bucket, drawn once per picture (latents are cached; "
                             "sd-scripts refuses it with cached latents).", default=False)
    save_every_n_steps: int = spec("Write a resumable checkpoint every N steps (0 = only at the end/stop).", default=500, minimum=0, maximum=MAX_STEPS)
    sample_every_n_steps: int = spec(
        "Write a preview of the LoRA in training (strength 1.0, [sample] prompts) every N steps (0 = off).",
        default=0,
        minimum=0,
        maximum=MAX_STEPS,
    )
    min_timestep: int = spec("Timesteps are drawn from [min_timestep, max_timestep) (kohya's keys; the addift route sweeps "
                             "this range instead of drawing).", default=0, minimum=0, maximum=999)
    max_timestep: int = spec("See min_timestep (1000: the whole schedule).", default=1000, positive=True, maximum=1000)
    pair_multiplier: float = spec(
        "addift and slider routes: the LoRA trains at +m on B and at -m on A, and the result is written at m, so strength 1 "
        "applies the change it learned once (ADDifT's 0.25; TrainTrain saves the LoRA unscaled, to be used at weight 0.25).",
        default=0.25, positive=True, maximum=10.0)
    copy_check_every_n_steps: int = spec(
        "Measure every N steps how well the LoRA copies its teacher (its predicted picture against the teacher's, in dB, "
        "at fixed noise and timesteps; no sampling): shown live, logged and stored in the LoRA (0 = off).",
        default=100, minimum=0, maximum=MAX_STEPS,
    )
    stop_when_copied: str | float = spec(
        'End a side early once it copies its teacher: a dB target (e.g. 30), "plateau" (no gain above '
        'copy_plateau_gain_db over copy_plateau_checks checks), or "" (never: the recipe\'s fixed length).',
        default="", parse=parse_stop_when_copied,
    )
    copy_plateau_gain_db: float = spec("stop_when_copied = \"plateau\": the gain in dB that still counts as progress.",
                                       default=0.2, minimum=0, maximum=100.0)
    copy_plateau_checks: int = spec("stop_when_copied = \"plateau\": how many checks without that gain end the side.",
                                    default=5, positive=True, maximum=10_000)
    network_weights: str = spec(
        'Start from an existing LoRA file instead of a fresh LoRA (kohya\'s network_weights; relative to this file; "" = fresh). '
        "Its modules and ranks must be the ones this project trains (network_dim, conv_dim, network_train_unet_only); "
        "a different alpha is folded into its weights, so training starts from exactly that LoRA.",
        default="",
    )
    log_with: str = spec(
        '"tensorboard" writes the loss and learning rate of every step as TensorBoard event files (kohya\'s log_with; '
        'needs the tensorboard package: pip install "copylora[tensorboard]"); "" = only the queue\'s own history.',
        default="", choices=LOG_WITH,
    )
    logging_dir: str = spec(
        'Folder of the TensorBoard logs, relative to this file ("" = OUTPUT/logs); each side\'s runs go to a SIDE/DATE-TIME '
        "folder in it. Setting it turns TensorBoard logging on, as kohya does.",
        default="",
    )


# Keys of [a]/[b] besides per-side overrides of any [train] key.
@dataclass
class SideConfig:
    folder: str = spec("Folder of this side's teacher image(s), relative to this file.", default="")
    overrides: dict = field(default_factory=dict)
    # The differential route's keys; [b] only (B is the side trained on base + A).
    base_weights_multiplier: float = spec(
        "Differential route: the strength of A applied to the base while B trains (sd-scripts --base_weights_multiplier).",
        default=1.0, minimum=-10.0, maximum=10.0,
    )
    merge_base_weights: bool = spec(
        "Differential route: merge A into the base weights before training, as sd-scripts does (in the weights' "
        "precision: fp16 drops small changes), instead of applying A as a frozen LoRA beside B.",
        default=False,
    )


BASE_WEIGHTS_KEYS = ("base_weights_multiplier", "merge_base_weights")


@dataclass
class MergeParams:
    ratios: list = spec(
        "Weights of [B, A] in the difference merge: +1*B - 1*A keeps only the change A->B.",
        factory=lambda: [1.0, -1.0],
        length=2,
    )
    new_rank: int = spec("Rank of the merged LoRA.", default=16, positive=True, maximum=MAX_RANK)
    new_conv_rank: int | None = spec("Rank of merged 3x3 conv modules (unset: new_rank).", default=None, positive=True, maximum=MAX_RANK)
    device: str = spec("auto (cuda if present), cpu or cuda.", default="auto", choices=MERGE_DEVICES)
    precision: str = spec("Arithmetic precision: float (fp32) or fp64.", default="float", choices=MERGE_PRECISIONS)
    save_precision: str = spec("Precision of the merged file.", default="fp16", choices=SAVE_PRECISIONS)
    lbws: list = spec(
        "LoRA Block Weight vectors of [B, A] (one vector: both alike), as sd-scripts' --lbws: each scales its LoRA's change per "
        "block before the merge; 17 or 26 weights for SD1/SD2 (BASE, IN00-IN11, M00, OUT00-OUT11), 12 or 20 for SDXL; [] = none.",
        factory=list,
    )


@dataclass
class SampleParams:
    prompts: list = spec("Prompts of the preview grid (empty string = no caption, as trained); add one the pair never trains "
                         "under, in the base model's own style, to see the change on other prompts.", factory=lambda: [""])
    negative_prompt: str = spec("Negative prompt.", default="")
    seed: int = spec("Seed; the same for every strength, so images differ only by the LoRA.", default=1234, minimum=0, maximum=MAX_SEED)
    steps: int = spec("Sampling steps.", default=20, positive=True, maximum=1000)
    guidance: float = spec("Classifier-free guidance scale.", default=7.0, minimum=0, maximum=100.0)
    size: list = spec("Image size [width, height].", factory=lambda: [512, 768], fixed_or_pair=True)
    strengths: list = spec("LoRA strengths to compare side by side.", factory=lambda: [0.0, 1.0])
    sampler: str = spec(
        'Sampler: euler_a, euler, ddim, dpmsolver++ (DPM++ 2M), dpmpp_2m_karras, dpmpp_sde_karras, pndm, lms or heun '
        '(A1111\'s names such as "DPM++ 2M Karras" and kohya\'s "k_euler_a" are read too).',
        default="euler_a", choices=SAMPLERS, alias=canonical_sampler, hint=sampler_hint)
    cpu_full_size: bool = spec(
        "Without CUDA, previews are drawn smaller (at most 384x384 pixels of area) with at most 10 steps, "
        "since a full-size model takes minutes per picture on a CPU; true draws them as set.", default=False)


@dataclass
class RegParams:
    folder: str = spec('Folder of class (regularisation) images; "" = none: the teacher pictures train under instance_prompt '
                       '(e.g. "[filewords]", a caption per picture) without prior preservation.', default="reg")
    instance_prompt: str = spec(
        'Prompt of the teacher images in this flow (e.g. "sks girl"); [filewords] in it is replaced by each '
        'picture\'s caption file (e.g. "sks girl, [filewords]").', default="")
    class_prompt: str = spec('Prompt of the class images (e.g. "girl").', default="")
    num_class_images: int = spec("Class images wanted; missing ones are generated.", default=0, minimum=0, maximum=100_000)
    num_repeats: int = spec("Repeats of each class image per epoch.", default=1, positive=True, maximum=100_000)
    prior_loss_weight: float = spec("Weight of the prior-preservation loss.", default=1.0, minimum=0, maximum=1000.0)
    caption_extension: str = spec(
        'Extension of the caption file beside each teacher picture (colour.png -> colour.txt), read where an '
        'instance prompt says [filewords] (kohya\'s caption_extension; e.g. ".caption").', default=".txt")


@dataclass
class ConceptParams:
    """One more concept of a [reg] project ([[concept]]), trained into each side's LoRA beside the
    side's own pictures (the DreamBooth extension's concepts 2 and 3)."""

    folder: str = spec("Folder of this concept's teacher pictures, relative to the project.", default="")
    instance_prompt: str = spec("Prompt of this concept's pictures; [filewords] reads each picture's caption file.", default="")
    class_prompt: str = spec("Prompt of this concept's class pictures (needed to generate them).", default="")
    class_folder: str = spec('Folder of this concept\'s class pictures; "" = no prior preservation for it.', default="")
    num_class_images: int = spec("Class pictures wanted in class_folder; missing ones are generated.", default=0, minimum=0,
                                 maximum=100_000)
    num_repeats: int | None = spec('Repeats of each picture per epoch; unset: the folder name\'s number ("5_sks dog": 5), '
                                   "else 1.", default=None, positive=True, maximum=100_000)


def field_docs(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("doc", "") for f in fields(cls)}


TRAIN_KEYS = tuple(f.name for f in fields(TrainParams))
