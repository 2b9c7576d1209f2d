"""Render a :class:`Project` as the canonical, commented ``copylora.toml``.

Every key is written with its documentation as a comment above it, so a project file explains
itself; unset optional keys are written commented out. Values are serialised by tomli-w, so
anything rendered here parses back to the same values (the round-trip test checks it).
Comments a user added by hand are put back by engine.project.comment_keeper when a project is saved.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import tomli_w

from engine.project.params import BASE_WEIGHTS_KEYS, TrainParams

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

HEADER = """\
# copylora concept project: two teacher images, A and B, that differ only in the wanted way.
# No trigger word: on a real checkpoint both train caption-free, as the method was published ([train] caption). Reference: docs/project-format.md
"""


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else tomli_w.dumps({key: 0}).split(" = ")[0]


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        # tomli-w spreads every array over several lines; [600, 900] reads better inline.
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value})[len("v = "):].strip()


def _section(title: str, obj: Any, *, skip: tuple[str, ...] = ()) -> list[str]:
    lines = [f"[{title}]"]
    for f in fields(obj):
        if f.name in skip or not f.metadata:
            continue
        value = getattr(obj, f.name)
        doc = f.metadata.get("doc", "")
        if doc:
            lines.append(f"# {doc}")
        if value is None:
            lines.append(f"# {f.name} =")
        else:
            lines.append(f"{f.name} = {toml_value(value)}")
    return lines


def _side(project: Any, side: str) -> list[str]:
    config = project.side(side)
    label = "A (the original picture)" if side == "a" else "B (the same picture, changed only in the wanted way)"
    lines = [f"[{side}]", f"# Teacher image folder of {label}.", f"folder = {toml_value(config.folder)}"]
    if side == "b":  # the differential route's keys, explained where they are used
        for f in fields(config):
            if f.name in BASE_WEIGHTS_KEYS:
                lines += [f"# {f.metadata['doc']}", f"{f.name} = {toml_value(getattr(config, f.name))}"]
    if config.overrides:
        lines.append("# Overrides of [train] for this side only.")
    else:
        lines.append("# Any [train] key set here overrides it for this side only.")
    train_order = [f.name for f in fields(TrainParams)]
    for key in sorted(config.overrides, key=train_order.index):
        lines.append(f"{key} = {toml_value(config.overrides[key])}")
    return lines


def render_project(project: Any) -> str:
    blocks = [
        HEADER.rstrip("\n").split("\n"),
        _section("project", project.info),
        _section("train", project.train),
        _side(project, "a"),
        _side(project, "b"),
        _section("merge", project.merge),
        _section("sample", project.sample),
    ]
    if project.reg is not None:
        blocks.append(["# Regularisation (DreamBooth-style prior preservation); delete this table to turn it off."] + _section("reg", project.reg))
    for number, concept in enumerate(project.concepts, start=1):
        heading = ["# Further concepts ([reg] projects): each trained into both sides' LoRAs with its own prompts."] if number == 1 else []
        blocks.append(heading + ["[[concept]]"] + _section("concept", concept)[1:])
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"
