"""Turn a TOML table into one of the :mod:`engine.project.params` dataclasses, collecting problems.

Nothing here stops at the first problem: every bad key adds a :class:`Problem` with its key
path and the offending value, and the caller raises one :class:`ValidationError` with all of
them. Types come from the dataclass annotations, constraints from the field specs.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, fields
from typing import Any

from engine.errors import Problem
from engine.project.params import MAX_SIDE, MIN_SIDE

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "a table"}


def show(value: Any) -> str:
    """The value as the user wrote it, short enough for one error line."""
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= 60 else text[:57] + "..."


def did_you_mean(key: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _base_type(annotation: str) -> tuple[type, bool]:
    """('int | None') -> (int, True). Annotations are strings (from __future__ annotations)."""
    parts = [p.strip() for p in str(annotation).split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    names = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
    return names[parts[0]], optional


def coerce_value(value: Any, annotation: str, meta: dict, path: str, problems: list[Problem]) -> Any:
    """Check and normalise one value; on a problem, record it and return None."""
    kind, optional = _base_type(annotation)
    bad = len(problems)

    def fail(message: str) -> None:
        problems.append(Problem(path, f"{message}, got {show(value)}"))

    if meta.get("parse") is not None and value is not None:  # a value of several types (a number or a word)
        try:
            return meta["parse"](value)
        except ValueError as exc:
            fail(str(exc))
            return None
    if value is None:
        if not optional:
            problems.append(Problem(path, f"required: {_TYPE_NAMES[kind]}"))
        return None
    if meta.get("fixed_or_pair"):
        value = _pair(value, path, problems)
        return value
    if kind is bool:
        if not isinstance(value, bool):
            fail("must be true or false")
    elif kind is int:
        # bool is an int subclass in Python; "true" for a rank is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                fail("must be an integer")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("must be a number")
        elif not math.isfinite(value):
            fail("must be a finite number")
        else:
            value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            fail("must be a string")
    elif kind is list:
        if not isinstance(value, list):
            fail("must be a list")
        elif meta.get("length") is not None and len(value) != meta["length"]:
            fail(f"must be a list of {meta['length']} items")
    elif kind is dict:
        if not isinstance(value, dict):
            fail("must be a table")
    if len(problems) > bad:
        return None

    choices = meta.get("choices")
    if choices:
        match = {c.lower(): c for c in choices}.get(value.lower())
        alias = meta.get("alias")  # other spellings of a choice (A1111's sampler names, ...)
        if match is None and alias is not None:
            match = alias(value)
        if match is None:
            listed = ", ".join(c or '""' for c in choices)
            hint = meta["hint"](value) if meta.get("hint") else did_you_mean(value, choices) or f" (one of: {listed})"
            problems.append(Problem(path, f"unknown value {show(value)}{hint}"))
            return None
        value = match
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if meta.get("positive") and value <= 0:
            fail("must be greater than 0")
            return None
        minimum = meta.get("minimum")
        if minimum is not None and value < minimum:
            fail(f"must be at least {minimum:g}")
            return None
        maximum = meta.get("maximum")
        if maximum is not None and value > maximum:
            fail(f"must be at most {maximum:_}" if isinstance(maximum, int) else f"must be at most {maximum:g}")
            return None
    return value


def _pair(value: Any, path: str, problems: list[Problem]) -> list[int] | None:
    """512 -> [512, 512]; "600,900" -> [600, 900]; [600, 900] kept. Sides must be >= 64."""
    pair: list[Any]
    if isinstance(value, bool):
        pair = []
    elif isinstance(value, int):
        pair = [value, value]
    elif isinstance(value, str):
        try:
            pair = [int(p) for p in value.replace("x", ",").split(",")]
        except ValueError:
            pair = []
        if len(pair) == 1:
            pair = pair * 2
    elif isinstance(value, list):
        pair = list(value)
    else:
        pair = []
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pair):
        problems.append(Problem(path, f"must be [width, height] in whole pixels or one whole number, got {show(value)}"))
        return None
    if min(pair) < MIN_SIDE:
        problems.append(Problem(path, f"each side must be at least {MIN_SIDE} pixels, got {show(value)}"))
        return None
    if max(pair) > MAX_SIDE:
        problems.append(Problem(path, f"each side must be at most {MAX_SIDE} pixels, got {show(value)}"))
        return None
    return pair


def build_section(cls: type, table: Any, path: str, problems: list[Problem], *, allow_extra: tuple[str, ...] = ()) -> Any:
    """Build ``cls`` from a TOML table. Unknown keys are problems with a did-you-mean.

    Keys named in ``allow_extra`` are left for the caller (they are not reported).
    Returns an instance with defaults where values were bad, so the caller can go on checking.
    """
    if table is None:
        table = {}
    if not isinstance(table, dict):
        problems.append(Problem(path, f"must be a table, got {show(table)}"))
        table = {}
    known = {f.name: f for f in fields(cls) if f.metadata}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key in allow_extra:
            continue
        value = coerce_key(key, raw, known, path, problems, list(known))
        if value is not BAD:
            values[key] = value
    return cls(**values)


BAD = object()  # coerce_key's answer for a key it reported


def coerce_key(key: str, raw: Any, known: dict[str, Any], path: str, problems: list[Problem], names: list[str]) -> Any:
    """One TOML entry of a table whose keys are ``known`` (dataclass fields by name): its value
    coerced to the field's type, or :data:`BAD` with the problem recorded (an unknown key gets
    a did-you-mean among ``names``, the keys that table takes). Every table's keys, [a]'s and
    [b]'s included, are read through here."""
    f = known.get(key)
    if f is None:
        problems.append(Problem(f"{path}.{key}", f"unknown key{did_you_mean(key, names)}"))
        return BAD
    before = len(problems)
    value = coerce_value(raw, f.type, dict(f.metadata), f"{path}.{key}", problems)
    return value if len(problems) == before else BAD


def default_of(cls: type, name: str) -> Any:
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
    raise KeyError(name)  # no such field, or one without a default
