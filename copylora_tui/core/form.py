"""The project form's model: one field per TOML key, built from the :mod:`engine.project.params`
dataclasses, checked by the same :func:`engine.project.validate.coerce_value` as ``copylora check``.

Fields are typed as text the way TOML writes values (``1e-4``, ``[600, 900]``,
``{ weight_decay = 0.01 }``); strings are taken as typed, without quotes. An empty field means
"unset" for optional keys and "inherit from [train]" for the per-side overrides of [a]/[b].
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, fields, replace
from typing import Any

from engine.errors import Problem, ValidationError
from engine.project.folder import Project, parse_project
from engine.project.params import (
    BASE_WEIGHTS_KEYS,
    ConceptParams,
    MergeParams,
    ProjectInfo,
    RegParams,
    SampleParams,
    SideConfig,
    TrainParams,
)
from engine.project.toml_writer import render_project, toml_value
from engine.project.validate import _base_type, coerce_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# (TOML table, dataclass, heading); [a]/[b] list every [train] key as an optional override.
SECTIONS: tuple[tuple[str, type, str], ...] = (
    ("project", ProjectInfo, "[project] base model and output"),
    ("train", TrainParams, "[train] training, both sides"),
    ("a", TrainParams, "[a] picture A: folder and overrides of [train]"),
    ("b", TrainParams, "[b] picture B: folder and overrides of [train]"),
    ("merge", MergeParams, "[merge] the B − A difference merge"),
    ("sample", SampleParams, "[sample] preview images"),
    ("reg", RegParams, "[reg] regularisation images"),
)


class _Inherit:
    """The value of an empty override field: the side uses [train]'s value."""

    def __repr__(self) -> str:
        return "INHERIT"


INHERIT = _Inherit()


@dataclass(frozen=True)
class FieldSpec:
    section: str
    key: str
    annotation: str
    meta: dict
    override: bool = False  # an [a]/[b] override of a [train] key

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def dom_section(self) -> str:
        """The section as a widget id allows it: ``concept[2]`` → ``concept-2``."""
        return self.section.replace("[", "-").replace("]", "")

    @property
    def kind(self) -> type:
        return _base_type(self.annotation)[0]

    @property
    def optional(self) -> bool:
        return _base_type(self.annotation)[1] or self.override

    @property
    def doc(self) -> str:
        return self.meta.get("doc", "")

    @property
    def choices(self) -> tuple[str, ...] | None:
        return self.meta.get("choices")


def concept_section(number: int) -> str:
    """The form section of ``[[concept]]`` number ``number`` (from 1), named as problems name it."""
    return f"concept[{number}]"


def concept_number(section: str) -> int | None:
    if section.startswith("concept[") and section.endswith("]") and section[8:-1].isdigit():
        return int(section[8:-1])
    return None


def without_concept(mapping: dict[str, Any], remove: int | None) -> dict[str, Any]:
    """``mapping`` (field path -> value or error) with concept ``remove`` taken out and the later
    concepts moved up a number ("concept[3].folder" -> "concept[2].folder"); other paths kept."""
    out = {}
    for path, item in mapping.items():
        section, key = path.split(".", 1)
        number = concept_number(section)
        if number is None:
            out[path] = item
        elif number != remove:
            out[f"{concept_section(number - 1 if remove is not None and number > remove else number)}.{key}"] = item
    return out


def section_fields(section: str) -> list[FieldSpec]:
    cls = ConceptParams if concept_number(section) else next(c for s, c, _ in SECTIONS if s == section)
    specs = []
    if section in ("a", "b"):
        specs.append(FieldSpec(section, "folder", "str", {"doc": "Folder of this side's teacher image(s), relative to the project."}))
    if section == "b":  # the differential route's keys: B trains on the base with A applied
        specs += [FieldSpec(section, f.name, str(f.type), dict(f.metadata)) for f in fields(SideConfig) if f.name in BASE_WEIGHTS_KEYS]
    for f in fields(cls):
        if f.metadata:
            specs.append(FieldSpec(section, f.name, str(f.type), dict(f.metadata), override=section in ("a", "b")))
    return specs


def current_value(project: Project, spec: FieldSpec) -> Any:
    """The saved value of a field (a concept the project does not have yet: its default)."""
    number = concept_number(spec.section)
    if number is not None:
        concept = project.concepts[number - 1] if number <= len(project.concepts) else ConceptParams()
        return getattr(concept, spec.key)
    if spec.section in ("a", "b"):
        side = project.side(spec.section)
        if spec.key == "folder" or spec.key in BASE_WEIGHTS_KEYS:
            return getattr(side, spec.key)
        return side.overrides.get(spec.key, INHERIT)
    table = {"project": project.info, "train": project.train, "merge": project.merge, "sample": project.sample, "reg": project.reg}[spec.section]
    return getattr(table, spec.key)


def value_text(value: Any, spec: FieldSpec) -> str:
    if value is None or value is INHERIT:
        return ""
    if spec.kind is str:
        return str(value)
    return toml_value(value)


def same_as_saved(text: str, saved: Any, spec: FieldSpec) -> bool:
    """Whether a field's text stands for its saved value: as the file writes it, or another way
    of writing the same value ("1e-4" for 0.0001, "2.0" for 2), which a save leaves in the field
    as typed (it said "unsaved changes" after the save that wrote it, for good)."""
    if text == value_text(saved, spec):
        return True
    value, error = parse_text(text, spec)
    return error is None and type(value) is type(saved) and value == saved


