"""Concept projects: a folder with ``copylora.toml`` and two teacher-image folders.

``load_project`` reads and validates everything at once (types, ranges, unknown keys with a
did-you-mean, folders, images) and raises one :class:`ValidationError` listing every problem;
it never writes. ``save_project`` renders the canonical commented TOML, re-validates that
exact text, and only then replaces the file atomically. The layout of the TOML is in
``docs/project-format.md``.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from engine.errors import Problem, ValidationError
from engine.files import input_file_problem
from engine.formats.model_files import BUILTIN_MODELS
from engine.project.images import dead_links, image_files, read_image_info
from engine.project.names import name_problem
from engine.project.optimizer_args import optimizer_arg_problem
from engine.project.params import (
    BASE_WEIGHTS_KEYS,
    TRAIN_KEYS,
    ConceptParams,
    MergeParams,
    ProjectInfo,
    RegParams,
    SampleParams,
    SideConfig,
    TrainParams,
)
from engine.project.validate import BAD, build_section, coerce_key, did_you_mean, show
from engine.toml_text import decode_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PROJECT_FILE = "copylora.toml"
SIDES = ("a", "b")
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
TABLES = ("project", "train", "a", "b", "merge", "sample", "reg", "concept")
ARRAY_TABLES = ("concept",)  # [[concept]]: a list of tables

# kohya's DreamBooth-style folder names: "5_" or "5_token" means 5 repeats.
_KOHYA_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass
class Project:
    root: Path
    info: ProjectInfo = field(default_factory=ProjectInfo)
    train: TrainParams = field(default_factory=TrainParams)
    a: SideConfig = field(default_factory=lambda: SideConfig(folder="a"))
    b: SideConfig = field(default_factory=lambda: SideConfig(folder="b"))
    merge: MergeParams = field(default_factory=MergeParams)
    sample: SampleParams = field(default_factory=SampleParams)
    reg: RegParams | None = None
    concepts: list[ConceptParams] = field(default_factory=list)  # [[concept]], with [reg] only

    @property
    def name(self) -> str:
        return self.info.name or self.root.name

    @property
    def toml_path(self) -> Path:
        return self.root / PROJECT_FILE

    def side(self, side: str) -> SideConfig:
        return {"a": self.a, "b": self.b}[side.lower()]

    def side_folder(self, side: str) -> Path:
        return self.root / self.side(side).folder

    def output_dir(self) -> Path:
        return self.root / self.info.output_dir

    def base_model_path(self) -> str:
        """The base model spec with relative paths resolved against the project folder."""
        base = self.info.base_model
        if base in BUILTIN_MODELS:
            return base
        path = Path(base).expanduser()
        return str(path if path.is_absolute() else self.root / path)

    def side_params(self, side: str) -> TrainParams:
        """Effective [train] for one side: [train], then the folder-name repeats, then [a]/[b].
        The one-LoRA routes' LoRA (side "pair") trains with A's, which must be B's (pair_route)."""
        config = self.side("a" if side.lower() == "pair" else side)
        params = self.train
        repeats = folder_repeats(config.folder)
        if repeats is not None:
            params = replace(params, num_repeats=repeats)
        overrides = dict(config.overrides)
        # A side that sets one of steps/epochs drops the other one inherited from [train].
        if "max_train_steps" in overrides and "max_train_epochs" not in overrides:
            overrides["max_train_epochs"] = None
        if "max_train_epochs" in overrides and "max_train_steps" not in overrides:
            overrides["max_train_steps"] = None
        return replace(params, **overrides)

    def repeats_source(self, side: str) -> str:
        config = self.side(side)
        if "num_repeats" in config.overrides:
            return f"[{side}].num_repeats"
        if folder_repeats(config.folder) is not None:
            return f"folder name {Path(config.folder).name!r}"
        return "[train].num_repeats"


def folder_repeats(folder: str) -> int | None:
    match = _KOHYA_FOLDER.match(Path(folder).name)
    if match and int(match.group(1)) > 0:
        return int(match.group(1))
    return None


