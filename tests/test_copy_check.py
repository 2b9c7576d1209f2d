"""Copy fidelity, live (engine.train.copy_check) and the stop rule (engine.project.copy_rule):
the checks change nothing of the training, their figure reaches the progress, the log, the LoRA
and the queue, and stop_when_copied ends a side (alone, or one side of a twin run) with a LoRA
that counts as current until the rule changes."""

from __future__ import annotations

import pytest

from engine.project.copy_rule import StopRule, parse_stop_when_copied
from tests.helpers import check, copy_example, one_line, set_keys

# ---- the rule, no torch


@pytest.mark.parametrize("value, kept", [(30, 30.0), (27.5, 27.5), ("30", 30.0), ("30 dB", 30.0), (" Plateau ", "plateau"),
                                         (False, ""), ("", ""), ("off", "")])
def test_stop_when_copied_reads_a_target_a_word_or_off(value, kept):
    assert parse_stop_when_copied(value) == kept


@pytest.mark.parametrize("value, message", [(-3, "above 0"), (0, "above 0"), ("plateu", "dB target"), (True, "dB target"),
                                            (1e9, "at most 100"), (float("nan"), "above 0"), ([30], "dB target")])
def test_stop_when_copied_refuses_what_it_cannot_judge(value, message):
    with pytest.raises(ValueError, match=message):
        parse_stop_when_copied(value)


def test_a_target_stops_at_the_first_check_that_reaches_it():
    rule = StopRule(every=50, target_db=20.0)
    assert rule.reached([(0, 18.0), (50, 19.9)]) is None
    assert "20.1 dB ≥ 20 dB at step 100" in rule.reached([(0, 18.0), (50, 19.9), (100, 20.1)])
    assert StopRule(every=0, target_db=20.0).reached([(0, 30.0)]) is None  # no checks: no rule


def test_a_plateau_is_no_gain_over_a_window_of_checks():
    rule = StopRule(every=10, plateau=True, gain_db=0.2, window=3)
    rising = [(i * 10, 20 + 0.5 * i) for i in range(6)]
    assert rule.reached(rising) is None
    flat = rising + [(60, 22.6), (70, 22.55), (80, 22.7)]  # best before 22.5, best since 22.7: +0.2
    assert "plateau at step 80" in rule.reached(flat)
    assert rule.reached(flat[:3]) is None  # never before a full window past the first check
    # Flat from the start is not copied: the figure must first rise 1 dB above the first check.
    assert rule.reached([(i * 10, 22.0 + 0.01 * i) for i in range(8)]) is None
    assert rule.reached([(0, 22.0)] + [(i * 10, 23.0) for i in range(1, 8)]) is not None
    # Judged check by check as training would: the first check that reaches it.
    assert "step 80" in rule.first_reached(flat + [(90, 22.7), (100, 22.7)])


def test_bad_rules_fail_at_check_with_one_line(tmp_path, capsys):
    root = copy_example(tmp_path)
    for value, words in (("-3", "stop_when_copied: a dB target must be a number above 0"),
                         ('"plateu"', 'stop_when_copied: must be a dB target (e.g. 30), "plateau", or false')):
        set_keys(root, "train", stop_when_copied=value)
        code, err = check(root, capsys)
        assert code != 0 and words in one_line(err), err
    set_keys(root, "train", stop_when_copied="30", copy_check_every_n_steps="0")
    code, err = check(root, capsys)
    assert code != 0 and "needs copy_check_every_n_steps > 0" in one_line(err)
    set_keys(root, "train", copy_check_every_n_steps="100")
    set_keys(root, "project", method='"adift"')
    code, err = check(root, capsys)
    assert code != 0 and "method" in one_line(err) and "adift" in one_line(err)


# ---- training, on the tiny model

def make(tmp_path, steps: int, **train_keys):
    pytest.importorskip("torch")
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan

    root = copy_example(tmp_path)
    project = load_project(root)
    for key, value in {"max_train_steps": steps, "max_train_epochs": None, "resolution": [128, 192],
                       "save_precision": "float", **train_keys}.items():
        setattr(project.train, key, value)
    save_project(project)
    return make_plan(load_project(root))


def tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def meta(path):
    from engine.formats.safetensors_header import read_header

    return read_header(path).metadata