def parse_text(text: str, spec: FieldSpec) -> tuple[Any, str | None]:
    """(value, None) for a valid entry, (None, message) for an invalid one."""
    problems: list[Problem] = []
    stripped = text.strip()
    if not stripped:
        if spec.override:
            return INHERIT, None
        # An emptied text field is the empty string where a key takes one (caption "" = caption-free,
        # stop_when_copied "" = off), not "unset" (which such keys refuse as "required").
        raw: Any = "" if spec.kind is str and not spec.optional else None
    elif spec.kind is str:
        raw = text
    else:
        try:
            raw = tomllib.loads(f"v = {stripped}")["v"]
        except (tomllib.TOMLDecodeError, ValueError, RecursionError):  # a 4300-digit paste, a thousand "["
            if not spec.meta.get("fixed_or_pair"):
                return None, f"not a value ({_example(spec)})"
            raw = stripped  # "600,900" and "600x900" are pairs too
    annotation = spec.annotation if not spec.override else f"{spec.annotation} | None"
    value = coerce_value(raw, annotation, spec.meta, spec.path, problems)
    if problems:
        return None, problems[0].message
    return value, None


def _example(spec: FieldSpec) -> str:
    return {int: "a whole number, e.g. 8", float: "a number, e.g. 1e-4", bool: "true or false",
            list: "a list, e.g. [1.0, -1.0]", dict: "a table, e.g. { weight_decay = 0.01 }"}.get(spec.kind, "text")


def apply_values(project: Project, values: dict[str, Any], concepts: int | None = None) -> Project:
    """A copy of ``project`` with the field values (path -> value) put in; ``concepts``: how
    many ``[[concept]]`` the edit has (concepts added or removed in the form), each from its
    fields' values where given and its saved value otherwise."""
    tables = {
        "project": project.info, "train": project.train, "merge": project.merge,
        "sample": project.sample, "reg": project.reg,
    }
    changes: dict[str, dict[str, Any]] = {}
    sides = {s: (project.side(s).folder, dict(project.side(s).overrides)) for s in ("a", "b")}
    side_keys: dict[str, dict[str, Any]] = {"a": {}, "b": {}}
    count = len(project.concepts) if concepts is None else concepts
    concept_values: list[dict[str, Any]] = [{} for _ in range(count)]
    for path, value in values.items():
        section, key = path.split(".", 1)
        number = concept_number(section)
        if number is not None:
            if number <= count:
                concept_values[number - 1][key] = value
        elif section in sides:
            folder, overrides = sides[section]
            if key == "folder":
                sides[section] = (value, overrides)
            elif key in BASE_WEIGHTS_KEYS:
                side_keys[section][key] = value
            elif value is INHERIT:
                overrides.pop(key, None)
            else:
                overrides[key] = value
        elif tables.get(section) is not None:
            changes.setdefault(section, {})[key] = value
    for section, change in changes.items():
        tables[section] = replace(tables[section], **change)
    new_sides = {s: replace(project.side(s), folder=folder, overrides=overrides, **side_keys[s]) for s, (folder, overrides) in sides.items()}
    saved = list(project.concepts) + [ConceptParams() for _ in range(count - len(project.concepts))]
    new_concepts = [replace(saved[n], **change) for n, change in enumerate(concept_values)]
    return replace(
        project, info=tables["project"], train=tables["train"], merge=tables["merge"],
        sample=tables["sample"], reg=tables["reg"], a=new_sides["a"], b=new_sides["b"], concepts=new_concepts,
    )


def validate(project: Project, *, writing: bool = True) -> tuple[Project | None, list[Problem]]:
    """The whole-project check ``save_project`` makes (cross-key rules, files): the checked
    project as it would load from disk, or the problems. ``writing=False``: an output folder
    that only cannot be written is no problem (engine.project.folder.load_project)."""
    try:
        return parse_project(render_project(project), project.root, writing=writing), []
    except ValidationError as exc:
        return None, exc.problems


def field_for_problem(problem: Problem, paths: list[str]) -> str | None:
    """The form field a problem belongs to ("a.folder colour.png" -> "a.folder"), if any."""
    where = problem.where.split(" ", 1)[0]
    for candidate in (where, re.sub(r"(\[\d+\])+$", "", where)):  # "concept[2].folder" is a field; "merge.ratios[0]" is merge.ratios
        if candidate in paths:
            return candidate
    return None


def changed_on_disk(read: Project, path) -> list[str]:
    """The keys whose value in the file at ``path`` is not the one the form read (``read``):
    what a save of the form would put back ("train.seed 43 → 42"). Keys the file does not set
    are not compared; a file that does not parse says so."""
    import tomllib

    def flat(table: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    from engine.toml_text import decode_toml

    try:
        with open(path, "rb") as handle:
            disk = flat(tomllib.loads(decode_toml(handle.read())))  # a BOM the file loaded with is no change
    except (OSError, ValueError) as exc:
        return [f"the file does not read as TOML now ({exc})"]
    try:
        mine = flat(tomllib.loads(render_project(read)))
    except ValueError:
        return []
    return [f"{key} {toml_value(mine[key]) if key in mine else '(unset)'} → {toml_value(value)}"
            for key, value in disk.items() if mine.get(key, object()) != value]
