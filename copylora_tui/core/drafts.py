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
KEEP_S = 30 * 86400  # a draft older than this is not offered (its project has surely moved on)


@dataclass(frozen=True)
class Draft:
    folder: str  # the project folder it is of (resolved)
    written_at: float
    fields: dict[str, str]  # field path ("train.learning_rate") -> its text as typed
    concepts: int | None  # the [[concept]] count of the edit, where it differed from the file's


def draft_path(home: Path, folder: Path) -> Path:
    key = hashlib.sha256(os.path.realpath(folder).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return Path(home) / FOLDER / f"{key}.json"


def write_draft(home: Path, folder: Path, fields: dict[str, str], concepts: int | None) -> Path:
    from engine.files import atomic_write

    path = draft_path(home, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"folder": os.path.realpath(folder), "written_at": time.time(), "fields": fields, "concepts": concepts}
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8"))


def take_draft(home: Path, folder: Path) -> Draft | None:
    """The draft of ``folder``, removed from the disk (None where there is none, or it cannot
    be read: a damaged draft is removed too, as it can never be taken back)."""
    path = draft_path(home, folder)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        document = None
    try:
        path.unlink()
    except OSError:
        pass
    try:
        draft = Draft(str(document["folder"]), float(document["written_at"]),
                      {str(k): str(v) for k, v in dict(document["fields"]).items()},
                      None if document.get("concepts") is None else int(document["concepts"]))
    except (TypeError, KeyError, ValueError):
        return None
    if draft.folder != os.path.realpath(folder) or time.time() - draft.written_at > KEEP_S:
        return None
    return draft
