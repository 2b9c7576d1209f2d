"""The user's keymap: rebinding the app's keys from a file, as posting's keymap does.

Every binding of the app has an id (``queue.cancel``, ``app.monitor``, …).
``~/.config/copylora/keymap.toml`` (``$XDG_CONFIG_HOME``, or ``$COPYLORA_KEYMAP`` for another
file) maps ids to keys, Textual's names, comma-separated for several::

    [keymap]
    "queue.cancel" = "x"
    "app.queue" = "g,2"

``copylora keymap`` prints every id with its keys, ready to edit. A problem in the file (not
TOML, an unknown id, a value that is not a string) is reported and the rest applies.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KEYMAP_ENV = "COPYLORA_KEYMAP"


@dataclass(frozen=True)
class BindingInfo:
    id: str
    keys: str
    description: str
    where: str  # the screen (or "everywhere")


def keymap_path() -> Path:
    if os.environ.get(KEYMAP_ENV):
        return Path(os.environ[KEYMAP_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "copylora" / "keymap.toml"


def app_bindings() -> list[BindingInfo]:
    """Every binding of the app that has an id, first where it is defined (the app's own
    navigation keys are repeated, hidden, on some screens under the same id)."""
    from copylora_tui.app import CopyloraApp
    from copylora_tui.screens.confirm_delete import ConfirmDeleteScreen
    from copylora_tui.screens.monitor import MonitorScreen
    from copylora_tui.screens.new_project import NewProjectScreen
    from copylora_tui.screens.project import ProjectScreen
    from copylora_tui.screens.projects import ProjectsScreen
    from copylora_tui.screens.queue import QueueScreen
    from copylora_tui.screens.stats import StatsScreen

    owners = [(CopyloraApp, "everywhere"), (ProjectsScreen, "Projects"), (ProjectScreen, "Project"), (QueueScreen, "Queue"),
              (MonitorScreen, "Monitor"), (StatsScreen, "Merge stats"), (NewProjectScreen, "New project"), (ConfirmDeleteScreen, "Delete")]
    seen: dict[str, BindingInfo] = {}
    for owner, where in owners:
        for binding in owner.BINDINGS:
            if binding.id and binding.id not in seen:
                seen[binding.id] = BindingInfo(binding.id, binding.key, binding.description, where)
    return list(seen.values())


def load_keymap(path: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """(id -> keys, problems) from the keymap file; ({}, []) when there is none."""
    path = path or keymap_path()
    if not path.is_file():
        return {}, []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return {}, [f"{path}: not read ({exc})"]
    table = data.get("keymap", data)
    if not isinstance(table, dict):
        return {}, [f"{path}: [keymap] must be a table of binding id = \"keys\""]
    known = {b.id for b in app_bindings()}
    keymap, problems = {}, []
    for binding_id, keys in table.items():
        if binding_id not in known:
            from engine.project.validate import did_you_mean

            problems.append(f"{path}: unknown binding id {binding_id!r}{did_you_mean(binding_id, sorted(known))} (copylora keymap lists them)")
        elif not isinstance(keys, str) or not keys.strip():
            problems.append(f"{path}: {binding_id} must be keys as a string, e.g. \"x\" or \"x,ctrl+x\"")
        else:
            keymap[binding_id] = keys.replace(" ", "")
    return keymap, problems


def default_keymap_text() -> str:
    """Every binding id with its keys, as a keymap file to start from."""
    lines = ["# copylora keymap: binding id = \"keys\" (Textual key names, comma-separated for several).",
             f"# Put this file at {keymap_path()} and change what you like; delete the rest.", "", "[keymap]"]
    for b in app_bindings():
        lines.append(f'"{b.id}" = "{b.keys}"  # {b.where}: {b.description}')
    return "\n".join(lines) + "\n"
