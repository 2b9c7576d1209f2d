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

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from engine.toml_text import decode_toml

KEYMAP_ENV = "COPYLORA_KEYMAP"


@dataclass(frozen=True)
class BindingInfo:
    id: str
    keys: str
    description: str
    where: str  # the screen (or "everywhere")


def keymap_path() -> Path:
    if os.environ.get(KEYMAP_ENV):
        try:
            return Path(os.environ[KEYMAP_ENV]).expanduser()
        except RuntimeError:  # ~user with no home: no such file, so no keymap (as for any missing file)
            return Path(os.environ[KEYMAP_ENV])
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"  # a relative one is ignored (XDG spec)
    return base / "copylora" / "keymap.toml"


def app_bindings(owners: list[tuple[type, str]]) -> list[BindingInfo]:
    """Every binding with an id of ``owners`` (``copylora_tui.app.binding_owners()``: the app
    and its screens, which sit above this module and hand themselves in), first where it is
    defined (the app's own navigation keys are repeated, hidden, on some screens under the
    same id)."""
    seen: dict[str, BindingInfo] = {}
    for owner, where in owners:
        for binding in owner.BINDINGS:
            if binding.id and binding.id not in seen:
                seen[binding.id] = BindingInfo(binding.id, binding.key, binding.description, where)
    return list(seen.values())


def load_keymap(owners: list[tuple[type, str]], path: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """(id -> keys, problems) from the keymap file; ({}, []) when there is none. ``owners``:
    whose binding ids are known (see :func:`app_bindings`)."""
    path = path or keymap_path()
    if not path.is_file():
        return {}, []
    try:
        data = tomllib.loads(decode_toml(path.read_bytes()))  # a Windows editor's BOM is dropped; Shift-JIS is named
    except (OSError, tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:  # ValueError: a 5000-digit number
        return {}, [f"{path}: not read ({exc})"]
    table = data.get("keymap", data)
    if not isinstance(table, dict):
        return {}, [f"{path}: [keymap] must be a table of binding id = \"keys\""]
    known = {b.id for b in app_bindings(owners)}
    keymap, problems = {}, []
    for binding_id, keys in table.items():
        if binding_id not in known:
            from engine.project.validate import did_you_mean

            problems.append(f"{path}: unknown binding id {binding_id!r}{did_you_mean(binding_id, sorted(known))} (copylora keymap lists them)")
        elif not isinstance(keys, str) or not keys.strip():
            problems.append(f"{path}: {binding_id} must be keys as a string, e.g. \"x\" or \"x,ctrl+x\"")
        elif bad := [key for key in keys.replace(" ", "").split(",") if not is_key_name(key)]:
            # Textual binds any string: "not a key!!" showed in the footer and no key did the action
            problems.append(f"{path}: {binding_id} = {keys!r}: {', '.join(map(repr, bad))} is no key name "
                            "(Textual's: a character, escape, enter, tab, space, f1…f24, up, pageup…, with ctrl+, shift+ or alt+)")
        else:
            keymap[binding_id] = keys.replace(" ", "")
    return keymap, problems


MODIFIERS = ("ctrl", "shift", "alt", "meta", "super", "hyper")


def is_key_name(key: str) -> bool:
    """A key as Textual names it: modifiers, then one character, a named key (``escape``,
    ``pageup``, ``f5``) or a character's name (``question_mark``, ``full_stop``)."""
    *modifiers, name = key.split("+")
    if not name or any(m not in MODIFIERS for m in modifiers):
        return False
    names = _key_names()
    return len(name) == 1 or name in names or not names  # (none known: a Textual without the table, so not judged)


@functools.cache
def _key_names() -> frozenset[str]:
    """Textual's names of the named keys and of every character a keyboard types (``slash``,
    ``minus``, ``question_mark``: its own table, not Unicode's, so not ``key_to_character``,
    which reads "banana" as 🍌 and does not know "slash")."""
    try:
        from textual.keys import Keys, _character_to_key  # private: a later Textual may move it
    except ImportError:
        return frozenset()
    return frozenset({k.value for k in Keys} | {_character_to_key(chr(code)) for code in range(32, 127)})


def default_keymap_text(owners: list[tuple[type, str]]) -> str:
    """Every binding id of ``owners`` with its keys, as a keymap file to start from."""
    lines = ["# copylora keymap: binding id = \"keys\" (Textual key names, comma-separated for several).",
             f"# Put this file at {keymap_path()} and change what you like; delete the rest.", "", "[keymap]"]
    for b in app_bindings(owners):
        lines.append(f'"{b.id}" = "{b.keys}"  # {b.where}: {b.description}')
    return "\n".join(lines) + "\n"
