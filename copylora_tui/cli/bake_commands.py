"""``copylora bake`` and ``copylora extract``: baking LoRAs into checkpoints, and extracting a LoRA
from the difference of two checkpoints.

Bake-and-extract is a third way to the copy-machine LoRA (README "Two routes, and a third
way"): bake LoRA A and LoRA B into the base, then extract the difference; it equals the
SVD route (B − A) to fp32 rounding, at far more cost:

    copylora bake --base sd15.safetensors --lora A.safetensors --save_to base_A.safetensors --save_precision float
    copylora bake --base sd15.safetensors --lora B.safetensors --save_to base_B.safetensors --save_precision float
    copylora extract --model_org base_A.safetensors --model_tuned base_B.safetensors --dim 16 --save_to AtoB.safetensors

``extract`` takes kohya sd-scripts' ``extract_lora_from_models.py`` flags with the same
meanings (``--min_diff`` and ``--clamp_quantile`` are off unless given; see ``--help``).
Nothing here imports torch at module level.
"""

from __future__ import annotations

import argparse
import sys

from copylora_tui.cli.help_format import ParagraphHelpFormatter
from copylora_tui.cli.inputs import device_name

PRECISIONS = ("float", "fp16", "bf16")

BAKE_EPILOG = """\
The baked model has the base's format: a single-file .safetensors stays single-file with its
original key names (untouched tensors copied bit for bit), a diffusers folder (or 'tiny')
becomes a new diffusers folder. Single files: SD1 and SDXL (SD2: bake into its diffusers folder).
For bake-and-extract, bake into fp32 (--save_precision float): fp16 rounding of W + ΔW loses about
5e-4·|W| per weight, often more than a copy-machine LoRA's whole delta.

example:
  copylora bake --base sd15.safetensors --lora A.safetensors \\
    --save_to sd15_A.safetensors --save_precision float
"""

EXTRACT_EPILOG = """\
Per LoRA target module: diff = W_tuned − W_org, truncated SVD to --dim (--conv_dim for 3x3
convs); modules with no difference are left out. Writes <save_to> and <stem>.stats.json
(per-module energy kept and truncation error; see `copylora stats`).

example (bake-and-extract: the change A -> B):
  copylora extract --model_org sd15_A.safetensors \\
    --model_tuned sd15_B.safetensors --dim 16 --save_to AtoB.safetensors
"""


def register(commands: argparse._SubParsersAction) -> None:
    bake = commands.add_parser(
        "bake",
        help="bake a LoRA into a base model (writes a new checkpoint)",
        description="Write BASE + RATIO·LORA as a new model: every LoRA module's ΔW = ratio·alpha/rank·up@down is added to its weight.",
        epilog=BAKE_EPILOG,
        formatter_class=ParagraphHelpFormatter,
    )
    bake.add_argument("--base", required=True, metavar="MODEL", help="'tiny', a diffusers folder or a single-file .safetensors")
    bake.add_argument("--lora", required=True, metavar="LORA", help="kohya-format LoRA .safetensors")
    bake.add_argument("--ratio", type=float, default=1.0, metavar="R", help="LoRA strength (default: 1)")
    bake.add_argument("--save_to", required=True, metavar="OUT", help="output: a .safetensors file (single-file base) or a new folder (diffusers base)")
    bake.add_argument(
        "--save_precision", choices=PRECISIONS, default=None,
        help="cast every weight to this precision (default: keep each tensor's own dtype)",
    )
    bake.add_argument("--config_dir", metavar="DIR", help="diffusers folder whose configs describe a single-file base (default: the shipped ones)")
    bake.set_defaults(func=cmd_bake)

    extract = commands.add_parser(
        "extract",
        help="extract a LoRA from the difference of two models (kohya flags)",
        description=(
            "Extract the LoRA model_tuned − model_org by truncated SVD per module. Flags as kohya's "
            "extract_lora_from_models.py; models may be 'tiny', diffusers folders or single files."
        ),
        epilog=EXTRACT_EPILOG,
        formatter_class=ParagraphHelpFormatter,
    )
    extract.add_argument("--model_org", required=True, metavar="MODEL", help="original model (the LoRA is the change from this one)")
    extract.add_argument("--model_tuned", required=True, metavar="MODEL", help="tuned model (the LoRA is the change to this one)")
    extract.add_argument("--save_to", required=True, metavar="OUT", help="output LoRA .safetensors")
    extract.add_argument("--dim", type=int, default=4, metavar="N", help="rank of the LoRA (default: 4, as kohya)")
    extract.add_argument("--conv_dim", type=int, default=None, metavar="N",
                         help="also extract ResNet/sampler convs, 3x3 ones at this rank (default: off, as kohya)")
    extract.add_argument("--device", type=device_name, default="cpu", help="where the SVDs run: cpu, cuda, cuda:N or auto (default: cpu)")
    extract.add_argument("--save_precision", choices=PRECISIONS, default="fp16", help="precision of the saved LoRA (default: fp16)")
    extract.add_argument(
        "--clamp_quantile", type=float, default=None, metavar="Q",
        help="reproduce kohya's clamp of the factors at this quantile (kohya uses 0.99); default: no clamp",
    )
    extract.add_argument(
        "--min_diff", type=float, default=None, metavar="D",
        help="kohya's text-encoder test: leave the text encoder out unless some weight differs by more than D "
        "(kohya uses 0.01); default: off, only modules with no difference at all are left out",
    )
    extract.add_argument("--family", default="auto", help="model family: auto, sd1, sd2, sd2-v, sdxl or sdxl-v (default: auto)")
    extract.add_argument("--config_dir", metavar="DIR", help="diffusers folder with configs and tokenizer for single-file models")
    # kohya's --v2/--sdxl/--v_parameterization are accepted for batch files: the family is read from the models.
    for flag in ("--v2", "--sdxl", "--v_parameterization"):
        extract.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    extract.add_argument("--no_metadata", action="store_true", help=argparse.SUPPRESS)
    extract.set_defaults(func=cmd_extract)


