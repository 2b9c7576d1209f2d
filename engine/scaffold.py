"""Create a new concept project folder from two teacher images.

The folder is assembled in a temporary sibling and renamed into place only once the images
are copied and the TOML validates, so a failure (unreadable image, name taken, disk full)
leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from engine.errors import Problem, ValidationError
from engine.images import IMAGE_EXTENSIONS, read_image_info
from engine.models import peek_family
from engine.params import ProjectInfo
from engine.plan import default_resolution
from engine.project import BUILTIN_MODELS, Project, load_project, save_project


def _check_image(path: Path, key: str, problems: list[Problem]) -> None:
    if not path.is_file():
        problems.append(Problem(key, f"no such file: {path}"))
    elif path.suffix.lower() not in IMAGE_EXTENSIONS:
        problems.append(Problem(key, f"{path.name}: not an image file ({', '.join(IMAGE_EXTENSIONS)})"))
    else:
        try:
            read_image_info(path)
        except ValueError as exc:
            problems.append(Problem(key, f"{path}: {exc}"))


def create_project(dest: Path | str, a_image: Path | str, b_image: Path | str, *, name: str | None = None, base_model: str = "tiny") -> Project:
    dest = Path(dest).resolve()
    a_image, b_image = Path(a_image).expanduser(), Path(b_image).expanduser()
    problems: list[Problem] = []
    if dest.exists():
        problems.append(Problem("NAME", f"{dest} already exists"))
    _check_image(a_image, "--a", problems)
    _check_image(b_image, "--b", problems)
    if base_model not in BUILTIN_MODELS:
        base_path = Path(base_model).expanduser()
        if not base_path.exists():
            problems.append(Problem("--base", f"no such file or folder: {base_path}"))
        base_model = str(base_path.resolve())
    if problems:
        raise ValidationError(problems)

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for side, image in (("a", a_image), ("b", b_image)):
            (staging / side).mkdir()
            shutil.copy2(image, staging / side / image.name)
        project = Project(root=staging, info=ProjectInfo(name=name or dest.name, base_model=base_model))
        family = peek_family(base_model)
        if family == "sdxl":  # SDXL-sized buckets and previews (engine.plan.DEFAULT_RESOLUTION)
            size = default_resolution(family)
            project.train = replace(project.train, resolution=size)
            project.sample = replace(project.sample, size=size)
        save_project(project)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_project(dest)
