"""engine.project.output_owner: projects sharing one output folder (all LoRAs in one place)
keep their checkpoints apart, and a second project of one name is refused there."""

from __future__ import annotations

import json
import shutil

import pytest

from copylora_tui.cli.main import EXIT_USAGE, main
from engine.project.folder import load_project
from engine.project.plan import make_plan
from engine.train.trainer import TrainingError, train
from tests.helpers import copy_example, quiet, set_keys


def project(tmp_path, folder: str, name: str, output) -> object:
    root = copy_example(tmp_path / "projects", folder)
    set_keys(root, "project", name=json.dumps(name), output_dir=json.dumps(str(output)))
    return root


def test_projects_sharing_an_output_folder_keep_their_checkpoints_apart(tmp_path, tiny, capsys):
    shared = tmp_path / "loras"
    one, two = project(tmp_path, "one", "mono", shared), project(tmp_path, "two", "style", shared)
    own = copy_example(tmp_path / "projects", "own")  # output_dir "output", in its own folder: as before
    plans = [make_plan(load_project(root), max_steps=2) for root in (one, two, own)]
    copy = tmp_path / "projects" / "copy"  # a copy of project one (the same [project] name and output folder)
    shutil.copytree(one, copy)
    copied = make_plan(load_project(copy), max_steps=2)  # checked before one trained: its training must still refuse
    assert [p.side("a").run_dir for p in plans] == [shared / "runs" / "mono" / "A", shared / "runs" / "style" / "A",
                                                   own / "output" / "runs" / "A"]
    first = train(plans[0], "a", model=tiny, log=quiet)
    kept = sorted(plans[0].side("a").run_dir.glob("state-*.pt"))
    train(plans[1], "a", model=tiny, log=quiet)  # a fresh start drops old states: its own, not mono's
    assert kept and sorted(plans[0].side("a").run_dir.glob("state-*.pt")) == kept
    assert first.lora_path == shared / "mono_A.safetensors" and (shared / "style_A.safetensors").is_file()
    assert (shared / "runs" / "mono" / "project").read_text().strip() == str(one.resolve())

    # The copy: refused at check and at training, before anything of mono's is touched; once
    # project one is gone (moved away), it takes over.
    assert main(["check", str(copy)]) == EXIT_USAGE
    out = capsys.readouterr()
    assert f"project.output_dir: {shared} already holds the outputs of another project named 'mono' ({one.resolve()})" in out.out + out.err
    before = first.lora_path.read_bytes()
    with pytest.raises(TrainingError, match="another project named 'mono'"):
        train(copied, "a", model=tiny, log=quiet)
    assert first.lora_path.read_bytes() == before and sorted(plans[0].side("a").run_dir.glob("state-*.pt")) == kept
    shutil.rmtree(one)
    assert main(["check", str(copy)]) == 0
    train(make_plan(load_project(copy), max_steps=2), "a", model=tiny, log=quiet)
    assert (shared / "runs" / "mono" / "project").read_text().strip() == str(copy.resolve())


def test_checkpoints_of_the_earlier_layout_are_pointed_at(tmp_path, capsys):
    """An earlier copylora kept a shared output folder's checkpoints in runs/A: check says where
    they are and how to move them, so a resume can find them; once moved, it says no more."""
    import subprocess

    from engine.project.plan import plan_warnings

    shared = tmp_path / "my loras"  # a space: the printed command must be quoted for the shell
    root = project(tmp_path, "one", "mono", shared)
    (shared / "runs" / "A").mkdir(parents=True)
    (shared / "runs" / "A" / "state-00000004.pt").write_bytes(b"x")
    plan = make_plan(load_project(root))
    [warning] = [w for w in plan_warnings(plan) if "earlier copylora" in w]
    assert f"{shared / 'runs'} holds checkpoints of side A" in warning
    subprocess.run(warning.rsplit("(", 1)[1].rstrip(")"), shell=True, check=True)  # the command as printed
    assert plan.side("a").run_dir.joinpath("state-00000004.pt").is_file()
    assert not [w for w in plan_warnings(make_plan(load_project(root))) if "earlier copylora" in w]


