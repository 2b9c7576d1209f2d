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


def legacy_model_hash(path: str | os.PathLike) -> str:
    """kohya's ``ss_sd_model_hash`` (A1111's old hash): sha256 of 64 KiB at offset 1 MiB, 8 hex."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        sha.update(f.read(0x10000))
    return sha.hexdigest()[:8]
