"""Trained weights are never lost: a project folder removed while its side trains is not
re-created, and a final save that fails, both put the weights in the rescue folder."""

from __future__ import annotations

import shutil

import pytest

from engine.project.folder import load_project, save_project
from engine.project.plan import make_plan
from engine.train.controls import TrainControls
from tests.helpers import copy_example, needs_torch, quiet

# ----------------------------------------------------------------------------- folder removed while training


def removable_project(tmp_path, name: str, steps: int):
    """A tiny-model project (a name of its own: its rescued files are its own) that checkpoints every 2 steps."""
    root = copy_example(tmp_path, name)
    project = load_project(root)
    project.info.name = name
    project.train.max_train_steps, project.train.max_train_epochs, project.train.save_every_n_steps = steps, None, 2
    save_project(project)
    return root, make_plan(load_project(root))


def remove_at(root, step: int):
    """A progress listener that deletes the project folder once training reaches ``step``."""
    def listener(progress) -> None:
        if progress.step == step and root.exists():
            shutil.rmtree(root)
    return listener


def assert_rescued(side_plan, step: int, message: str) -> None:
    from engine.lora.files import load_lora_file
    from engine.train.checkpoint import load_latest_state
    from engine.train.rescue import rescue_target

    lora = rescue_target(side_plan.folder.parent) / side_plan.lora_path.name
    state = rescue_target(side_plan.folder.parent) / f"{side_plan.lora_path.stem}-run" / f"state-{step:08d}.pt"
    assert str(lora) in message and str(state) in message, message
    assert load_lora_file(lora).metadata["copylora_steps"] == str(step)
    assert load_latest_state(state.parent, log=quiet)["step"] == step  # a whole, resumable checkpoint
    lora.unlink()
    shutil.rmtree(state.parent)


def test_a_project_folder_removed_while_training_is_not_recreated(tmp_path, tiny, monkeypatch):
    """Found at the next checkpoint (the once-a-second look is put off here, so the step is known)."""
    pytest.importorskip("torch")
    import engine.train.rescue as rescue
    from engine.train.rescue import rescue_folder
    from engine.train.trainer import TrainingError, train

    monkeypatch.setattr(rescue, "WATCH_EVERY_S", 1e9)

    root, plan = removable_project(tmp_path, "removed-midway", steps=8)
    seen: list[int] = []
    listener = remove_at(root, 3)
    with pytest.raises(TrainingError) as info:
        train(plan, "a", model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: (seen.append(p.step), listener(p))))
    message = str(info.value)
    assert not root.exists(), "the next checkpoint re-created the removed project folder"
    assert max(seen) == 4, "training went on after the folder was found gone at the step-4 checkpoint"
    assert f"the project folder {root} was removed or moved while training (noticed at step 4 of 8)" in message
    assert str(rescue_folder(root)) in message and "runs/A" in message  # where to put the checkpoint back
    assert_rescued(plan.side("a"), 4, message)


def test_twin_training_rescues_both_sides(tmp_path, tiny, monkeypatch):
    """Found between checkpoints by the periodic look (made every step here)."""
    pytest.importorskip("torch")
    import engine.train.rescue as rescue
    from engine.train.trainer import TrainingError
    from engine.train.twin import train_twin

    monkeypatch.setattr(rescue, "WATCH_EVERY_S", 0.0)
    root, plan = removable_project(tmp_path, "removed-twin", steps=6)
    with pytest.raises(TrainingError) as info:
        train_twin(plan, model=tiny, log=quiet, controls=TrainControls(on_progress=remove_at(root, 1)))
    assert not root.exists()
    assert "(noticed at step 1 of 6)" in str(info.value)
    for side in ("a", "b"):
        assert_rescued(plan.side(side), 1, str(info.value))