def kohya_folder_words(folder: str) -> str:
    """The words of a kohya folder name after its repeats (``5_sks girl``: "sks girl"), which
    sd-scripts trains as the caption of pictures without a caption file; "" when none."""
    match = _KOHYA_FOLDER.match(Path(folder).name)
    return match.group(2).strip() if match and int(match.group(1)) > 0 else ""


def find_project_file(path: Path | str) -> Path:
    path = Path(path)
    return path / PROJECT_FILE if path.is_dir() or path.suffix != ".toml" else path


def load_project(path: Path | str, *, check_files: bool = True, decode_images: bool = True, writing: bool = True) -> Project:
    """Load and validate a project folder (or its ``copylora.toml``). Never writes anything.

    ``decode_images=False`` reads only the pictures' headers (the app's project list: a
    truncated picture is then found by ``check``/``run``, not there). ``writing=False``: to look
    at it (the app's list and form, a preview saved elsewhere, stats), an output or class folder
    that only cannot be written (a read-only mount, another user's) is no problem; one that
    cannot be a folder at all still is. ``check``, ``run`` and training load it to write."""
    toml_path = find_project_file(path)
    if not toml_path.is_file():
        if not Path(path).exists():
            raise ValidationError([Problem(str(path), "no such project folder")])
        if os.path.lexists(toml_path):  # there, but a link to nothing or to itself, a folder, a pipe: say which
            raise ValidationError([Problem("", input_file_problem(toml_path) or f"{toml_path}: cannot be read")])
        raise ValidationError([Problem(str(toml_path), "no project file here (create a project with `copylora new`)")])
    try:
        raw = toml_path.read_bytes()
    except OSError as exc:
        raise ValidationError([Problem(str(toml_path), f"cannot read: {exc}")]) from None
    try:
        text = decode_toml(raw)  # a Windows editor's BOM is dropped; Shift-JIS is named
    except ValueError as exc:
        raise ValidationError([Problem(str(toml_path), str(exc))]) from None
    return parse_project(text, toml_path.parent, source=str(toml_path), check_files=check_files, decode_images=decode_images,
                         writing=writing)


def parse_project(text: str, root: Path, *, source: str = PROJECT_FILE, check_files: bool = True, decode_images: bool = True,
                  writing: bool = True) -> Project:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError([Problem(source, f"not valid TOML: {exc}")]) from None
    problems: list[Problem] = []
    project = _build(data, Path(root).resolve(), problems)
    if not problems:
        _check_semantics(project, problems, check_files, decode_images, writing)
    if problems:
        # Both sides share [train], so one bad key there can be found once per side.
        raise ValidationError(list(dict.fromkeys(problems)), source)
    return project


def _build(data: dict, root: Path, problems: list[Problem]) -> Project:
    for key, value in data.items():
        if key not in TABLES:
            problems.append(Problem(key, f"unknown table{did_you_mean(key, TABLES)}"))
        elif key in ARRAY_TABLES:
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                problems.append(Problem(key, f"must be a list of tables [[{key}]], got {show(value)}"))
        elif not isinstance(value, dict):
            problems.append(Problem(key, f"must be a table [{key}], got {show(value)}"))
    def table(key: str) -> dict:
        found = data.get(key)
        return found if isinstance(found, dict) else {}

    info = build_section(ProjectInfo, table("project"), "project", problems)
    train = build_section(TrainParams, table("train"), "train", problems)
    if "max_train_steps" in table("train") and "max_train_epochs" not in table("train"):
        # Writing only max_train_steps means "count steps": the epochs default must not linger.
        train = replace(train, max_train_epochs=None)
    sides = {side: _build_side(side, table(side), problems) for side in SIDES}
    merge = build_section(MergeParams, table("merge"), "merge", problems)
    if merge.lbws and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in merge.lbws):
        # one vector written flat ("one vector: both alike", as its comment says): it was refused
        # as "at most 2 vectors, got 17"
        merge = replace(merge, lbws=[list(merge.lbws)])
    sample = build_section(SampleParams, table("sample"), "sample", problems)
    reg = build_section(RegParams, table("reg"), "reg", problems) if "reg" in data else None
    found = data.get("concept")
    listed: list = found if isinstance(found, list) else []
    concepts = [build_section(ConceptParams, item, f"concept[{n}]", problems)
                for n, item in enumerate(listed, start=1) if isinstance(item, dict)]
    return Project(root=root, info=info, train=train, a=sides["a"], b=sides["b"], merge=merge, sample=sample, reg=reg,
                   concepts=concepts)


