"""The header of a safetensors file, read without torch and without touching the tensors.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor name ->
dtype, shape, byte offsets; plus ``__metadata__``), then the tensor bytes. Everything copylora
decides before loading weights (is this a base model or a LoRA, which family, is it
up to date, is it whole) is read from here, so ``copylora check`` and the app stay fast and
torch-free even on multi-gigabyte checkpoints.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

MAX_HEADER = 100 * 2**20  # safetensors' own limit


class HeaderError(ValueError):
    """Not a readable safetensors file; the message says why in a few words."""


@dataclass(frozen=True)
class Header:
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict[str, str]
    data_bytes: int  # what the offsets say the tensor data takes
    file_bytes: int

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(info.get("shape", ())) for name, info in self.tensors.items()}


def read_header(path: str | os.PathLike, *, complete: bool = True) -> Header:
    """The parsed header. With ``complete``, a file shorter than its header says (a copy cut
    off by a full disk or a dropped connection) is refused too."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise HeaderError(f"{size} bytes: too short to be a safetensors file")
            length = int.from_bytes(prefix, "little")
            if not 0 < length <= min(MAX_HEADER, size - 8):
                raise HeaderError(_not_safetensors(prefix))
            raw = handle.read(length)
    except OSError as exc:
        raise HeaderError(f"cannot read it ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HeaderError("its header is not valid JSON (damaged, or not a safetensors file)") from None
    if not isinstance(header, dict):
        raise HeaderError("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for name, info in header.items():
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list) or not isinstance(info.get("data_offsets"), list):
            raise HeaderError(f"tensor {name!r} has no shape or offsets in the header")
        offsets = info["data_offsets"]
        if len(offsets) != 2 or not all(isinstance(o, int) for o in offsets):
            raise HeaderError(f"tensor {name!r} has bad offsets {offsets!r}")
        end = max(end, offsets[1])
    if complete and 8 + length + end > size:
        missing = 8 + length + end - size
        raise HeaderError(f"truncated: {size:_} bytes, the header describes {8 + length + end:_} ({missing:_} missing)")
    return Header(header, {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}, end, size)


def _not_safetensors(prefix: bytes) -> str:
    kind = file_kind(prefix)
    return f"not a safetensors file ({kind})" if kind else "not a safetensors file (no valid header)"


# Leading bytes of files people pass by mistake.
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF file (WebP image?)"),
    (b"BM", "a BMP image"),
    (b"PK\x03\x04", "a zip archive (a torch .ckpt/.pt?)"),
    (b"\x80", "a Python pickle (a torch .ckpt/.pt?)"),
    (b"{", "a JSON or text file"),
    (b"<", "an HTML or XML file (a download error page?)"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file itself"),
)


def file_kind(prefix: bytes) -> str | None:
    """What a file looks like from its first bytes, for error messages ("a PNG image")."""
    for magic, kind in _MAGIC:
        if prefix.startswith(magic):
            return kind
    return None


def sniff(path: str | os.PathLike) -> str | None:
    try:
        with open(path, "rb") as handle:
            return file_kind(handle.read(32))
    except OSError:
        return None