def test_removed_before_the_final_save(tmp_path, tiny, monkeypatch):
    """The last step's progress comes before the final save: the LoRA must not land in a re-created folder."""
    pytest.importorskip("torch")
    import engine.train.rescue as rescue
    from engine.train.trainer import TrainingError, train

    monkeypatch.setattr(rescue, "WATCH_EVERY_S", 1e9)

    root, plan = removable_project(tmp_path, "removed-at-end", steps=3)
    with pytest.raises(TrainingError) as info:
        train(plan, "a", model=tiny, log=quiet, controls=TrainControls(on_progress=remove_at(root, 3)))
    assert not root.exists()
    assert str(info.value).startswith(f"training finished (3 steps), but the project folder {root} was removed or moved during the run")
    assert_rescued(plan.side("a"), 3, str(info.value))


def test_a_folder_the_run_creates_is_not_mistaken_for_a_removed_one(tmp_path):
    from engine.train.rescue import FolderWatch

    root = tmp_path / "p"
    root.mkdir()
    watch = FolderWatch(root, [root / "output" / "runs" / "A"])
    (root / "output" / "runs" / "A").mkdir(parents=True)
    shutil.rmtree(root / "output")  # not there at the start: removing it takes nothing from the user
    assert watch.gone(force=True) is None
    outside = tmp_path / "out"
    outside.mkdir()
    watch = FolderWatch(root, [outside / "runs"])
    outside.rmdir()
    assert watch.gone(force=True) == f"the output folder {outside}"


# ----------------------------------------------------------------------------- the final save fails


@needs_torch
def test_final_save_failure_keeps_the_trained_weights(tmp_path, monkeypatch):
    """The output folder breaks during the run (here: a folder where the LoRA goes)."""
    from engine.project.plan import make_plan
    from engine.train.rescue import rescue_target
    from engine.train.trainer import TrainingError, train

    root = copy_example(tmp_path)
    plan = make_plan(load_project(root), max_steps=2)
    plan.side("a").lora_path.mkdir(parents=True)  # os.replace onto a folder fails
    lines: list[str] = []
    with pytest.raises(TrainingError) as info:
        train(plan, "a", log=lines.append)
    message = str(info.value)
    state = plan.side("a").run_dir / "state-00000002.pt"
    rescued = rescue_target(root) / plan.side("a").lora_path.name
    assert "training finished (2 steps) but could not write" in message
    assert str(state) in message and state.is_file()
    assert str(rescued) in message and rescued.is_file()
    from engine.lora.files import load_lora_file

    assert load_lora_file(rescued).metadata["copylora_steps"] == "2"
    rescued.unlink()


def test_two_projects_of_one_name_rescue_apart_and_check_says_what_is_kept(tmp_path, monkeypatch, capsys):
    """The rescue folder held every project's files by LoRA name: a copied project (same
    [project] name) wrote over the other's rescued LoRA and pruned its checkpoint. One folder per
    project now, and `check` names it while it holds files (said once, in a job's error, before)."""
    from copylora_tui.cli.main import main
    from engine.train.rescue import rescue_folder, rescued_files

    monkeypatch.setenv("COPYLORA_CACHE", str(tmp_path / "cache"))
    one = copy_example(tmp_path / "one")
    two = copy_example(tmp_path / "two")  # the same name, another folder
    assert rescue_folder(one) != rescue_folder(two) and rescue_folder(one).parent == rescue_folder(two).parent == rescue_folder()
    assert rescue_folder(one) == rescue_folder(one / "a" / "..")  # the same folder however it is spelled
    assert rescued_files(one) == [] and main(["check", str(one)]) == 0 and "rescue" not in capsys.readouterr().err
    (rescue_folder(one) / "20261207-190301-42").mkdir(parents=True)
    (rescue_folder(one) / "20261207-190301-42" / "example-monochrome_A.safetensors").write_bytes(b"weights")
    assert main(["check", str(one)]) == 0
    err = capsys.readouterr().err
    assert f"left their weights in {rescue_folder(one)} (20261207-190301-42/: one folder per attempt)" in err, err
    assert main(["check", str(two)]) == 0 and "rescue" not in capsys.readouterr().err