def test_checks_change_nothing_and_their_figure_goes_everywhere(tmp_path, tiny):
    from engine.train.controls import TrainControls
    from engine.train.twin import train_twin

    quiet_plan = make(tmp_path / "off", 6, copy_check_every_n_steps=0)
    off = train_twin(quiet_plan, model=tiny, log=lambda _line: None)
    plan = make(tmp_path / "on", 6, copy_check_every_n_steps=2)
    progress, lines = [], []
    on = train_twin(plan, model=tiny, log=lines.append, controls=TrainControls(on_progress=progress.append))
    for side in "ab":  # bit for bit: the checks touch neither the weights nor the random stream
        got, want = tensors(on[side].lora_path), tensors(off[side].lora_path)
        assert all(torch_equal(got[k], want[k]) for k in want)
    checks = [line for line in lines if line.startswith("copy check at step")]
    assert [c.split(":")[0] for c in checks] == [f"copy check at step {s}" for s in (0, 2, 4, 6)]
    assert " A " in checks[-1] and " B " in checks[-1] and checks[-1].endswith("dB")
    assert [p.step for p in progress] == list(range(1, 7))  # one report per step, checks included
    assert progress[0].copy_db is not None and progress[0].copy_step == 0  # the base's figure, before training
    assert progress[-1].copy_step == 6 and progress[-1].copy_db_b is not None and progress[-1].copy_db != progress[-1].copy_db_b
    for side, value in (("a", progress[-1].copy_db), ("b", progress[-1].copy_db_b)):
        recorded = meta(on[side].lora_path)
        assert recorded["copylora_copy_psnr"] == f"{value:.2f}" and recorded["copylora_copy_step"] == "6"
        assert "copylora_stopped" not in recorded
    assert "copylora_copy_psnr" not in meta(off["a"].lora_path)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


# A plateau rule that any second check reaches: the tiny model's random weights copy nothing, so
# a dB target is never reached there; "no gain above 100 dB over one check" always is, once the
# rise a plateau needs first (MIN_RISE_DB) is waived (the ``any_plateau`` fixture).
ALWAYS = {"stop_when_copied": "plateau", "copy_plateau_gain_db": 100.0, "copy_plateau_checks": 1, "copy_check_every_n_steps": 2}


@pytest.fixture
def any_plateau(monkeypatch):
    monkeypatch.setattr("engine.project.copy_rule.MIN_RISE_DB", -1000.0)


def test_a_side_stops_when_copied_and_its_lora_stays_current_until_the_rule_changes(tmp_path, tiny, capsys, any_plateau):
    from engine.project.folder import load_project, save_project
    from engine.project.outputs import SideLora
    from engine.project.plan import make_plan
    from engine.train.trainer import train

    plan = make(tmp_path, 10, **ALWAYS)
    lines: list[str] = []
    result = train(plan, "a", model=tiny, log=lines.append)
    assert result.status == "done" and result.step == 2 and result.total == 10 and result.copied_at == 2
    assert any("A is copied: copy plateau at step 2" in line and "8 of 10 steps left untrained" in line for line in lines)
    recorded = meta(result.lora_path)
    assert recorded["copylora_steps"] == "2" and "plateau" in recorded["copylora_stopped"]
    status = SideLora(plan, "a").status()
    assert status.state == "current" and status.note == "copied at step 2 of 10"
    code, out = check(plan.project.root, capsys)
    assert code == 0 and "copied at step 2 of 10" in out and "stops when copied: plateau" in out
    # Resumed with the same rule: already copied, nothing trains.
    again: list[str] = []
    resumed = train(plan, "a", model=tiny, log=again.append, resume=True)
    assert resumed.step == 2 and any("was already copied" in line for line in again)
    assert not any(line.startswith("copy check") for line in again)
    # Another rule: the LoRA is stale, and a resumed run trains on from where it stopped.
    project = load_project(plan.project.root)
    project.train.stop_when_copied = ""
    save_project(project)
    plan = make_plan(load_project(plan.project.root))
    status = SideLora(plan, "a").status()
    assert status.state == "stale" and "another stop_when_copied rule" in status.reason
    more: list[str] = []
    finished = train(plan, "a", model=tiny, log=more.append, resume=True)
    assert finished.step == 10 and any("resuming A from step 2" in line for line in more)
    assert SideLora(plan, "a").status().state == "current"