def _build_side(side: str, table: dict, problems: list[Problem]) -> SideConfig:
    folder = table.get("folder", side)
    if not isinstance(folder, str) or not folder:
        problems.append(Problem(f"{side}.folder", f"must be a folder name, got {show(folder)}"))
        folder = side
    overrides: dict[str, Any] = {}
    train_fields = {f.name: f for f in fields(TrainParams)}
    side_fields = {f.name: f for f in fields(SideConfig) if f.name in BASE_WEIGHTS_KEYS}
    base_weights: dict[str, Any] = {}
    names = ["folder", *TRAIN_KEYS, *(BASE_WEIGHTS_KEYS if side == "b" else ())]  # what a side's table takes
    for key, raw in table.items():
        if key == "folder":
            continue
        if key in side_fields and side != "b":
            problems.append(Problem(f"{side}.{key}", "belongs in [b]: the differential route applies A while B trains"))
            continue
        into = base_weights if key in side_fields else overrides
        value = coerce_key(key, raw, side_fields if key in side_fields else train_fields, side, problems, names)
        if value is not BAD:
            into[key] = value
    return SideConfig(folder=folder, overrides=overrides, **base_weights)


def _check_semantics(project: Project, problems: list[Problem], check_files: bool, decode_images: bool = True, writing: bool = True) -> None:
    """Checks that need more than one key, or the file system."""
    if not project.info.name and (why := name_problem(project.root.name)):  # the folder's name names the outputs
        problems.append(Problem("project.name", f"unset, so the outputs are named after the folder {project.root.name!r}, "
                                f"which {why}: set [project] name or rename the folder"))
    for name, table in (("train", asdict_shallow(project.train)), *((side, project.side(side).overrides) for side in SIDES)):
        if table.get("max_train_epochs") is not None and table.get("max_train_steps") is not None:
            problems.append(Problem(name, "set max_train_epochs or max_train_steps, not both"))
    for side in SIDES:  # a stop rule with nothing to judge it on would silently never stop
        effective = project.side_params(side)
        if effective.stop_when_copied != "" and effective.copy_check_every_n_steps == 0:
            where = "train" if "stop_when_copied" not in project.side(side).overrides else side
            problem = Problem(f"{where}.stop_when_copied", "needs copy_check_every_n_steps > 0 (the checks it judges)")
            if problem not in problems:
                problems.append(problem)
    for name, table in (("train", asdict_shallow(project.train)), *((side, project.side(side).overrides) for side in SIDES)):
        if "min_timestep" in table or "max_timestep" in table:
            effective = project.side_params(name if name in SIDES else "a")
            if effective.min_timestep >= effective.max_timestep:
                problem = Problem(f"{name}.min_timestep", f"must be below max_timestep ({effective.min_timestep} >= {effective.max_timestep})")
                if problem not in problems:
                    problems.append(problem)
    from engine.project.pair_route import pair_problems

    problems += pair_problems(project, check_files)
    for i, ratio in enumerate(project.merge.ratios):
        _check_number(ratio, f"merge.ratios[{i}]", 100.0, problems)
    problems += sample_problems(project.sample)
    _check_lbws(project, problems, check_files)
    sections: list[tuple[str, TrainParams | SideConfig]] = [("train", project.train), *((side, project.side(side)) for side in SIDES)]
    for name, params in sections:
        args = params.optimizer_args if isinstance(params, TrainParams) else params.overrides.get("optimizer_args", {})
        for key, value in args.items():
            if not isinstance(value, (int, float, str, bool, list)):
                problems.append(Problem(f"{name}.optimizer_args.{key}", f"must be a number, string, boolean or list, got {show(value)}"))
            elif isinstance(value, float) and not math.isfinite(value):
                problems.append(Problem(f"{name}.optimizer_args.{key}", f"must be a finite number, got {show(value)}"))
            elif (why := optimizer_arg_problem(key, value)) is not None:
                problems.append(Problem(f"{name}.optimizer_args.{key}", why))
    if _folder_key(project.root, project.a.folder) == _folder_key(project.root, project.b.folder):
        same = repr(project.a.folder) if project.a.folder == project.b.folder else f"{project.a.folder!r} and {project.b.folder!r} are one folder"
        problems.append(Problem("b.folder", f"A and B use the same folder ({same}): B must hold the changed picture"))
    if project.reg is not None and project.reg.num_class_images > 0 and not project.reg.class_prompt:
        problems.append(Problem("reg.class_prompt", "needed to generate class images (num_class_images > 0)"))
    if project.reg is not None and not project.reg.folder and (project.reg.num_class_images > 0 or project.reg.class_prompt):
        # as a concept's class_folder: "" means no class pictures, so what asks for them is a mistake, not ignored
        problems.append(Problem("reg.folder", '"" trains without class pictures, but class_prompt or num_class_images asks for some: '
                                "name their folder"))
    _check_concepts(project, problems)
    _check_windows_paths(project, problems)
    _on_disk("project.output_dir", problems, _check_output_dir, project, problems, writing)
    if check_files:
        _on_disk("project.base_model", problems, _check_base_model, project, problems)
        from engine.project.network_weights import network_weights_problems
        from engine.project.training_logs import logging_problems

        problems += network_weights_problems(project) + logging_problems(project)  # [train] network_weights, log_with
        for side in SIDES:
            _on_disk(f"{side}.folder", problems, _check_image_folder, project.root, project.side(side).folder, f"{side}.folder", problems, decode_images)
        if project.reg is not None and project.reg.folder and project.reg.num_class_images == 0:
            _on_disk("reg.folder", problems, _check_image_folder, project.root, project.reg.folder, "reg.folder", problems, decode_images)
        elif project.reg is not None and project.reg.folder:  # the missing ones are generated: those there must read
            _on_disk("reg.folder", problems, _check_pictures_there, project.root / project.reg.folder, "reg.folder", problems, decode_images,
                     project.reg.num_class_images if writing else 0)
        for n, concept in enumerate(project.concepts, start=1):
            if concept.folder:
                _on_disk(f"concept[{n}].folder", problems, _check_image_folder, project.root, concept.folder, f"concept[{n}].folder", problems,
                         decode_images)
            if concept.class_folder and concept.num_class_images == 0:
                _on_disk(f"concept[{n}].class_folder", problems, _check_image_folder, project.root, concept.class_folder,
                         f"concept[{n}].class_folder", problems, decode_images)
            elif concept.class_folder:
                _on_disk(f"concept[{n}].class_folder", problems, _check_pictures_there, project.root / concept.class_folder,
                         f"concept[{n}].class_folder", problems, decode_images, concept.num_class_images if writing else 0)
        _check_captions(project, problems)


