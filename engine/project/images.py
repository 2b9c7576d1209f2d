"""Teacher-image folders: which files count as images, and whether they really are.

Caption files (``.txt``, ``.caption``) and anything else that is not an image are ignored:
copy-machine training is caption-free. A file with an image extension that Pillow cannot
read is an error, reported by path, so a half-copied PNG is caught before a 20-minute run.

Every reader of a teacher picture goes through :func:`load_picture` (and sizes through
:func:`read_image_info`): upright by its EXIF orientation, 16-bit pictures scaled to 8 bits,
transparency on white, so the check's buckets, the latents and the app show one picture.
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
    """Image files directly in ``folder`` (not recursive), sorted by name for a stable order.
    Hidden files are not pictures: macOS writes ``._photo.png`` (its Finder data, not an image)
    beside each picture copied to a non-Mac disk, and a project refused it as unreadable;
    sd-scripts' glob skips them too."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def dead_links(folder: Path) -> list[Path]:
    """Links named as pictures that lead to no file (a picture on a disk not mounted): not in
    :func:`image_files`, so without a word the side trained without them."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_symlink() and not p.is_file())


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
            # the size the picture is trained at: a phone photo's EXIF orientation turns it
            width, height = (image.height, image.width) if _orientation(image) in _SWAPS_SIDES else (image.width, image.height)
            return ImageInfo(path, width, height)
    except UnidentifiedImageError:
        if _empty(path):  # a copy, download or sync that did not finish: Pillow's words did not say so
            raise ValueError("an empty file (0 bytes): copy the picture again") from None
        raise ValueError("not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"too large to decode safely ({_bomb_size(exc)}): downscale it first (a training bucket is at most 4096 pixels a side)") from None
    except (OSError, SyntaxError) as exc:  # truncated/corrupt data
        raise ValueError(f"corrupt image ({exc})") from None
    except MemoryError:
        raise ValueError("too large to decode in this machine's memory: downscale it first") from None


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _bomb_size(exc: Exception) -> str:
    """'185 Mpx, Pillow's limit is 179 Mpx' from Pillow's message (it has the pixel counts)."""
    import re

    numbers = [int(n) for n in re.findall(r"\d+", str(exc))]
    if len(numbers) >= 2:
        return f"{numbers[0] / 1e6:.0f} Mpx, Pillow's limit is {numbers[1] / 1e6:.0f} Mpx"
    return "beyond Pillow's limit"


# EXIF orientation (tag 0x0112): 1 is as stored; 5-8 turn the picture by 90° (mirrored or not),
# which swaps its sides. Phone cameras store portrait photos landscape with 6 or 8.
_ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)
# Modes with more than 8 bits a channel: 16-bit grayscale PNG/TIFF ("I;16*", older Pillow "I"),
# 32-bit integer and float TIFF. convert("RGB") clips them (a 16-bit picture turns all white).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _orientation(image) -> int:
    """The EXIF orientation from the header. Pillow's PNG reader decodes the whole picture to
    look for an eXIf chunk after the pixels, so a PNG whose header has none counts as upright
    (Pillow and other writers put it before the pixels)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block: the picture as stored
        return 1


def load_picture(path: Path):
    """A teacher picture as training sees it, an 8-bit RGB Pillow image: turned upright by its
    EXIF orientation, 16-bit and float pictures scaled to 8 bits (not clipped), transparent
    areas put on white (:func:`picture_warnings` says so). Every reader of teacher pictures
    uses it (latents, sizes, the app, the check picture), so all see the same picture."""
    from PIL import Image

    with quiet_pillow(), Image.open(path) as image:
        image.load()
        return to_rgb(image)


def to_rgb(image):
    """See :func:`load_picture` (for an image already open)."""
    from PIL import ImageOps

    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block: the picture as stored
        pass
    if image.mode in _WIDE_MODES:
        image = _eight_bit(image)
    if _has_alpha(image):
        return _on_white(image)
    return image.convert("RGB")


