"""Each output's status (engine.project.outputs), read from the files real runs leave behind:
current after a run, stale with the reason when what made it changed, missing when not made,
and the same answer from `copylora check`, the queue and the app's project scan."""

from __future__ import annotations

import json

import pytest

from engine.project.folder import load_project
from engine.project.outputs import CURRENT, MISSING, STALE, Check, Grid, Result, SideLora, Stats, artifacts, preview_status
from engine.project.plan import make_plan
from tests.real_runs import STEPS


def plan_of(folder):
    return make_plan(load_project(folder), max_steps=STEPS)  # the runs were queued with --max_steps STEPS


def states(plan) -> dict[str, tuple[str, str]]:
    return {name: (artifact.status().state, artifact.status().reason) for name, artifact in artifacts(plan).items()}


def test_every_output_of_finished_runs_is_current(real_runs):
    mono = plan_of(real_runs / "mono")
    assert states(mono) == {
        "A": (CURRENT, "mono_A.safetensors"), "B": (CURRENT, "mono_B.safetensors"), "result": (CURRENT, "mono.safetensors"),
        "stats": (CURRENT, "mono.stats.json"), "grid": (CURRENT, "mono-grid.png")}
    differential = plan_of(real_runs / "differential")
    assert {name: state for name, (state, _) in states(differential).items()} == dict.fromkeys(
        ("A", "B", "result", "stats", "grid", "check"), CURRENT)
    assert preview_status(differential).current


def test_a_changed_parameter_makes_the_sides_stale_and_says_so(real_runs):
    longer = make_plan(load_project(real_runs / "mono"), max_steps=STEPS + 1)  # more steps than were trained
    assert SideLora(longer, "a").status().pair() == (False, f"trained {STEPS} steps, plan says {STEPS + 1}")
    toml = real_runs / "mono" / "copylora.toml"
    toml.write_text(toml.read_text().replace("learning_rate = 0.001", "learning_rate = 0.002"))
    plan = plan_of(real_runs / "mono")
    assert SideLora(plan, "a").status() == SideLora(plan, "b").status()
    # what changed, by name and value (it said "parameters, images or base model changed")
    assert (SideLora(plan, "a").status().state, SideLora(plan, "a").status().reason) == (STALE, "learning_rate 0.001 → 0.002")
    # Made from the A and B files that are there, but those are stale: so is what is made from
    # them (it read "current", and the app "✓ merged" beside "A stale B stale").
    assert Result(plan).status().pair() == (False, "made from A's LoRA, not current: learning_rate 0.001 → 0.002")
    assert Stats(plan).status().state == STALE and not preview_status(plan).current
    assert Result(longer).status().reason == f"made from A's LoRA, not current: trained {STEPS} steps, plan says {STEPS + 1}"


def test_damaged_and_missing_files_are_said_as_such(real_runs):
    mono = real_runs / "mono"
    plan = plan_of(mono)
    lora_a = plan.outputs.lora("a")
    lora_a.write_bytes(lora_a.read_bytes()[:-100])  # a copy cut off
    a = SideLora(plan, "a").status()
    assert a.state == STALE and a.reason.startswith("unreadable (truncated")
    assert Result(plan).status().reason == "A or B changed since the merge"
    assert Stats(plan).status().state == STALE  # of a result that is not current
    lora_a.unlink()
    assert SideLora(plan, "a").status().pair() == (False, "no LoRA yet") and SideLora(plan, "a").status().state == MISSING

    damaged = plan_of(real_runs / "damaged")  # a truncated grid, a stats file that is not one
    assert Grid(damaged).status().pair() == (False, "unreadable preview")
    assert Stats(damaged).status().pair() == (False, "the stats are of another merge")