def test_one_side_of_a_twin_run_stops_and_the_other_trains_on(tmp_path, tiny, any_plateau):
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan, twin_problem
    from engine.train.twin import train_twin

    plan = make(tmp_path, 8, copy_check_every_n_steps=2)
    project = load_project(plan.project.root)
    project.a.overrides.update({k: v for k, v in ALWAYS.items() if k != "copy_check_every_n_steps"})
    save_project(project)
    plan = make_plan(load_project(plan.project.root))
    assert twin_problem(plan) is None  # each side its own rule, still one batch
    lines: list[str] = []
    results = train_twin(plan, model=tiny, log=lines.append)
    assert results["b"].step == 8 and (results["a"].copied_at, results["b"].copied_at) == (2, None)
    assert meta(results["a"].lora_path)["copylora_steps"] == "2"
    assert meta(results["b"].lora_path)["copylora_steps"] == "8" and "copylora_stopped" not in meta(results["b"].lora_path)
    assert any(line.startswith("A: ") and "the other side trains on" in line for line in lines)
    a_at_stop = tensors(results["a"].lora_path)
    # A stayed frozen while B trained: its state at the end holds the LoRA of step 2.
    import torch

    state = torch.load(results["b"].state_path.parent.parent / "A" / "state-00000008.pt", weights_only=False)
    name = next(iter(state["lora"]))
    key = next(k for k in a_at_stop if k.startswith(name) and k.endswith("lora_up.weight"))
    assert torch.equal(state["lora"][name]["up"].float(), a_at_stop[key].float())
    assert state["copy"]["stopped"][0] == 2


def test_the_queue_keeps_the_figure_and_shows_it(tmp_path, monkeypatch):
    from engine.jobs.queue import Queue
    from engine.train.progress import Progress

    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    queue = Queue()
    job = queue.enqueue("train", "/p", side="ab", total=10)
    p = Progress(4, 10, 0.1, 0.1, 1e-3, 2.0, 3.0, 2.0, None, 0.2, 0.2, copy_db=21.25, copy_db_b=19.5, copy_step=4)
    queue.report_progress(job.id, p, point=True)
    got = queue.get(job.id)
    assert (got.copy_db, got.copy_db_b) == (21.25, 19.5)
    assert queue.points(job.id)[-1]["copy_db"] == 21.25
    from rich.console import Console

    from copylora_tui.cli.queue_view import print_queue

    console = Console(width=140, record=True)
    print_queue(queue.jobs(), None, tmp_path, console)
    text = console.export_text()
    assert "copy" in text.splitlines()[1] and "A 21.2 B 19.5" in text


def test_a_queue_of_the_previous_version_gains_the_columns(tmp_path, monkeypatch):
    """A queue written by the version before copy checks (schema 2) opens, keeps its jobs, and
    takes the figure."""
    import sqlite3

    from engine.jobs.queue import MIGRATIONS, Queue
    from engine.jobs.state_home import queue_db
    from engine.train.progress import Progress

    home = tmp_path / "state"
    home.mkdir()
    db = sqlite3.connect(queue_db(home))
    for number in range(2):
        for statement in MIGRATIONS[number]:
            db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO jobs (kind, project, side, label, position, created_at, total, step) VALUES "
               "('train', '/p', 'a', 'train A', 1, 0, 10, 0)")
    db.commit()
    db.close()
    monkeypatch.setenv("COPYLORA_HOME", str(home))
    queue = Queue()
    job = queue.get(1)
    assert job.label == "train A" and job.copy_db is None
    queue.report_progress(1, Progress(2, 10, 0.1, 0.1, 1e-3, 2.0, 3.0, 2.0, copy_db=18.0, copy_step=2), point=True)
    assert queue.get(1).copy_db == 18.0
    assert sqlite3.connect(queue_db(home)).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 4


def test_the_form_takes_the_rule_as_typed_and_saves_it_as_toml(tmp_path):
    from copylora_tui.core.form import apply_values, parse_text, section_fields, validate, value_text
    from engine.project.folder import load_project, save_project

    spec = next(f for f in section_fields("train") if f.key == "stop_when_copied")
    assert parse_text("30", spec) == (30.0, None) and parse_text("plateau", spec) == ("plateau", None)
    assert parse_text("", spec) == ("", None)  # emptied: off
    caption = next(f for f in section_fields("train") if f.key == "caption")
    assert parse_text("", caption) == ("", None)  # emptied: caption-free (this said "required: a string")
    value, error = parse_text("-1", spec)
    assert value is None and "above 0" in error
    side = next(f for f in section_fields("b") if f.key == "stop_when_copied")
    assert parse_text("28.5 dB", side) == (28.5, None)
    root = copy_example(tmp_path)
    project = apply_values(load_project(root), {"train.stop_when_copied": 30.0, "b.stop_when_copied": "plateau"})
    checked, problems = validate(project)
    assert problems == [] and checked is not None
    save_project(checked)
    again = load_project(root)
    assert again.train.stop_when_copied == 30.0 and again.side_params("b").stop_when_copied == "plateau"
    assert "stop_when_copied = 30.0" in (root / "copylora.toml").read_text()
    assert value_text(again.train.stop_when_copied, spec) == "30.0"


