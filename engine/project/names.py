"""What a project's name may be: the stem of every file it writes.

The outputs are ``output/NAME_A.safetensors``, ``NAME.stats.json``, ``samples/NAME-grid.png``
and checkpoints ``NAME_A-step001000…``. A name with a ``/`` or ``..`` wrote outside the outputs
folder (``[project] name = "../../x"``) or into a folder nobody made, found only when the first
LoRA was saved after the training; a newline or a control character breaks every table and log
line that shows it. Characters Windows refuses in file names are refused too: these LoRAs are
made to be copied to A1111 and ComfyUI, which often run there.
"""

from __future__ import annotations

import unicodedata
from typing import Any

# Windows' reserved characters, beside the path separators both systems have.
FORBIDDEN = '/\\<>:"|?*'
# Names Windows keeps for devices, whatever follows their first dot ("CON.safetensors" cannot be
# made or copied there), in any case; the superscript digits count as digits there.
RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"{port}{digit}" for port in ("COM", "LPT") for digit in "123456789¹²³")}
# Room for the longest suffix written after the stem (a checkpoint's "_A-step0001000.safetensors",
# a grid's "-grid-12.png") inside the 255 bytes a file name may have.
MAX_BYTES = 180


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a project's name (None: it can). "" is not judged here: it means
    "the folder's name", which is judged as that."""
    bad = sorted({c for c in name if c in FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"must be a file name: no {shown} (outputs are named after it)"
    if hidden := [c for c in name if unicodedata.category(c) == "Cf" and c != "\u200d"]:
        # (U+200D joins an emoji's parts: 👩‍🎨 is one picture, kept)
        return (f"contains an invisible character ({', '.join(f'U+{ord(c):04X}' for c in dict.fromkeys(hidden))}, e.g. from a copied "
                "web page): it reads as another project's name everywhere it is shown; remove it")
    if name in (".", "..") or name.startswith("."):
        return "must not start with '.' (outputs are named after it; they would be hidden files)"
    if name != name.strip():
        return "must not start or end with a space"
    if name.split(".", 1)[0].rstrip(" ").upper() in RESERVED:
        return (f"is a name Windows keeps for a device ({name.split('.', 1)[0]}): {name}.safetensors could not be copied to "
                "A1111 or ComfyUI there")
    if len(name.encode("utf-8")) > MAX_BYTES:
        return f"is too long for a file name ({len(name.encode('utf-8'))} bytes; at most {MAX_BYTES})"
    return None


def parse_project_name(value: Any) -> str:
    """``[project] name`` as kept: a string that :func:`name_problem` accepts, or "" (the folder's
    name). Raises ValueError with the line a user reads."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    problem = name_problem(value) if value else None
    if problem:
        raise ValueError(problem)
    return value


def namesakes(root, name: str, limit: int = 1000) -> list:
    """The other project folders beside ``root`` (its projects folder) whose project has the name
    ``name``: a folder copied to start another concept (``cp -r mono night``) keeps
    ``[project] name``, so both write ``mono_A.safetensors`` and ``mono.safetensors``, and the app
    listed both as "mono" while the queue and the CLI name them by folder. Unreadable ones are
    passed over (their own check says why); at most ``limit`` folders are looked at."""
    import os
    from pathlib import Path

    import tomllib

    from engine.toml_text import decode_toml

    root = Path(root)
    found = []
    try:
        children = sorted(os.scandir(root.parent), key=lambda e: e.name)[:limit]
    except OSError:
        return []
    for entry in children:
        folder = Path(entry.path)
        try:
            toml = folder / "copylora.toml"
            # a regular file of a project's size only: a FIFO would block the open, a huge file the parse
            if folder.resolve() == root.resolve() or not toml.is_file() or toml.stat().st_size > 1 << 20:
                continue
            with open(toml, "rb") as file:
                table = tomllib.loads(decode_toml(file.read())).get("project", {})
        except (OSError, ValueError, RecursionError):
            continue
        other = table.get("name") if isinstance(table, dict) else None
        if (other if isinstance(other, str) and other else folder.name) == name:
            found.append(folder)
    return found