CAPTION_EXTENSION = re.compile(r"\.[A-Za-z0-9_.-]+")  # ".txt", ".caption": a name's ending, never a path


def _on_disk(key: str, problems: list[Problem], check: Callable[..., object], *args: Any) -> None:
    """Run one check that asks the filesystem about a path the project names. What the OS
    refuses to answer (a name longer than the filesystem allows — a paste gone wrong — a folder
    this user may not list, a dead network mount) is a problem of that key, said like the
    others; it once ended `copylora check` with the OS's bare message and, in the app, left the
    form's check silently unfinished."""
    from engine.errors import os_error_text

    try:
        check(*args)
    except OSError as exc:
        problems.append(Problem(key, os_error_text(exc)))


def _check_concepts(project: Project, problems: list[Problem]) -> None:
    """[[concept]] and the caption keys: what needs what (said at check, not at the job)."""
    from engine.project.concepts import FILEWORDS, uses_filewords

    if project.concepts and project.reg is None:
        problems.append(Problem("concept", "[[concept]] needs a [reg] table: further concepts belong to the DreamBooth flow "
                                "(add [reg] for its instance prompt and class pictures; folder = \"\" there trains without class pictures)"))
    reg = project.reg
    # [train] caption (the copy-machine pair's one prompt) and [reg] instance_prompt say the same thing
    captions = {"train": project.train.caption, "a": project.a.overrides.get("caption", ""), "b": project.b.overrides.get("caption", "")}
    for table, caption in captions.items():
        if reg is not None and caption:
            problems.append(Problem(f"{table}.caption", "with [reg] the teacher pictures train under [reg] instance_prompt: "
                                    "set the prompt there"))
        elif reg is None and isinstance(caption, str) and uses_filewords(caption):
            problems.append(Problem(f"{table}.caption", f"{FILEWORDS} needs caption files, which belong to the DreamBooth "
                                    "flow ([reg] instance_prompt): write the caption out here"))
    if reg is not None:
        extension = reg.caption_extension
        if not CAPTION_EXTENSION.fullmatch(extension):
            problems.append(Problem("reg.caption_extension", f"must be a file extension such as \".txt\", got {show(extension)}"))
        if uses_filewords(reg.class_prompt):
            problems.append(Problem("reg.class_prompt", f"{FILEWORDS} is read from the teacher pictures' captions only: "
                                    "the class prompt is used as written"))
    root = project.root
    folders = {_folder_key(root, project.a.folder): "a.folder", _folder_key(root, project.b.folder): "b.folder"}
    for n, concept in enumerate(project.concepts, start=1):
        key = f"concept[{n}]"
        if not concept.folder:
            problems.append(Problem(f"{key}.folder", "needed: the folder of this concept's teacher pictures"))
        elif (where := _folder_key(root, concept.folder)) in folders:
            problems.append(Problem(f"{key}.folder", f"{concept.folder!r} is already {folders[where]}: "
                                    "each concept needs its own pictures"))
        else:
            folders[where] = f"{key}.folder"
        if uses_filewords(concept.class_prompt):
            problems.append(Problem(f"{key}.class_prompt", f"{FILEWORDS} is read from the teacher pictures' captions only"))
        if not concept.class_folder and (concept.class_prompt or concept.num_class_images):
            problems.append(Problem(f"{key}.class_folder", "needed for class pictures (class_prompt or num_class_images is set)"))
        if concept.num_class_images > 0 and not concept.class_prompt:
            problems.append(Problem(f"{key}.class_prompt", "needed to generate class images (num_class_images > 0)"))
    # Class pictures are generated into their folder and pooled per folder: one that is also a
    # teacher folder would mix generated pictures into the teacher's, two keys on one folder
    # would generate and count it twice.
    if reg is not None:
        classes = ([("reg.folder", reg.folder)] if reg.folder else []) + [(f"concept[{n}].class_folder", c.class_folder)
                                                                          for n, c in enumerate(project.concepts, start=1) if c.class_folder]
        seen: dict[str, str] = {}
        for key, folder in classes:
            where = _folder_key(root, folder)
            same = folders.get(where) or seen.get(where)
            if same:
                problems.append(Problem(key, f"{folder!r} is already {same}: class pictures need a folder of their own"))
            seen.setdefault(where, key)
    # Previews and grids are written into the output's samples/ folder: a teacher folder there
    # would take them as teacher pictures at the next run.
    samples = _folder_key(root, str(Path(project.info.output_dir) / "samples"))
    if samples in folders:
        problems.append(Problem("project.output_dir", f"previews go to {str(Path(project.info.output_dir) / 'samples')!r}, which "
                                f"is {folders[samples]}: they would train as teacher pictures; choose another output_dir"))


