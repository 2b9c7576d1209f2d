"""Create a new concept project folder from two teacher images.

The folder is assembled in a temporary sibling and renamed into place only once the images
are copied and the TOML validates, so a failure (unreadable image, name taken, disk full)
leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from engine.errors import Problem, ValidationError, os_error_text
from engine.files import input_file_problem, staging_folder
from engine.formats.model_files import is_sdxl, peek_family
from engine.project.folder import BUILTIN_MODELS, Project, load_project, save_project
from engine.project.images import IMAGE_EXTENSIONS, read_image_info
from engine.project.names import name_problem
from engine.project.params import ProjectInfo
from engine.project.plan import default_resolution
from engine.unicode_names import same_name_entry, unicode_form


def _check_image(path: Path, key: str, problems: list[Problem]) -> None:
    if problem := input_file_problem(path):  # missing, a folder, a link to nothing or to itself, a pipe, a name too long
        problems.append(Problem(key, problem))
    elif path.suffix.lower() not in IMAGE_EXTENSIONS:
        problems.append(Problem(key, f"{path.name}: not an image file ({', '.join(IMAGE_EXTENSIONS)})"))
    else:
        try:
            read_image_info(path)
        except ValueError as exc:
            problems.append(Problem(key, f"{path}: {exc}"))


# The defaults of engine.project.params are the recipe, for a real checkpoint on a GPU (4000 steps at
# 600×900, fp16). The built-in models are for trying copylora on any machine, so a project on
# one is scaled to finish (A, B, merge, preview) in about a minute on a CPU: few steps, small
# buckets and previews, a bigger learning rate (a random tiny model needs it), fp32.
# projects/make_example.py writes the shipped examples from these same presets.
# A one-pair toy project's training length and rate (measured on run 9, docs/BENCHMARKS.md, "The toy
# example"; example-toy's eight pairs train 1000 steps a side at 5e-3: projects/make_example.py).
TOY_LR, TOY_EPOCHS = 2e-3, 200

BUILTIN_PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {
        "train": {"learning_rate": 1e-3, "max_train_epochs": 40, "resolution": [128, 192], "mixed_precision": "no", "save_every_n_steps": 100},
        "sample": {"steps": 8, "size": [128, 192]},
    },
    # tiny-sdxl's step costs about 4× tiny's on a CPU: 1 image × 5 repeats × 8 epochs = 40 steps a side
    "tiny-sdxl": {
        "train": {"learning_rate": 1e-3, "max_train_epochs": 8, "resolution": [128, 192], "mixed_precision": "no", "save_every_n_steps": 20},
        "sample": {"steps": 8, "size": [128, 192]},
    },
    # The pretrained toy model draws 64×64 coloured shapes (engine.models.toy). Previews: prompts
    # of combinations it never saw in pretraining, so they show what carries over to new prompts;
    # drawn as set even on a CPU (20 steps of a 64×64 toy picture take a second).
    # Its [train] caption is the pictures' own, given to create_project (below: TOY_CAPTION_WHY).
    "toy": {
        "train": {"learning_rate": TOY_LR, "max_train_epochs": TOY_EPOCHS, "resolution": [64, 64], "mixed_precision": "no",
                  "save_every_n_steps": 100, "noise_offset": 0.5},
        "sample": {"steps": 20, "size": [64, 64], "guidance": 5.0, "strengths": [0.0, 0.5, 1.0], "cpu_full_size": True,
                   "prompts": ["a red triangle on a blue background", "a pink ring on a green background",
                               "a cyan triangle on a purple background"]},
    },
}


# Why a toy project trains under a caption: the toy takes its colours from the prompt, and a pair
# trained caption-free (the method as published) only changes the empty prompt's branch, which
# CFG extrapolates away from: measured in docs/BENCHMARKS.md ("Why nothing survives CFG 5",
# "The caption lever" on run 9; "The copy-machine effect on run 28" on today's toy: S1/S0 1.04
# caption-free against 0.83 under the caption for one pair, 0.49 for four captioned pairs, 0.32
# for the example's eight). The same caption on both sides cancels in B - A. `check` warns when a
# toy project has none.
TOY_CAPTION_WHY = "the toy takes its colours from the prompt, so a caption-free pair's change does not survive CFG"


def toy_caption_warnings(plan) -> list[str]:
    """A project on the toy base whose A or B trains caption-free (``check``, the form and the
    job log say it, through :func:`engine.project.plan.plan_warnings`): valid, and it trains,
    but its result will show (almost) nothing on the preview grid. Not for a [reg] project,
    whose pictures train under its instance prompt."""
    project = plan.project
    if project.info.base_model != "toy" or project.reg is not None or project.info.method == "addift":
        return []  # ADDifT learns the pictures' difference, not the pictures: caption-free measured better (ROUTE_PRESETS)
    bare = [side for side in plan.trained if not plan.side(side).params.caption.strip()]
    if not bare:
        return []
    where, who = ("train.caption", "A and B train") if len(bare) == len(plan.trained) else (f"{bare[0]}.caption", f"{bare[0].upper()} trains")
    return [f"{where}: {who} caption-free on the toy base: {TOY_CAPTION_WHY} on other prompts (measured on held-out prompts at "
            'CFG 5: one pair keeps 1.04 of its saturation at strength 1 caption-free, 0.83 under its caption, and example-toy\'s eight '
            'captioned pairs 0.32; docs/BENCHMARKS.md, "The copy-machine effect on run 28"); '
            'set [train] caption to what the pictures show in the toy\'s words, e.g. "a yellow circle on a blue background" '
            "(`copylora new --base toy` writes picture A's)"]


# The one-LoRA routes (engine.project.pair_route) train far fewer steps than the copier recipe.
# On a real checkpoint: their authors' published settings (ADDifT's SD1.5 "Action" preset: 30
# iterations with CAME, the README's 30-100, rank 4 alpha 1, lr 1e-4, timesteps 500-1000; the
# Concept Sliders image config: 1000 iterations, rank 4 alpha 1, lr 2e-4), as copylora trains
# them (AdamW8bit, not CAME: 100 steps). On the built-in bases: the settings measured on the toy
# (docs/BENCHMARKS.md, "Routes per CPU-second": ADDifT caption-free at a quarter of the example's
# steps; the slider under the caption, 200 steps at lr 1e-2).
ROUTE_PRESETS: dict[str, dict[str, dict]] = {
    "addift": {"checkpoint": {"max_train_steps": 100, "network_dim": 4, "network_alpha": 1.0, "learning_rate": 1e-4, "min_timestep": 500},
               "tiny": {"max_train_steps": 40}, "tiny-sdxl": {"max_train_steps": 20}, "toy": {"max_train_steps": 500, "caption": ""}},
    "slider": {"checkpoint": {"max_train_steps": 1000, "network_dim": 4, "network_alpha": 1.0, "learning_rate": 2e-4},
               "tiny": {"max_train_steps": 40}, "tiny-sdxl": {"max_train_steps": 20}, "toy": {"max_train_steps": 200, "learning_rate": 1e-2}},
}


def apply_route_defaults(project: Project, base_model: str) -> Project:
    """A one-LoRA route's training length and settings (ROUTE_PRESETS) over the base's defaults."""
    presets = ROUTE_PRESETS.get(project.info.method)
    if presets is None:
        return project
    preset = presets.get(base_model, presets["checkpoint"])
    project.train = replace(project.train, max_train_epochs=None, **preset)
    return project


# A prompt the pair never trains under, in words both tag-trained (anime) and captioned models
# read; the project file says to put one in the model's own style there.
HELD_OUT_PROMPT = "1girl, solo, upper body, outdoors, smile"


def apply_base_defaults(project: Project, base_model: str) -> Project:
    """The project with the defaults that fit its base model (see BUILTIN_PRESETS; SDXL
    checkpoints get SDXL-sized buckets and previews)."""
    preset = BUILTIN_PRESETS.get(base_model)
    if preset is not None:
        project.train = replace(project.train, **preset["train"])
        project.sample = replace(project.sample, **preset["sample"])
        return project
    # The preview's prompts: "" is the prompt the pair trains under (the copy), and one it never
    # trains under shows what the method promises, the change on any prompt (DESIGN, step 4);
    # with "" alone the grid showed the copy only, and a LoRA that just copies B passed it.
    project.sample = replace(project.sample, prompts=["", HELD_OUT_PROMPT])
    family = peek_family(base_model)
    if is_sdxl(family):  # SDXL-sized buckets and previews (engine.project.plan.DEFAULT_RESOLUTION)
        size = default_resolution(family)
        project.train = replace(project.train, resolution=size)
        project.sample = replace(project.sample, size=size)
    return project


def _expanded(path: str | Path, where: str, problems: list[Problem]) -> Path:
    """``~/x`` and ``~user/x`` as the shell would; a ``~user`` with no home (a typo) is a
    problem of ``where`` (Path.expanduser raises RuntimeError for it)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        problems.append(Problem(where, f"{path}: no such user's home folder ({str(path).split('/')[0]})"))
        return Path(path)