def _progress_printer(label: str):
    """A callback printing progress on one stderr line when it is a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int, name: str) -> None:
        end = "\n" if done == total else ""
        print(f"\r{label} {done}/{total}  {name[:60]:<60}", end=end, file=sys.stderr, flush=True)

    return show


def _as_flags(call):
    """Run an engine call whose problems name its parameters (``save_to``); report them by
    this command's flags (``--save_to``), as the user typed them."""
    from copylora_tui.cli.main import as_flags

    return as_flags(call, FLAGS)


# bake's and extract's parameters that are flags of the same name
FLAGS = {"base", "lora", "save_to", "ratio", "save_precision", "config_dir", "model_org", "model_tuned", "dim",
         "conv_dim", "device", "clamp_quantile", "min_diff", "family"}


def _check_files(loras: list[tuple[str, str]], save_to: str, models: tuple[str, ...]) -> None:
    """The LoRA inputs and the destination, before the model is loaded (exit 2, not an error
    minutes in). The destination may be a file or a new folder: its parent must take it, and
    it must be none of the inputs (LoRAs and ``models``)."""
    from copylora_tui.cli.inputs import destination_problem, lora_problem
    from engine.errors import ValidationError

    inputs = (*(path for _flag, path in loras), *models)
    problems = [lora_problem(flag, path) for flag, path in loras] + [destination_problem("--save_to", save_to, folder=True, inputs=inputs)]
    if any(problems):
        raise ValidationError([p for p in problems if p])


def cmd_bake(args: argparse.Namespace) -> int:
    from engine.merge.bake import bake_lora

    _check_files([("--lora", args.lora)], args.save_to, (args.base,))
    result = _as_flags(lambda: bake_lora(
        args.base, args.lora, args.save_to, args.ratio,
        save_precision=args.save_precision, config_dir=args.config_dir, progress=_progress_printer("baking"),
    ))
    print(
        f"wrote {result.path}  ({result.format}, {result.family}, {len(result.modules)} weights changed, "
        f"ratio {result.ratio:g}, {result.seconds:.1f} s)"
    )
    if result.max_rounding > 0.01:
        print(f"warning: the storage precision lost up to {result.max_rounding:.1%} of a module's ΔW (rounding of W + ΔW); "
              + _rounding_advice(args.save_precision), file=sys.stderr)
    return 0


def _rounding_advice(save_precision: str | None) -> str:
    """What to do about the rounding: store in float32, unless it already is (then a change
    that small is below float32's resolution of those weights: nothing stores it better)."""
    import torch

    from engine.lora.weights import to_dtype

    if save_precision not in (None, "", "same") and to_dtype(save_precision) == torch.float32:
        return "already float32: that module's change is below the resolution of its weights (a LoRA barely trained?)"
    return "bake with --save_precision float to keep the delta exact"


def cmd_extract(args: argparse.Namespace) -> int:
    from engine.merge.extract import extract_lora

    _check_files([], args.save_to, (args.model_org, args.model_tuned))
    result = _as_flags(lambda: extract_lora(
        args.model_org, args.model_tuned, dim=args.dim, conv_dim=args.conv_dim, save_to=args.save_to,
        device=args.device, save_precision=args.save_precision, clamp_quantile=args.clamp_quantile,
        min_diff=args.min_diff, family=args.family, config_dir=args.config_dir,
        progress=_progress_printer("extracting"),
    ))
    worst = max((s.rel_error for s in result.stats), default=0.0)
    print(
        f"wrote {result.path} and {result.stats_path.name}  ({len(result.modules)} modules, "
        f"{len(result.skipped)} unchanged left out, worst truncation error {worst:.2e}, {result.seconds:.1f} s)"
    )
    if result.text_encoder_dropped:
        print(f"note: text encoder left out (no weight differs by more than --min_diff {args.min_diff})", file=sys.stderr)
    return 0