def _folder_key(root: Path, folder: str) -> str:
    """One spelling of a folder the project names ("a", "./a/", "/abs/proj/a" and a link to it
    are one folder), so two keys naming one folder are caught however each is written."""
    path = root / folder
    try:
        return str(path.resolve())
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL: the folder's own check says what is wrong
        return os.path.normpath(path)


def _check_captions(project: Project, problems: list[Problem]) -> None:
    """Every picture whose instance prompt says [filewords] has a readable, non-empty caption:
    the error names the picture, before any job is queued."""
    from engine.project.concepts import CaptionError, read_caption, uses_filewords

    reg = project.reg
    if reg is None or not CAPTION_EXTENSION.fullmatch(reg.caption_extension):
        return  # no captions to read, or an extension already said to be wrong ("/" would name a folder)
    folders = []
    if uses_filewords(reg.instance_prompt):
        folders += [(project.side_folder(side), "reg.instance_prompt") for side in SIDES]
    for n, concept in enumerate(project.concepts, start=1):
        if uses_filewords(concept.instance_prompt) and concept.folder:
            folders.append((project.root / concept.folder, f"concept[{n}].instance_prompt"))
    for folder, key in folders:
        try:
            images = image_files(folder) if folder.is_dir() else []
        except OSError:  # the folder's own key says why (_on_disk)
            continue
        for image in images:
            try:
                read_caption(image, reg.caption_extension)
            except CaptionError as exc:
                problems.append(Problem(key, str(exc)))


