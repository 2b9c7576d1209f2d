"""Teacher-image folders: which files count as images, and whether they really are.

Caption files (``.txt``, ``.caption``) and anything else that is not an image are ignored:
copy-machine training is caption-free. A file with an image extension that Pillow cannot
read is an error, reported by path, so a half-copied PNG is caught before a 20-minute run.
"""

from __future__ import annotations

from contextlib import contextmanager
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


def read_image_info(path: Path, *, decode: bool = True) -> ImageInfo:
    """The image's size. With ``decode`` (validation: ``copylora check``, the form, ``run``)
    the pixels are decoded too, because ``verify()`` misses truncated pixel data; without it
    (the plan, the app's project list) only the header is read, which is instant even for a
    12000×12000 photo.

    Raises ``ValueError`` with a user-facing reason when it is not a readable image, or is
    beyond Pillow's decompression-bomb limit (then it must be downscaled first).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with quiet_pillow(), Image.open(path) as image:
            if decode:
                image.load()
            return ImageInfo(path, image.width, image.height)
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"too large to decode safely ({_bomb_size(exc)}): downscale it first (a training bucket is at most 4096 pixels a side)") from None
    except (OSError, SyntaxError) as exc:  # truncated/corrupt data
        raise ValueError(f"corrupt image ({exc})") from None
    except MemoryError:
        raise ValueError("too large to decode in this machine's memory: downscale it first") from None


def _bomb_size(exc: Exception) -> str:
    """'185 Mpx, Pillow's limit is 179 Mpx' from Pillow's message (it has the pixel counts)."""
    import re

    numbers = [int(n) for n in re.findall(r"\d+", str(exc))]
    if len(numbers) >= 2:
        return f"{numbers[0] / 1e6:.0f} Mpx, Pillow's limit is {numbers[1] / 1e6:.0f} Mpx"
    return "beyond Pillow's limit"


@contextmanager
def quiet_pillow():
    """Pillow warns (a Python warning, printed to stderr) for pictures above ~89 Mpx; copylora
    says so itself (:func:`picture_warnings`), once, in its own words."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


UPSCALE_WARN = 2.0  # a picture enlarged more than this to fill its bucket trains a blurry copy


def picture_warnings(info: ImageInfo, bucket: tuple[int, int], where: str) -> list[str]:
    """What is doubtful about training ``info`` at ``bucket`` (not errors: it will train)."""
    from PIL import Image

    warnings = []
    scale = max(bucket[0] / info.width, bucket[1] / info.height)
    if scale > UPSCALE_WARN:
        warnings.append(
            f"{where} {info.path.name}: {info.width}×{info.height} is enlarged {scale:.1f}× to its "
            f"{bucket[0]}×{bucket[1]} training bucket: the LoRA learns a blurry copy "
            "(use a larger picture, or a smaller [train].resolution)"
        )
    pixels = info.width * info.height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        warnings.append(
            f"{where} {info.path.name}: {info.width}×{info.height} ({pixels / 1e6:.0f} Mpx) is very large: "
            "decoding it takes seconds and a lot of memory, and it is downscaled to the bucket anyway"
        )
    return warnings
