"""The app's headless core, without a terminal: the form model, log following, project
states, deleting, the stats table, the curve and the threads' queue connection."""

from __future__ import annotations

import pytest

from copylora_tui.core import form
from copylora_tui.core.log_follow import LogFollower, collapse_cr
from copylora_tui.core.projects import DONE, MISSING, STALE, delete_project, summarise
from copylora_tui.core.reader import QueueReader
from copylora_tui.core.stats_table import block_filters, kind_filters, load_stats, sorted_rows
from copylora_tui.widgets.curve import render_curve
from engine.project.folder import load_project
from tests.test_app_support import make_projects, mark_trained, write_stats


def spec(path: str) -> form.FieldSpec:
    section, key = path.split(".")
    return next(s for s in form.section_fields(section) if s.key == key)


@pytest.mark.parametrize(
    "path, text, value",
    [
        ("train.network_dim", "16", 16),
        ("train.learning_rate", "1e-4", 1e-4),
        ("train.resolution", "[512, 768]", [512, 768]),
        ("train.resolution", "600,900", [600, 900]),
        ("train.resolution", "512", [512, 512]),
        ("train.optimizer_type", "adamw", "AdamW"),
        ("train.max_train_steps", "", None),
        ("train.optimizer_args", "{ weight_decay = 0.01 }", {"weight_decay": 0.01}),
        ("project.base_model", "/models/sd 15.safetensors", "/models/sd 15.safetensors"),
        ("a.network_dim", "", form.INHERIT),
        ("a.network_dim", "4", 4),
        ("merge.ratios", "[1.0, -1.0]", [1.0, -1.0]),
    ],
)
def test_field_text_is_parsed_like_toml(path, text, value):
    assert form.parse_text(text, spec(path)) == (value, None)


@pytest.mark.parametrize(
    "path, text, message",
    [
        ("train.network_dim", "0", "must be greater than 0"),
        ("train.network_dim", "eight", "not a value"),
        ("train.network_dim", "", "required: an integer"),  # not "must be an integer, got None"
        ("train.learning_rate", "-1", "must be greater than 0"),
        ("train.optimizer_type", "adamw9bit", "did you mean 'AdamW8bit'"),
        ("train.resolution", "[10, 10]", "at least 64"),
        ("merge.ratios", "[1, -1, 0.5]", "list of 2 items"),
        ("train.network_dim", "9" * 5000, "not a value"),  # a paste: tomllib's int limit raised ValueError, ending the app
        ("train.optimizer_args", "[" * 1000, "not a value"),  # RecursionError, likewise
    ],
)
def test_field_errors_are_the_validators(path, text, message):
    value, error = form.parse_text(text, spec(path))
    assert value is None and message in error


def test_values_apply_and_validate_like_the_cli(tmp_path):
    project = load_project(make_projects(tmp_path) / "example-monochrome")
    edited = form.apply_values(project, {"train.network_dim": 4, "a.learning_rate": 2e-4, "b.folder": "b"})
    checked, problems = form.validate(edited)
    assert problems == [] and checked.train.network_dim == 4 and checked.a.overrides == {"learning_rate": 2e-4}
    both = form.apply_values(project, {"train.max_train_steps": 100})  # epochs are set too: a cross-key rule
    checked, problems = form.validate(both)
    assert checked is None and "not both" in problems[0].message
    same = form.apply_values(project, {"b.folder": "a"})
    _, problems = form.validate(same)
    assert form.field_for_problem(problems[0], ["b.folder"]) == "b.folder"


def test_log_follower_reads_only_new_complete_lines_and_collapses_cr(tmp_path):
    log = tmp_path / "job.log"
    follower = LogFollower(log)
    assert follower.read_new() == []  # not created yet
    log.write_bytes(b"start\nstep 1\rstep 2\rstep 3\nhalf")
    assert follower.read_new() == ["start", "step 3"]
    with open(log, "ab") as handle:
        handle.write(b" a line\n")
    assert follower.read_new() == ["half a line"]
    assert follower.read_new() == []
    log.write_bytes(b"rotated\n")  # shorter: read again from the start
    assert follower.read_new() == ["rotated"]
    assert collapse_cr("10%\r50%\r100%\r") == "100%"