def _check_lbws(project: Project, problems: list[Problem], check_files: bool) -> None:
    """[merge] lbws: at most [B, A] block-weight vectors, of one length that suits the base
    model's family (said now, not by the merge job after both trainings)."""
    from engine.formats.model_files import peek_family
    from engine.lbw_vectors import BlockWeightError, check_lbws

    vectors = project.merge.lbws
    if len(vectors) > 2:
        problems.append(Problem("merge.lbws", f"at most 2 vectors ([B, A], or one for both), got {len(vectors)}"))
        return
    family: str | None = project.info.model_family
    if family == "auto":
        family = peek_family(project.base_model_path()) if vectors and check_files else None
    try:
        check_lbws(vectors, family, "merge.lbws")
    except BlockWeightError as exc:
        problems.append(Problem(exc.where, exc.message))


def sample_table_problems(table: dict[str, Any]) -> tuple[SampleParams | None, list[Problem]]:
    """A [sample] table as the TOML would give it (``copylora sample``'s flags over a project's
    table, or over the defaults): the SampleParams it makes and every problem, named
    ``sample.KEY``, by the rules a project's own [sample] obeys."""
    problems: list[Problem] = []
    params = build_section(SampleParams, table, "sample", problems)  # a bad key's default stands in: the rest is still checked
    problems += sample_problems(params)
    return (None if problems else params), problems


def sample_problems(sample: SampleParams) -> list[Problem]:
    """What [sample] needs beyond each key's type and range: lists of the right items, a size
    drawn in whole latent cells."""
    problems: list[Problem] = []
    for key, items, kind in (("prompts", sample.prompts, str), ("strengths", sample.strengths, (int, float))):
        if not items:
            problems.append(Problem(f"sample.{key}", "must not be empty"))
        for i, item in enumerate(items):
            if kind is str and not isinstance(item, str):
                problems.append(Problem(f"sample.{key}[{i}]", f"must be a string, got {show(item)}"))
            elif kind is not str:
                _check_number(item, f"sample.{key}[{i}]", 10.0, problems)
    _check_sample_size(sample.size, problems)
    sides = [sample.size, sample.size] if isinstance(sample.size, int) else sample.size
    if not problems and isinstance(sides, list) and len(sides) == 2:
        pictures = len(sample.prompts) * len(sample.strengths)
        pixels = pictures * sides[0] * sides[1]
        if pictures > MOST_GRID_PICTURES or pixels > MOST_GRID_PIXELS:
            # 5000 strengths were taken and drawn for minutes; a grid past Pillow's limit
            # (its "decompression bomb") was written and then could not be opened, in the app either
            problems.append(Problem("sample.strengths", f"{len(sample.prompts)} prompt(s) x {len(sample.strengths)} strength(s) = "
                                    f"{pictures} pictures of {sides[0]}x{sides[1]} in one grid ({pixels / 1e6:.0f} megapixels): at "
                                    f"most {MOST_GRID_PICTURES} pictures and {MOST_GRID_PIXELS // 1_000_000} megapixels; "
                                    "draw several grids"))
    return problems


MOST_GRID_PICTURES = 256
# Pillow refuses to open a picture past twice its MAX_IMAGE_PIXELS (2 x 89 MP: its "decompression
# bomb"); 9 prompts x 9 strengths of SDXL at 1024x1024 (85 MP) is a grid users draw.
MOST_GRID_PIXELS = 178_000_000