def test_the_preview_follows_sample_and_the_check_picture(real_runs):
    from engine.project.folder import save_project

    project = load_project(real_runs / "mono")
    project.merge.new_rank += 1  # the result is made again: so is its grid (it read "current" beside "merged: stale")
    save_project(project)
    assert Result(plan_of(real_runs / "mono")).status().state == STALE
    assert Grid(plan_of(real_runs / "mono")).status().pair() == (False, "of a result that is made again")
    project.merge.new_rank -= 1
    project.sample.seed += 1
    save_project(project)
    assert Grid(plan_of(real_runs / "mono")).status().pair() == (False, "[sample] changed")

    mono = plan_of(real_runs / "mono")
    grid = mono.outputs.grid
    whole = grid.read_bytes()
    record = whole.index(b"copylora")
    grid.write_bytes(whole[:record + 2000])  # cut after its record (before the pixels end): it read as current
    assert Grid(mono).status().pair() == (False, "unreadable preview")
    grid.write_bytes(whole)
    result = mono.outputs.result
    result.rename(result.with_suffix(".away"))  # the grid there, its LoRA gone: it said "missing: no preview yet"
    assert Grid(mono).status().pair() == (False, "its merged LoRA is gone") and Grid(mono).status().state == STALE
    result.with_suffix(".away").rename(result)

    toml = real_runs / "differential" / "copylora.toml"
    text = toml.read_text()
    toml.write_text(text.replace("base_weights_multiplier = 1.0", "base_weights_multiplier = 0.5"))  # the check shows A at 1
    assert Check(plan_of(real_runs / "differential")).status().pair() == (False, "of a result that is made again")
    toml.write_text(text)

    differential = plan_of(real_runs / "differential")
    differential.outputs.check.unlink()
    assert Check(differential).status().state == MISSING
    assert Grid(differential).status().current and not preview_status(differential).current
    assert preview_status(differential).reason == "no check picture of the current A and result"


def test_check_and_the_queue_and_the_app_ask_the_same_status(real_runs, capsys):
    from copylora_tui.cli.main import main
    from copylora_tui.core.projects import summarise
    from engine.jobs.enqueue import enqueue_project
    from engine.jobs.queue import Queue

    toml = real_runs / "differential" / "copylora.toml"
    toml.write_text(toml.read_text().replace("learning_rate = 0.001", "learning_rate = 0.002"))
    plan = plan_of(real_runs / "differential")
    assert main(["check", str(real_runs / "differential"), "--json"]) == 0
    outputs = json.loads(capsys.readouterr().out)["outputs"]
    # `check` plans without --max_steps: the sides are stale either way, and so what is made of them
    assert outputs["A"]["state"] == STALE and outputs["result"]["state"] == STALE and outputs["check"]["state"] == STALE
    assert outputs["result"]["reason"] == "made from A's LoRA, not current: learning_rate 0.001 → 0.002"
    assert outputs["grid"]["path"] == str(plan.outputs.grid)
    assert main(["check", str(real_runs / "differential")]) == 0
    text = capsys.readouterr().out
    assert "differential_A.safetensors" in text and "stale: learning_rate 0.001 → 0.002" in text

    summary = summarise(real_runs / "differential")  # the Projects screen (planned without --max_steps too)
    assert summary.sides["a"].state == STALE and summary.merge.state == STALE
    steps = {s.what: s for s in enqueue_project(Queue(real_runs.parent / "queue-check"), real_runs / "differential", max_steps=STEPS)}
    assert (steps["train A"].action, steps["train A"].reason) == ("queued", SideLora(plan, "a").status().reason)


@pytest.mark.parametrize("name", ["A", "B", "result", "stats", "grid", "check"])
def test_every_output_name_is_spelled_once(name, tmp_path):
    """The paths the plan gives are the ones the writers use (engine.project.outputs.OutputPaths)."""
    from engine.project.outputs import OutputPaths

    paths = OutputPaths(tmp_path / "output", "concept")
    by_name = {"A": paths.lora("a"), "B": paths.lora("b"), "result": paths.result, "stats": paths.stats, "grid": paths.grid,
               "check": paths.check}
    expected = {"A": "concept_A.safetensors", "B": "concept_B.safetensors", "result": "concept.safetensors",
                "stats": "concept.stats.json", "grid": "samples/concept-grid.png", "check": "samples/concept-check.png"}
    assert by_name[name].relative_to(tmp_path / "output").as_posix() == expected[name]