def test_log_follower_starts_near_the_end_of_a_long_log(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("".join(f"line {i}\n" for i in range(10000)))
    lines = LogFollower(log, initial_bytes=1000).read_new()
    assert lines[-1] == "line 9999" and len(lines) < 150 and lines[0].startswith("line ")


def test_project_states_follow_outputs_and_parameters(tmp_path):
    folder = make_projects(tmp_path) / "example-monochrome"
    summary = summarise(folder)
    assert summary.valid and summary.sides["a"].state == MISSING and summary.merge.state == MISSING
    mark_trained(folder)
    summary = summarise(folder)
    assert summary.sides["a"].state == DONE and summary.sides["b"].state == DONE and summary.output_bytes > 0
    toml = folder / "copylora.toml"
    toml.write_text(toml.read_text().replace("network_dim = 8", "network_dim = 4"))
    summary = summarise(folder)
    assert summary.sides["a"].state == STALE and "changed" in summary.sides["a"].reason
    toml.write_text(toml.read_text().replace("network_dim = 4", "network_dim = -1"))
    assert not summarise(folder).valid


def test_delete_keeps_output_unless_asked(tmp_path):
    projects = make_projects(tmp_path, ("one", "two"))
    for name in ("one", "two"):
        mark_trained(projects / name, ("a",))
    removed = delete_project(summarise(projects / "one"), also_outputs=False)
    assert (projects / "one" / "output" / "one_A.safetensors").is_file()
    assert not (projects / "one" / "copylora.toml").exists() and projects / "one" / "a" in removed
    delete_project(summarise(projects / "two"), also_outputs=True)
    assert not (projects / "two").exists()


def test_stats_rows_sort_and_filter(tmp_path):
    document = load_stats(write_stats(tmp_path / "x.stats.json"))
    rows = sorted_rows(document, sort="energy")
    assert [r["energy_kept"] for r in rows] == sorted(r["energy_kept"] for r in rows)
    assert sorted_rows(document, sort="norm")[0]["result_norm"] == max(r["result_norm"] for r in rows)
    assert {r["block"] for r in sorted_rows(document, block="out")} == {"out2", "out3"}
    assert [r["kind"] for r in sorted_rows(document, kind="conv3x3")] == ["conv3x3"]
    assert block_filters(document, "unet")[:3] == ["in", "out", "in1"]
    assert kind_filters(document) == ["conv1x1", "conv3x3", "linear"]


def test_stats_rows_by_lbw_block_in_a_file_from_before_lbw(tmp_path):
    """write_stats writes the old format (no lbw_block): the blocks come from the module names."""
    document = load_stats(write_stats(tmp_path / "x.stats.json"))
    assert [m["lbw_block"] for m in document["modules"]] == ["IN04", "IN04", "M00", "OUT07", "OUT06", "OUT11"]
    assert [b["block"] for b in document["lbw_blocks"]] == ["IN04", "M00", "OUT06", "OUT07", "OUT11"]
    assert [b["modules"] for b in document["lbw_blocks"]] == [2, 1, 1, 1, 1]
    assert block_filters(document) == ["IN", "OUT", "IN04", "M00", "OUT06", "OUT07", "OUT11"]
    assert {r["lbw_block"] for r in sorted_rows(document, block="OUT")} == {"OUT06", "OUT07", "OUT11"}
    assert [r["lbw_block"] for r in sorted_rows(document, block="out06")] == ["OUT06"]  # any case
    # A U-Net name still filters in the LBW view, and an LBW name in the U-Net view.
    assert {r["block"] for r in sorted_rows(document, block="out2")} == {"out2"}
    assert {r["lbw_block"] for r in sorted_rows(document, block="OUT11", view="unet")} == {"OUT11"}
    assert sorted_rows(document, block="IN05") == []
    by_block = [r["lbw_block"] for r in sorted_rows(document, sort="block")]
    assert by_block == ["IN04", "IN04", "M00", "OUT06", "OUT07", "OUT11"]


def test_curve_draws_top_and_bottom_labels():
    rows = render_curve([1.0, 0.5, 0.25, 0.0], width=12, height=3)
    assert len(rows) == 3 and rows[0].startswith("1│") and rows[-1].startswith("0│")
    assert rows[-1].endswith("█") is False and rows[0][2] == "█"
    squeezed = render_curve(list(range(1000)), width=20, height=2)
    assert all(len(row) == 20 for row in squeezed)


def test_queue_reader_closes_after_the_running_read(tmp_path):
    """Closing while a thread reads must not close the connection under it (sqlite crashes)."""
    reader = QueueReader(tmp_path / "state")
    assert reader.begin() and not reader.begin()  # one read at a time
    queue = reader.queue()
    reader.close()  # the screen goes away mid-read
    assert queue.jobs() == []  # still open for the read in progress
    reader.end()
    with pytest.raises(Exception):
        queue.jobs()  # closed by end()
    assert not reader.begin()  # and no read starts after closing


# What a user can type or paste into any field of the form: empty, the float specials, numbers
# past every limit, a full-width digit, a NUL, a name far longer than a filesystem allows, broken
# TOML, paths that climb out or name the root, and a word in Japanese.
HOSTILE = ["", " ", "nan", "-inf", "-1", "1e400", "9" * 30, "１２", "\x00", "a" * 300, "[", '"', "{a = {b = 1}}", "../../..", "/", "白黒", "x[/]y", "[bold]z"]


@pytest.mark.parametrize("example", ["example-dreambooth", "example-monochrome"])
def test_every_field_takes_every_hostile_value_as_a_problem_or_a_project_that_saves_and_loads(tmp_path, example):
    """The form's whole path, without a terminal, for every field of every section (the
    DreamBooth example has [reg] and a [[concept]]): parse, apply, validate, plan, save, load.
    A 300-character folder name once ended the form's check thread with the OS's "File name
    too long" (and `copylora check` with a bare OS error), and a caption_extension of "/" with
    a ValueError of pathlib's: each is now a problem of its key."""
    import shutil

    from copylora_tui.screens.project import _plan_text
    from engine.project.folder import save_project
    from tests.helpers import REPO

    source = tmp_path / "source"
    shutil.copytree(REPO / "projects" / example, source, ignore=shutil.ignore_patterns("output"))
    project = load_project(source)
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    sections = ["project", "train", "merge", "sample", "a", "b", "reg", *(form.concept_section(n + 1) for n in range(len(project.concepts)))]
    concepts = len(project.concepts) if project.reg is not None else None
    outcomes = {"refused": 0, "problem": 0, "saved": 0}
    for field in (spec for section in sections for spec in form.section_fields(section)):
        for text in HOSTILE:
            value, error = form.parse_text(text, field)
            if error is not None:
                outcomes["refused"] += 1
                continue
            checked, problems = form.validate(form.apply_values(project, {field.path: value}, concepts))
            if checked is None:
                assert problems, (field.path, text)
                outcomes["problem"] += 1
                continue
            _plan_text(checked)
            save_project(checked, copy)
            load_project(copy)
            outcomes["saved"] += 1
    assert min(outcomes.values()) > 50, outcomes


def test_a_path_the_filesystem_cannot_answer_for_is_a_problem_of_its_key(tmp_path):
    """A name longer than the filesystem allows (NAME_MAX, 255 bytes on Linux) in each key that
    names a path: each key says so; nothing raises the OS's error past validation."""
    project = load_project(make_projects(tmp_path) / "example-monochrome")
    long = "x" * 300
    keys = ["project.base_model", "project.output_dir", "train.network_weights", "a.folder", "b.network_weights"]
    _, problems = form.validate(form.apply_values(project, {key: long for key in keys}))
    said = {p.where: p.message for p in problems}
    for key in keys:
        assert key in said and ("too long" in said[key] or "no such" in said[key]), (key, said)
    assert "File name too long" in said["a.folder"]  # the OS's words, from the check of the folder
    assert "its name is too long: 300 bytes; at most 255 fit" in said["project.output_dir"]  # said before asking the OS
