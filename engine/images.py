"""Teacher-image folders: which files count as images, and whether they really are.

Caption files (``.txt``, ``.caption``) and anything else that is not an image are ignored:
copy-machine training is caption-free. A file with an image extension that Pillow cannot
read is an error, reported by path, so a half-copied PNG is caught before a 20-minute run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    width: int
    height: int


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), sorted by name for a stable order."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def ignored_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS)


def read_image_info(path: Path) -> ImageInfo:
    """Open and fully decode the image (``verify()`` misses truncated pixel data).

    Raises ``ValueError`` with a user-facing reason when it is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return ImageInfo(path, image.width, image.height)
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except (OSError, SyntaxError) as exc:  # truncated/corrupt data
        raise ValueError(f"corrupt image ({exc})") from None
