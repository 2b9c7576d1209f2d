"""The one file-hash helper (provenance of merges, bakes and previews; kohya's new model hash)."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of the whole file, read in 1 MiB chunks (model files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_REMEMBERED: dict[tuple[str, int, int, int], str] = {}


def remembered_sha256(path: str | os.PathLike) -> str:
    """:func:`file_sha256`, remembered per (path, mtime, size, inode): a project's status asks
    the same files' hashes many times (each side's fingerprint for the result, its stats, its
    grid and its check; the differential route's A by content in B's), and A's LoRA of an SDXL
    project is 200 MB. A file written anew (renamed over, or in place) has another stamp.
    Raises OSError as reading does."""
    info = os.stat(path)
    key = (os.path.abspath(path), info.st_mtime_ns, info.st_size, info.st_ino)
    found = _REMEMBERED.get(key)
    if found is None:
        if len(_REMEMBERED) > 1024:
            _REMEMBERED.clear()
        found = _REMEMBERED[key] = file_sha256(path)
    return found


def legacy_model_hash(path: str | os.PathLike) -> str:
    """kohya's ``ss_sd_model_hash`` (A1111's old hash): sha256 of 64 KiB at offset 1 MiB, 8 hex."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        sha.update(f.read(0x10000))
    return sha.hexdigest()[:8]
