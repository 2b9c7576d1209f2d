"""Small builders shared by tests: teacher images and project folders on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "projects" / "example-monochrome"


def write_png(path: Path, size: tuple[int, int] = (96, 144), colour: tuple[int, int, int] = (200, 60, 40)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def copy_example(tmp_path: Path, name: str = "example-monochrome", source: str = "example-monochrome") -> Path:
    """``projects/<source>`` (without outputs) copied to ``tmp_path/<name>``."""
    dest = tmp_path / name
    shutil.copytree(EXAMPLE.parent / source, dest, ignore=shutil.ignore_patterns("output"))
    return dest


def train_sides_apart(root: Path) -> Path:
    """Set ``twin_training = false``: the queue trains A and B as two jobs (for tests of the
    queue's mechanics with two trainings)."""
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("twin_training = true", "twin_training = false"))
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to prove that nothing was written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def quiet(_line: str) -> None:
    """A log that says nothing (trainings in tests)."""