def create_project(dest: Path | str, a_image: Path | str, b_image: Path | str, *, name: str | None = None, base_model: str = "tiny",
                   method: str = "svd-merge", caption: str = "") -> Project:
    """A new project folder with the base's defaults. ``caption``: the ``[train] caption`` both
    sides train under ("" = caption-free, the published method, right for real checkpoints);
    on the toy base the callers give A's description in the toy world's words
    (:func:`engine.models.toy_data.describe`, which this layer cannot import)."""
    given = (("dest", dest), ("a_image", a_image), ("b_image", b_image), ("base_model", base_model))
    if nul := [Problem(where, "contains a NUL character (\\x00): no file can be named so") for where, value in given if "\x00" in str(value)]:
        raise ValidationError(nul)  # a paste into the app's dialog; os.path would raise ValueError, ending it
    dest = Path(os.path.realpath(dest))  # not Path.resolve: it raised RuntimeError for a link to itself
    problems: list[Problem] = []
    a_image, b_image = _expanded(a_image, "a_image", problems), _expanded(b_image, "b_image", problems)
    if problem := name_problem(name or dest.name):  # first: a name too long for a file makes exists() raise
        problems.append(Problem("dest", f"{name or dest.name!r} {problem}"))
    elif dest.name.startswith("-"):  # a new one only: a project named so already stays valid
        problems.append(Problem("dest", f"{dest.name!r} must not start with '-': every command would read it as an option "
                                        f"(`copylora check {dest.name}`), and so would rm and ls"))
    elif dest.exists():
        problems.append(Problem("dest", f"{dest} already exists"))
    elif twin := same_name_entry(dest):  # two folders that look alike in ls, the app and A1111's list
        problems.append(Problem("dest", f"{twin} already exists: the same name in another Unicode form ({unicode_form(twin.name)}, "
                                        "as a folder copied from a Mac has it)"))
    elif dest.is_symlink():  # a link to itself (realpath leaves it be): nothing can be made there
        problems.append(Problem("dest", f"{dest} is a link to {os.readlink(dest)}; remove it or choose another name"))
    _check_image(a_image, "a_image", problems)
    _check_image(b_image, "b_image", problems)
    if base_model not in BUILTIN_MODELS:
        base_path = _expanded(base_model, "base_model", problems)
        try:
            if not base_path.exists() and not any(p.where == "base_model" for p in problems):
                problems.append(Problem("base_model", f"no such file or folder: {base_path}"))
        except OSError as exc:
            problems.append(Problem("base_model", os_error_text(exc)))
        # absolute, links kept: a stable link (/models → this box's disk) is what makes a project
        # portable between machines; resolved, the next box had no such disk path
        base_model = os.path.abspath(base_path)
    if problems:
        raise ValidationError(problems)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(dest)
    except OSError as exc:  # the place to write in: the user's input to fix (exit 2), not a failed work
        said = f"{dest.parent} is a file, not a folder" if dest.parent.exists() and not dest.parent.is_dir() else os_error_text(exc)
        raise ValidationError([Problem("dest", said)]) from None
    try:
        for side, image in (("a", a_image), ("b", b_image)):
            (staging / side).mkdir()
            try:
                # a hidden picture (.photo.png) is copied visible: a teacher folder's hidden files are not pictures (images.image_files)
                shutil.copy2(image, staging / side / image.name.lstrip("."))
            except OSError as exc:  # a full disk named the source picture ("a.png: No space left on device")
                from engine.files import disk_full_error, free_text

                if not disk_full_error(exc):
                    raise
                raise ValidationError([Problem("dest", f"no space left on the disk of {dest.parent} for the pictures "
                                                       f"({free_text(dest.parent) or 'full'}; df -h {dest.parent})")]) from None
        project = Project(root=staging, info=ProjectInfo(name=name or dest.name, base_model=base_model, method=method))
        project = apply_base_defaults(project, base_model)
        project.train = replace(project.train, caption=caption)
        project = apply_route_defaults(project, base_model)  # after the caption: on the toy, addift trains caption-free
        save_project(project)
        staging.rename(dest)
    except ValidationError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        # Found while writing the staging copy: its path is gone with it, and project.base_model
        # is this function's base_model (the caller's --base or field), so say them that way.
        where = {"project.base_model": "base_model"}
        raise ValidationError([Problem(where.get(p.where, p.where), p.message) for p in exc.problems]) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_project(dest)
