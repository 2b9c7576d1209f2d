"""A project form's unsaved edits, kept when the terminal goes away (an SSH link that drops).

A terminal that is gone cannot be asked "save or discard?", and the app left with the edits
lost, said nowhere. At the hangup each open form writes what it holds that differs from the
file (the texts as typed, valid or not) to ``STATE/drafts/``; the next time the project is
opened, the form takes them back, says so, and the draft file goes (the form holds the edits
again: saved with ctrl+s, or discarded by leaving). Plain JSON, one file per project folder."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

FOLDER = "drafts"
KEEP_S = 30 * 86400  # a draft older than this is not offered (its project has surely moved on), and goes at the next write
SAME_HANGUP_S = 60.0  # two apps on one project lose their terminal together: the second draft adds to the first


@dataclass(frozen=True)
class Draft:
    folder: str  # the project folder it is of (resolved)
    written_at: float
    fields: dict[str, str]  # field path ("train.learning_rate") -> its text as typed
    concepts: int | None  # the [[concept]] count of the edit, where it differed from the file's
    against: tuple | None  # copylora.toml's version the edits were made against (engine.files.file_version)


def draft_path(home: Path, folder: Path) -> Path:
    key = hashlib.sha256(os.path.realpath(folder).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return Path(home) / FOLDER / f"{key}.json"


def write_draft(home: Path, folder: Path, fields: dict[str, str], concepts: int | None, against: tuple | None) -> Path:
    """Keep the edits; a draft another app wrote for this project in the same hangup is added
    to (two sessions on one project, each with its own edits: the second replaced the first)."""
    from engine.files import atomic_write

    path = draft_path(home, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    _prune(path.parent)
    earlier = _read(path)
    if earlier is not None and earlier.folder == os.path.realpath(folder) and time.time() - earlier.written_at < SAME_HANGUP_S:
        fields = {**earlier.fields, **fields}
        concepts = concepts if concepts is not None else earlier.concepts
    document = {"folder": os.path.realpath(folder), "written_at": time.time(), "fields": fields, "concepts": concepts,
                "against": list(against) if against is not None else None}
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8"))


def drop_draft(home: Path, folder: Path) -> None:
    """The project is deleted: a project made again at its path must not take its edits back."""
    try:
        draft_path(home, folder).unlink()
    except OSError:
        pass


def _prune(drafts: Path) -> None:
    """Drafts past KEEP_S (of a project renamed or never opened again) go."""
    try:
        for old in drafts.glob("*.json"):
            if time.time() - old.stat().st_mtime > KEEP_S:
                old.unlink()
    except OSError:
        pass


def _read(path: Path) -> Draft | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        against = document.get("against")
        return Draft(str(document["folder"]), float(document["written_at"]),
                     {str(k): str(v) for k, v in dict(document["fields"]).items()},
                     None if document.get("concepts") is None else int(document["concepts"]),
                     tuple(against) if isinstance(against, list) else None)
    except (OSError, TypeError, KeyError, ValueError, AttributeError):
        return None


def take_draft(home: Path, folder: Path) -> Draft | None:
    """The draft of ``folder``, removed from the disk (None where there is none, or it cannot
    be read: a damaged draft is removed too, as it can never be taken back)."""
    path = draft_path(home, folder)
    if not path.exists():
        return None
    draft = _read(path)
    try:
        path.unlink()
    except OSError:
        pass
    if draft is None:
        return None
    if draft.folder != os.path.realpath(folder) or time.time() - draft.written_at > KEEP_S:
        return None
    return draft