def test_a_training_takes_its_own_checkpoints_from_the_earlier_layout(tmp_path, tiny):
    """A job paused before an update, its checkpoints in the shared folder's runs/A, resumed
    after it: it started again from 0 (check alone said where they were). This training's are
    moved into its run folder and resumed; another training's (another fingerprint) stay."""
    from engine.train.controls import TrainControls

    shared = tmp_path / "loras"
    root = project(tmp_path, "one", "mono", shared)
    plan = make_plan(load_project(root), max_steps=2)
    train(plan, "a", model=tiny, log=quiet)  # checkpoints at step 2, then laid out as an earlier copylora kept them
    old = shared / "runs" / "A"
    plan.side("a").run_dir.rename(old)
    other = old / "state-00000009.pt"  # another project's (an earlier copylora kept one project per folder)
    other.write_bytes(b"x")
    other.with_suffix(".json").write_text(json.dumps({"step": 9, "total": 9, "fingerprint": "someone else"}))
    started, logged = [], []
    longer = make_plan(load_project(root), max_steps=4)
    train(longer, "a", resume=True, model=tiny, log=logged.append, controls=TrainControls(on_start=lambda step, total: started.append(step)))
    assert started == [2]  # continued from the moved checkpoint, not from 0
    assert [line for line in logged if line.startswith("moved 1 checkpoint(s) of this training from")]
    assert other.is_file() and not list(old.glob("state-00000002.*"))


def test_moving_the_earlier_layouts_checkpoints_survives_a_kill_a_refusal_and_an_earlier_trainer(tmp_path, monkeypatch):
    """Newest first, so a kill midway has moved the one a resume needs (the rest follow next
    time); a move the system refuses is said, not a crash of the training; an earlier copylora
    training in the old folder (its lock) keeps its checkpoints."""
    import os

    from engine.files import take_lock
    from engine.train.checkpoint import adopt_earlier_layout, list_states

    old, new = tmp_path / "runs" / "A", tmp_path / "runs" / "mono" / "A"
    old.mkdir(parents=True)
    for step in (400, 500):
        (old / f"state-{step:08d}.pt").write_bytes(b"x")
        (old / f"state-{step:08d}.json").write_text(json.dumps({"step": step, "fingerprint": "this"}))
    held, _ = take_lock(old / "training.lock", "an earlier copylora's trainer\n")
    logged: list[str] = []
    assert adopt_earlier_layout(old, new, {"this"}, logged.append) == 0 and "holds it" in logged[-1]
    held.close()
    real, calls = os.replace, []

    def killed(source, target):
        calls.append(source)
        if len(calls) == 3:
            raise OSError(18, "Invalid cross-device link")
        real(source, target)

    monkeypatch.setattr(os, "replace", killed)
    assert adopt_earlier_layout(old, new, {"this"}, logged.append) == 1 and "could not move" in logged[-2]
    assert [p.name for p in list_states(new)] == ["state-00000500.pt"]  # the newest, the one a resume takes
    monkeypatch.setattr(os, "replace", real)
    assert adopt_earlier_layout(old, new, {"this"}, logged.append) == 1
    assert [p.name for p in list_states(new)] == ["state-00000500.pt", "state-00000400.pt"] and not list_states(old)


def test_an_output_folder_inside_another_project_is_refused(tmp_path, capsys):
    """A copy of a project whose output_dir points at the original's own output/: valid, all its
    outputs "current" (the original's), and check advised moving the original's runs/A into
    runs/NAME/A for it to take over."""
    original = copy_example(tmp_path / "projects", "original")
    (original / "output" / "runs" / "A").mkdir(parents=True)
    copy = project(tmp_path, "copy", "example-monochrome", original / "output")
    assert main(["check", str(copy)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"project.output_dir: {original / 'output'} is inside another project's folder ({original})" in err, err
    set_keys(copy, "project", output_dir=json.dumps(str(tmp_path / "loras")))  # a folder of its own, outside both: fine
    assert main(["check", str(copy)]) == 0
    (tmp_path / "copylora.toml").write_text("stray")  # a project file above the projects folder is no project they are in
    assert main(["check", str(copy)]) == 0


def test_the_look_and_the_claim_are_one_step(tmp_path):
    """Two projects of one name starting at once: the second waits for the first's claim and
    then sees it (the look and the write under one flock)."""
    import fcntl
    import threading

    from engine.project.output_owner import claim

    runs = tmp_path / "loras" / "runs" / "mono"
    first, second = (copy_example(tmp_path / "projects", name) for name in ("one", "two"))
    runs.mkdir(parents=True)
    with open(runs / ".project.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first project, between its look and its write
        result = []
        racer = threading.Thread(target=lambda: result.append(claim(second, "mono", runs)))
        racer.start()
        racer.join(0.3)
        assert racer.is_alive()  # waits for the lock
        (runs / "project").write_text(f"{first.resolve()}\n")  # the first one's write
    racer.join(10)
    assert result and "another project named 'mono'" in result[0]
    assert claim(first, "mono", runs) is None