def test_a_folder_where_an_input_file_belongs_makes_the_result_stale_not_a_crash(real_runs):
    """A LoRA path taken by a folder (a bad copy, a mistaken mkdir): the side is missing, the
    result made from it stale, and `check` still prints the plan."""
    from copylora_tui.cli.main import main

    plan = plan_of(real_runs / "mono")
    lora_b = plan.outputs.lora("b")
    lora_b.unlink()
    lora_b.mkdir()
    assert SideLora(plan, "b").status().state == MISSING
    assert Result(plan).status().pair() == (False, "A or B changed since the merge")
    assert main(["check", str(real_runs / "mono")]) == 0


def test_each_file_is_hashed_once_however_many_statuses_ask(real_runs, monkeypatch):
    """What is made from a side asks the side's status (its fingerprint: the pictures, and for
    the differential route A's LoRA by content), and the result, its stats, its grid and its
    check each ask the result's: A's LoRA was read whole 15 times for one `check`. Each file is
    read once now, until it changes."""
    import engine.hashing as hashing
    from copylora_tui.core.plan_view import output_statuses

    plan = plan_of(real_runs / "differential")
    monkeypatch.setattr(hashing, "_REMEMBERED", {})
    read: list[str] = []
    real = hashing.file_sha256
    monkeypatch.setattr(hashing, "file_sha256", lambda path: (read.append(str(path)), real(path))[1])
    first = output_statuses(plan)
    output_statuses(plan)
    assert read and len(read) == len(set(read)), sorted(read)
    lora_a = plan.outputs.lora("a")
    lora_a.write_bytes(lora_a.read_bytes())  # written anew: read again
    assert output_statuses(plan) == first and read.count(str(lora_a)) == 2


def test_each_loras_header_is_parsed_once_until_the_file_changes(real_runs, monkeypatch):
    """Each status read its LoRA's header (60-300 kB of JSON) again, some twice, and the app asks
    every project's at each look: a fifth of its time over a folder of trained projects."""
    import os

    import engine.project.outputs as outputs
    from copylora_tui.core.plan_view import output_statuses

    plan = plan_of(real_runs / "mono")
    monkeypatch.setattr(outputs, "_METADATA", {})
    parsed: list[str] = []
    real = outputs.read_header
    monkeypatch.setattr(outputs, "read_header", lambda path, *a, **k: (parsed.append(str(path)), real(path, *a, **k))[1])
    first = output_statuses(plan)
    output_statuses(plan)
    assert parsed and len(parsed) == len(set(parsed)), sorted(parsed)
    lora_a = plan.outputs.lora("a")
    meta, _ = outputs.file_metadata(lora_a)
    meta["copylora_fingerprint"] = "changed by the caller"  # a caller's copy: not what the next one reads
    assert outputs.file_metadata(lora_a)[0]["copylora_fingerprint"] != "changed by the caller"
    data = bytearray(lora_a.read_bytes())
    at = data.index(b'"copylora_fingerprint":"') + len(b'"copylora_fingerprint":"')
    data[at] = ord("0") if data[at] != ord("0") else ord("1")  # the same size, in place: one character of its record
    stamp = os.stat(lora_a).st_mtime_ns
    with open(lora_a, "r+b") as handle:
        handle.write(data)
    os.utime(lora_a, ns=(stamp + 1_000_000, stamp + 1_000_000))  # a later write: a later time (whatever the clock's grain)
    assert output_statuses(plan) != first and parsed.count(str(lora_a)) == 2
    assert SideLora(plan, "a").status().state == STALE