def _check_sample_size(size: Any, problems: list[Problem]) -> None:
    """Pictures are drawn in 8-pixel latent cells: a side that is not a multiple of 8 would fail
    the preview after both trainings (found on the GPU acceptance run, 600x900)."""
    sides = [size, size] if isinstance(size, int) else size
    if not (isinstance(sides, list) and len(sides) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sides)):
        return  # the shape is the generic validation's to report
    if any(v % 8 for v in sides):
        near = "x".join(str(max(8, v - v % 8)) for v in sides)
        problems.append(Problem("sample.size", f"{sides[0]}x{sides[1]}: both sides must be multiples of 8 "
                                f"(pictures are drawn in 8-pixel cells), e.g. {near}"))


def _check_number(value: Any, path: str, limit: float, problems: list[Problem]) -> None:
    """A number in a list (ratios, strengths): finite, and |value| <= limit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(Problem(path, f"must be a number, got {show(value)}"))
    elif not math.isfinite(value):
        problems.append(Problem(path, f"must be a finite number, got {show(value)}"))
    elif abs(value) > limit:
        problems.append(Problem(path, f"must be between -{limit:g} and {limit:g}, got {show(value)}"))


def asdict_shallow(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _check_base_model(project: Project, problems: list[Problem]) -> None:
    """The base model exists, is whole and is one (headers only: see engine.formats.model_files),
    matches model_family, and is wide enough for the ranks asked of it."""
    from engine.errors import ModelError
    from engine.formats.model_files import builtin_facts, inspect_base_model

    base = project.info.base_model
    if base in BUILTIN_MODELS:
        facts = builtin_facts(base)
    else:
        path = Path(project.base_model_path())
        if not path.exists():
            problems.append(Problem("project.base_model", f"no such file or folder: {path}"))
            return
        try:
            facts = inspect_base_model(path)
        except ModelError as exc:
            problems.append(Problem("project.base_model", str(exc)))
            return
    asked = project.info.model_family
    if asked != "auto" and facts.family is not None and asked.split("-")[0] != facts.family:
        problems.append(Problem("project.model_family", f"{asked!r}, but {Path(base).name} is an {facts.family} model"))
    elif asked in ("sd2", "sdxl") and facts.v_prediction:  # an epsilon family on a model that says v: the wrong target
        problems.append(Problem("project.model_family", f"{asked!r} is epsilon-prediction, but {Path(base).name} says v-prediction "
                                f"({facts.describe()}): use {asked}-v or auto"))
    for side in SIDES:
        params = project.side_params(side)
        where = side if any(k in project.side(side).overrides for k in ("network_dim", "conv_dim")) else "train"
        widest = max(facts.widest_unet or 0, 0 if params.network_train_unet_only else (facts.widest_text or 0))
        if widest and params.network_dim > widest:
            problems.append(Problem(f"{where}.network_dim", f"{params.network_dim} is more than this base model's layers can use "
                                    f"(its widest layer has min(in, out) = {widest}); at most {widest}"))
        if facts.widest_unet and params.conv_dim > facts.widest_unet:
            problems.append(Problem(f"{where}.conv_dim", f"{params.conv_dim} is more than this base model's convolutions can use; at most {facts.widest_unet}"))


def _check_output_dir(project: Project, problems: list[Problem], writing: bool = True) -> None:
    from engine.files import unwritable_folder, writable_folder_problem

    problem = writable_folder_problem(project.output_dir())
    if problem is not None and not writing and unwritable_folder(project.output_dir()):
        problem = None  # looked at, not written: its outputs are read where they are
    if problem is None:  # the folders made in it: a file of one's name failed the job that writes there, late
        from engine.project.plan import output_paths

        paths = output_paths(project)
        for folder in (paths.samples, paths.folder / "runs", paths.runs):
            if folder.exists() and not folder.is_dir():
                problem = f"{folder} is a file: {'previews' if folder == paths.samples else 'checkpoints'} go into a folder of that name; move it away"
                break
    if problem is None:
        from engine.project.output_owner import other_project_around, owner_problem
        from engine.project.plan import output_paths

        paths = output_paths(project)
        problem = owner_problem(project.root, project.name, paths.runs) if paths.shared else None
        if problem is None and paths.shared and (other := other_project_around(project.root, paths.folder)) is not None:
            problem = (f"{paths.folder} is inside another project's folder ({other}): what is there is that project's (its "
                       "LoRAs read as this one's, its checkpoints offered to this one); give this project an output_dir of its own")
    if problem is not None:
        problems.append(Problem("project.output_dir", problem))


def windows_path(folder: str) -> bool:
    """A kohya config's Windows folder (``D:\\data\\img``, ``..\\reg``): on this machine it named a
    folder of that literal name inside the project (class pictures were generated into one)."""
    return "\\" in folder or bool(re.match(r"^[A-Za-z]:[\\/]", folder))


def _check_windows_paths(project: Project, problems: list[Problem]) -> None:
    folders = [("a.folder", project.a.folder), ("b.folder", project.b.folder)]
    if project.reg is not None:
        folders.append(("reg.folder", project.reg.folder))
    for n, concept in enumerate(project.concepts, start=1):
        folders += [(f"concept[{n}].folder", concept.folder), (f"concept[{n}].class_folder", concept.class_folder)]
    for key, folder in folders:
        if folder and windows_path(folder) and not (project.root / folder).exists():
            problems.append(Problem(key, f"{folder!r} is a Windows path: give the folder as it is on this machine "
                                         "(relative to the project, or absolute, with /)"))


def _check_image_folder(root: Path, folder: str, key: str, problems: list[Problem], decode: bool = True) -> None:
    path = root / folder
    classes = key == "reg.folder" or key.endswith(".class_folder")
    generate = ' (or set num_class_images to have class pictures generated there)' if classes else ""
    if not path.is_dir():
        if windows_path(folder):
            return  # said once, by _check_windows_paths
        problems.append(Problem(key, f"{path} is a file, not a folder" if path.exists() else f"folder not found: {path}{generate}"))
        return
    images = image_files(path)
    if not images:
        sub = [p.name for p in sorted(path.iterdir()) if p.is_dir() and image_files(p)][:3] if path.is_dir() else []
        inside = f"; its subfolders {', '.join(sub)} hold some (kohya's layout: name one of them)" if sub else ""
        problems.append(Problem(key, f"no images in {path} (png, jpg, webp, bmp, tif){inside}{generate}"))
    _check_pictures_there(path, key, problems, decode)


def _check_pictures_there(path: Path, key: str, problems: list[Problem], decode: bool = True, wanted: int = 0) -> None:
    """Each picture of ``path`` (if it is a folder) reads: a class folder whose missing pictures
    will be generated must still hold no broken one (it counted as a class picture, and training
    stopped on it). And the pictures still missing can be written there (on a read-only mount
    the class-images job failed on "Read-only file system" after `check` said valid)."""
    images = image_files(path) if path.is_dir() else []
    for image in images:
        try:
            read_image_info(image, decode=decode)
        except ValueError as exc:
            problems.append(Problem(f"{key} {image.name}", str(exc)))
    for link in dead_links(path) if path.is_dir() else ():
        problems.append(Problem(f"{key} {link.name}", f"{input_file_problem(link)}: mount what holds it, or remove the link"))
    if len(images) < wanted:
        from engine.files import writable_folder_problem

        if why := writable_folder_problem(path):
            problems.append(Problem(key, f"{wanted - len(images)} class picture(s) are to be generated into it, but {why}"))


def save_project(project: Project, path: Path | str | None = None) -> Path:
    """Validate and write ``copylora.toml`` atomically. Nothing is written if it is invalid."""
    from engine.project.toml_writer import render_project

    target = find_project_file(path) if path is not None else project.toml_path
    text = render_project(project)
    try:  # the user's own comments in the file, kept where they were (engine.project.comment_keeper)
        before = target.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        before = ""
    if before:
        from engine.project.comment_keeper import keep_comments

        text = keep_comments(before, text)
    parse_project(text, target.parent, source=str(target))  # raises before anything is written
    from engine.files import write_text_atomic

    write_text_atomic(target, text)
    return target
