"""Issue 29, training robustness and the toy defaults: a project folder removed while its side
trains is not re-created (the weights go to the rescue folder), and a project made by `copylora
new --base toy` trains under the caption measured to show the effect (`check` warns otherwise)."""

from __future__ import annotations

import json
import shutil

import pytest

from copylora_tui.cli.main import main
from engine.project.folder import load_project, save_project
from engine.project.plan import make_plan, plan_warnings
from engine.train.controls import TrainControls
from tests.helpers import copy_example, quiet

EXAMPLE_TOY_CAPTION = "a yellow circle on a blue background"  # projects/example-toy's [train] caption


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
    from engine.train.rescue import rescue_folder

    lora = rescue_folder() / side_plan.lora_path.name
    state = rescue_folder() / f"{side_plan.lora_path.stem}-run" / f"state-{step:08d}.pt"
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
    assert f"the project folder {root} was removed while training (noticed at step 4 of 8)" in message
    assert str(rescue_folder()) in message and "runs/A" in message  # where to put the checkpoint back
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
    assert str(info.value).startswith(f"training finished (3 steps), but the project folder {root} was removed during the run")
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


# ----------------------------------------------------------------------------- `new --base toy`


def test_describe_reads_the_toy_worlds_pictures():
    import random

    from PIL import Image

    from engine.models.toy_data import Scene, describe, draw, random_scene
    from tests.helpers import REPO

    assert describe(Image.open(REPO / "projects/example-toy/a/colour.png")) == EXAMPLE_TOY_CAPTION
    rng = random.Random(5)
    scenes = [random_scene(rng) for _ in range(40)]
    for scene in (Scene(s.colour, s.shape, s.background, s.cx, s.cy, s.radius) for s in scenes):
        assert describe(draw(scene)) == scene.caption()


def test_new_on_toy_writes_the_measured_recipe(tmp_path, capsys):
    from tests.helpers import REPO

    example = REPO / "projects/example-toy"
    dest = tmp_path / "mine"
    assert main(["new", str(dest), "--a", str(example / "a/colour.png"), "--b", str(example / "b/monochrome.png"), "--base", "toy"]) == 0
    assert EXAMPLE_TOY_CAPTION in capsys.readouterr().out
    made, measured = load_project(dest), load_project(example)
    assert made.train.caption == EXAMPLE_TOY_CAPTION
    # every [train] and [sample] setting is example-toy's (the run measured in docs/BENCHMARKS.md)
    assert made.train == measured.train and made.sample == measured.sample
    assert plan_warnings(make_plan(made)) == []


def test_new_keeps_real_checkpoints_and_tiny_caption_free(tmp_path):
    from engine.models.toy import new_project_caption
    from tests.helpers import REPO

    picture = REPO / "projects/example-toy/a/colour.png"
    assert new_project_caption("tiny", picture) == "" and new_project_caption("/models/sd15.safetensors", picture) == ""
    assert new_project_caption("toy", tmp_path / "missing.png") == ""  # create_project reports the missing file
    dest = tmp_path / "t"
    assert main(["new", str(dest), "--a", str(picture), "--b", str(REPO / "projects/example-toy/b/monochrome.png")]) == 0
    assert load_project(dest).train.caption == ""


def test_check_warns_on_a_caption_free_toy_project(tmp_path, capsys):
    root = copy_example(tmp_path, "toy-bare", "example-toy")
    project = load_project(root)
    project.train.caption = ""
    save_project(project)
    assert main(["check", str(root)]) == 0
    err = capsys.readouterr().err
    assert "warning: train.caption: A and B train caption-free on the toy base" in err and "does not survive CFG" in err
    assert main(["check", str(root), "--json"]) == 0
    assert any("caption-free on the toy base" in w for w in json.loads(capsys.readouterr().out)["warnings"])


def test_check_names_the_one_side_left_caption_free(tmp_path):
    root = copy_example(tmp_path, "toy-half", "example-toy")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('folder = "b"\n', 'folder = "b"\ncaption = ""\n'))
    warnings = plan_warnings(make_plan(load_project(root)))
    assert [w.split(":")[0] for w in warnings if "toy base" in w] == ["b.caption"]


def test_check_is_quiet_for_example_toy_and_tiny(capsys):
    from tests.helpers import REPO

    for example in ("example-toy", "example-monochrome"):
        assert main(["check", str(REPO / "projects" / example)]) == 0
        assert "caption-free on the toy base" not in capsys.readouterr().err


async def test_the_apps_new_dialog_writes_the_toy_caption_too(tmp_path, monkeypatch):
    from textual.widgets import DataTable, Input

    from copylora_tui.app import CopyloraApp
    from tests.helpers import REPO
    from tests.test_app_support import make_projects, use_home, wait_until

    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.query_one("#projects", DataTable).row_count == 1)
        await pilot.press("n")
        dialog = app.screen
        for key, value in (("name", "toyish"), ("a", REPO / "projects/example-toy/a/colour.png"),
                           ("b", REPO / "projects/example-toy/b/monochrome.png"), ("base", "toy")):
            dialog.query_one(f"#new-{key}", Input).value = str(value)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: (projects / "toyish" / "copylora.toml").is_file())
    assert load_project(projects / "toyish").train.caption == EXAMPLE_TOY_CAPTION