def _eight_bit(image):
    """A 16-bit (or 32-bit integer, or float) single-channel picture as 8-bit "L", scaled by its
    bit depth. Mode "I" does not say its depth: values above 255 are taken as 16-bit ones."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16"):
        scale = 255 / 65535
    elif image.mode == "F" and peak <= 1.0:
        scale = 255.0  # float pictures in 0..1
    else:
        scale = 255 / 65535 if peak > 255 else 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


def _has_alpha(image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info)


def _on_white(image):
    from PIL import Image

    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def has_transparency(path: Path) -> bool:
    """Whether some pixel is not opaque (decodes only pictures that have an alpha channel)."""
    from PIL import Image

    try:
        with quiet_pillow(), Image.open(path) as image:
            if not _has_alpha(image):
                return False
            lowest = image.convert("RGBA").getchannel("A").getextrema()[0]  # one band: (min, max)
            return isinstance(lowest, (int, float)) and lowest < 255
    except Exception:  # unreadable or too large: reported where it is read
        return False


# Each picture's pixel digest by (path, size, modification time, inode), as
# engine.hashing.remembered_sha256 keeps file hashes: the app's form plans a project often.
_PIXEL_DIGESTS: dict[tuple, str | None] = {}


def frame_count(path: Path) -> int:
    """How many frames the picture has (an animated WebP or PNG, a multi-page TIFF): training
    reads the first, as Pillow opens it (and sd-scripts trains it)."""
    from PIL import Image

    try:
        with quiet_pillow(), Image.open(path) as image:
            return int(getattr(image, "n_frames", 1))
    except Exception:  # unreadable or too large: reported where it is read
        return 1


def _pixel_digest(path: Path) -> str | None:
    """A hash of the picture as training reads it (None: unreadable, said where it is read).
    A digest, not the pixels: keeping every decoded picture to compare held 2.2 GB for 30
    pairs of 12 Mpx photos."""
    import hashlib
    import os

    try:
        info = os.stat(path)
    except OSError:
        return None
    key = (os.path.abspath(path), info.st_mtime_ns, info.st_size, info.st_ino)
    if key not in _PIXEL_DIGESTS:
        if len(_PIXEL_DIGESTS) > 4096:
            _PIXEL_DIGESTS.clear()
        try:
            picture = load_picture(path)
            digest = hashlib.sha256(f"{picture.size}".encode())
            digest.update(picture.tobytes())
            _PIXEL_DIGESTS[key] = digest.hexdigest()
        except Exception:  # unreadable or too large: said where it is read, not compared here
            _PIXEL_DIGESTS[key] = None
    return _PIXEL_DIGESTS[key]


def _identities(info: ImageInfo) -> tuple:
    """What makes two pictures one, strongest first: the same file, the same bytes, the same
    pixels (None where it cannot be told)."""
    import os

    from engine.hashing import remembered_sha256

    try:
        content = remembered_sha256(info.path)
    except OSError:
        content = None
    return (os.path.realpath(info.path), content, _pixel_digest(info.path))


_SAME = ("the same file", "identical files", "pixel-identical")


def pair_warnings(a_images, b_images) -> list[str]:
    """What is doubtful about A against B (lists of :class:`ImageInfo`): B should be A changed
    only in the wanted way. The same picture on both sides makes B − A zero (a LoRA that does
    nothing); pictures of different sizes make the LoRA learn the resize as part of the change.
    Sizes are compared in name order when both sides have as many pictures."""
    warnings = []
    if len(a_images) == len(b_images):
        for a, b in zip(a_images, b_images):
            if (a.width, a.height) != (b.width, b.height):
                warnings.append(
                    f"a.folder {a.path.name} is {a.width}×{a.height} but b.folder {b.path.name} is {b.width}×{b.height}: "
                    "B should be A changed only in the wanted way, at the same size (else the LoRA learns the resize too)"
                )
    # Each picture is read once and looked up, not compared with every picture of the other
    # side: 300 a side took 16 s (90,000 comparisons) and kept every decoded picture.
    a_sizes, b_sizes = ({(i.width, i.height) for i in images} for images in (a_images, b_images))
    index: list[dict] = [{} for _ in _SAME]
    for j, b in enumerate(b_images):
        if (b.width, b.height) in a_sizes:
            for kind, key in enumerate(_identities(b)):
                if key is not None:
                    index[kind].setdefault(((b.width, b.height), key), []).append(j)
    for a in a_images:
        if (a.width, a.height) not in b_sizes:
            continue
        matched: dict[int, int] = {}
        for kind, key in enumerate(_identities(a)):
            for j in index[kind].get(((a.width, a.height), key), ()) if key is not None else ():
                matched.setdefault(j, kind)  # the strongest likeness is said
        for j in sorted(matched):
            warnings.append(
                f"a.folder {a.path.name} and b.folder {b_images[j].path.name} are {_SAME[matched[j]]}: B − A is zero there, "
                "so the LoRA learns no change from them (B should be A changed in the wanted way)"
            )
    return warnings


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
    """What is doubtful about training ``info`` at ``bucket`` (not errors: it will train):
    enlarged far, transparent (trained on white), animated (its first frame trains), very large."""
    from PIL import Image

    warnings = []
    scale = max(bucket[0] / info.width, bucket[1] / info.height)
    if scale > UPSCALE_WARN:
        warnings.append(
            f"{where} {info.path.name}: {info.width}×{info.height} is enlarged {scale:.1f}× to its "
            f"{bucket[0]}×{bucket[1]} training bucket: the LoRA learns a blurry copy "
            "(use a larger picture, or a smaller [train].resolution)"
        )
    if has_transparency(info.path):
        warnings.append(
            f"{where} {info.path.name}: has transparent areas: they train as white "
            "(flatten the picture onto another background first if white is not meant)"
        )
    if (frames := frame_count(info.path)) > 1:
        warnings.append(
            f"{where} {info.path.name}: is animated ({frames} frames): only its first frame trains "
            "(save the frame you mean as a still picture)"
        )
    pixels = info.width * info.height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        warnings.append(
            f"{where} {info.path.name}: {info.width}×{info.height} ({pixels / 1e6:.0f} Mpx) is very large: "
            "decoding it takes seconds and a lot of memory, and it is downscaled to the bucket anyway"
        )
    return warnings
