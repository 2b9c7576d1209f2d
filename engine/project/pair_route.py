"""The one-LoRA routes, ``[project] method = "addift"`` or ``"slider"``: one LoRA trained on the
pair A, B at once, in a few hundred steps instead of two copier LoRAs of thousands.

Torch-free: what the plan, ``check``, the queue and the outputs need to know of them. The
training steps are :mod:`engine.train.addift_step` and :mod:`engine.train.slider_step`.

- **addift** (hako-mikan's ADDifT, TrainTrain ``train_diff2``): the same noise and timestep for
  both pictures; on even steps the LoRA at +m on noisy B is fitted to the frozen base's
  prediction on noisy A, on odd steps the LoRA at −m on noisy A to the base's prediction on
  noisy B; the timestep sweeps ``[min_timestep, max_timestep]`` at 0.1, 0.3, …, 0.9 of it, each
  twice.
- **slider** (Concept Sliders' image pairs, ``train_lora-scale.py``): the same noise and
  timestep; at +m the LoRA denoises B, at −m it denoises A (plain diffusion loss on the true
  noise), both gradients in one optimizer step.

Both write the LoRA as trained (``NAME_PAIR.safetensors``); the result step writes it at ratio
``pair_multiplier`` (re-ranked to ``[merge] new_rank`` like the differential route's B), so the
result at strength 1 is the +m state the LoRA was trained in: the change A→B once. TrainTrain
saves its file unscaled, to be used at weight 0.25 for the same state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import Problem

if TYPE_CHECKING:
    from engine.project.folder import Project

PAIR = "pair"  # the side name of the one LoRA these routes train (its file NAME_PAIR, its run folder runs/PAIR)
PAIR_METHODS = ("addift", "slider")
ROUTE_NAMES = {"addift": "ADDifT", "slider": "image slider"}


def is_pair_route(project: Project) -> bool:
    return project.info.method in PAIR_METHODS


def pair_problems(project: Project, check_files: bool) -> list[Problem]:
    """What a one-LoRA route cannot train: each with the key to change. One LoRA learns from both
    pictures under one set of settings, with the same noise for both (so each pair is one size)."""
    if not is_pair_route(project):
        return []
    method = project.info.method
    problems = []
    if project.reg is not None:
        problems.append(Problem("reg", f"the {method} route trains one LoRA on the pair, without class pictures: remove [reg]"))
    if project.concepts:
        problems.append(Problem("concept", f"the {method} route trains on the pair A, B only: remove the [[concept]] tables"))
    for side in ("a", "b"):
        for key in sorted(project.side(side).overrides):
            problems.append(Problem(f"{side}.{key}", f"the {method} route trains one LoRA on A and B with one set of settings: "
                                                     "set it in [train]"))
    a, b = project.side_params("a"), project.side_params("b")
    if a.num_repeats != b.num_repeats:  # kohya folder names (10_a, 5_b) give each side its own repeats
        problems.append(Problem("b.folder", f"the folder names give A {a.num_repeats} and B {b.num_repeats} repeats: "
                                            f"the {method} route trains them in pairs"))
    if not a.network_train_unet_only:
        problems.append(Problem("train.network_train_unet_only", f"the {method} route trains the U-Net only (A and B share one prompt): "
                                                                  "set it to true"))
    if a.stop_when_copied != "":
        problems.append(Problem("train.stop_when_copied", f"the {method} route has no copier LoRA to check: leave it \"\""))
    if check_files:
        problems += _picture_problems(project)
    return problems


# Beyond this many steps a one-LoRA route has left its published range far behind (ADDifT:
# 30-100; sliders: 1000): most likely a copier project switched routes with the recipe's 4000.
MANY_STEPS = {"addift": 1000, "slider": 2000}


def route_warnings(plan) -> list[str]:
    """What will train but probably not as meant: a one-LoRA route at a copier's length."""
    project = plan.project
    if not is_pair_route(project):
        return []
    method, steps = project.info.method, plan.side(PAIR).total_steps
    if steps <= MANY_STEPS[method]:
        return []
    usual = "30–100 (ADDifT's author)" if method == "addift" else "about 1000 (Concept Sliders' config)"
    return [f"train.max_train_steps: the {method} route is set to {steps} steps, where {usual} is usual: "
            "set max_train_steps (copylora new --method writes its defaults)"]


def _picture_problems(project: Project) -> list[Problem]:
    """A's and B's pictures pair up by name order, and each pair must be one size (one noise)."""
    from engine.project.images import image_files, read_image_info

    folders = [project.side_folder(side) for side in ("a", "b")]
    if not all(folder.is_dir() for folder in folders):
        return []  # the folder check says so
    a, b = (image_files(folder) for folder in folders)
    if len(a) != len(b):
        return [Problem("b.folder", f"A has {len(a)} picture(s) and B {len(b)}: the {project.info.method} route trains them in pairs "
                                    "(by name order), so the counts must be equal")]
    problems = []
    for pa, pb in zip(a, b):
        ia, ib = read_image_info(pa, decode=False), read_image_info(pb, decode=False)
        if (ia.width, ia.height) != (ib.width, ib.height):
            problems.append(Problem("b.folder", f"{_name(pa)} is {ia.width}x{ia.height} and {_name(pb)} {ib.width}x{ib.height}: "
                                                f"the {project.info.method} route noises both with the same noise, so each pair "
                                                "must be one size"))
    return problems


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def addift_timestep(step: int, low: int, high: int) -> int:
    """ADDifT's timestep for ``step`` (0-based): ``low + (high − low)·k/10`` for k = 1, 3, 5, 7,
    9 in turn, each for an even step and the odd step after it (TrainTrain sets
    ``index = n % 10 + 1`` on even steps only, and its draw from ``[t, t+1)`` is that t)."""
    index = (step - step % 2) % 10 + 1
    return min(999, int(low + (high - low) / 10 * index))