def test_the_validation_bench_runs_end_to_end(tmp_path):
    """bench/copy_fidelity_bench.py on the tiny model, 10 steps: live and sampled figures per
    checkpoint, the rank correlation, and each stop rule's pair measured (the figures are noise
    here; docs/BENCHMARKS.md has the toy model's)."""
    import json
    import subprocess
    import sys

    from tests.helpers import REPO

    pytest.importorskip("torch")
    out = tmp_path / "copy.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "copy_fidelity_bench.py"), "--base", "tiny", "--epochs", "2",
                           "--every", "5", "--effect-every", "10", "--prompts", "1", "--seeds", "1", "--sample-steps", "3",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [row["step"] for row in record["rows"]] == [0, 5, 10]
    assert set(record["rows"][1]["sampled"]) == {"a", "b"} and "effect" in record["rows"][2]
    assert set(record["summary"]["spearman"]) == {"a", "b"}
    assert all("effect" in rule and set(rule["stops"]) == {"a", "b"} for rule in record["summary"]["rules"])
    assert "Spearman (live vs sampled" in done.stdout and record["summary"]["sample_steps"] == 3


def test_a_twin_side_frozen_by_an_old_rule_trains_on_from_its_stop(tmp_path, tiny, any_plateau):
    """A stopped at step 2 of a twin run whose checkpoints went on to step 8 (frozen); with the
    rule off, A alone resumes from its own step 2, not from the later checkpoint's 8."""
    from engine.project.folder import load_project, save_project
    from engine.project.outputs import SideLora
    from engine.project.plan import make_plan
    from engine.train.trainer import train
    from engine.train.twin import train_twin

    plan = make(tmp_path, 8, copy_check_every_n_steps=2)
    project = load_project(plan.project.root)
    project.a.overrides.update({k: v for k, v in ALWAYS.items() if k != "copy_check_every_n_steps"})
    save_project(project)
    train_twin(make_plan(load_project(plan.project.root)), model=tiny, log=lambda _line: None)
    project = load_project(plan.project.root)
    project.a.overrides.pop("stop_when_copied")
    save_project(project)
    plan = make_plan(load_project(plan.project.root))
    assert SideLora(plan, "a").status().state == "stale"
    lines: list[str] = []
    result = train(plan, "a", model=tiny, log=lines.append, resume=True)
    assert any("stopped at step 2 under the earlier stop_when_copied rule" in line and "trains on from step 2" in line for line in lines)
    assert result.step == 8 and meta(result.lora_path)["copylora_steps"] == "8"
    assert [line.split(":")[0] for line in lines if line.startswith("copy check")] == [f"copy check at step {s}" for s in (4, 6, 8)]
    assert SideLora(plan, "a").status().state == "current"


def test_a_queued_twin_job_reports_the_figure_and_which_side_was_copied(tmp_path, monkeypatch, any_plateau):
    """The job runner's path: the queue row carries the newest figures while it trains, and the
    finished job's record says which side its rule ended and where."""
    from engine.jobs.queue import TWIN, Queue
    from engine.jobs.runner import run_train
    from engine.project.folder import load_project, save_project

    plan = make(tmp_path, 6, copy_check_every_n_steps=2)
    project = load_project(plan.project.root)
    project.a.overrides.update({k: v for k, v in ALWAYS.items() if k != "copy_check_every_n_steps"})
    save_project(project)
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    queue = Queue()
    job = queue.enqueue("train", str(plan.project.root), side=TWIN, total=6)
    job = queue.claim(None)
    artifacts = run_train(queue, job, {"asked": False})
    assert artifacts["copied"] == "A at step 2" and artifacts["steps"] == 6
    row = queue.get(job.id)
    assert row.copy_db is not None and row.copy_db_b is not None
    assert [p["step"] for p in queue.points(job.id) if p["copy_db"] is not None][:1] == [1]  # the base's figure from the start
