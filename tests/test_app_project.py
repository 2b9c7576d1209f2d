"""The Project screen: the form validates as you type with the CLI's validator, an invalid
project is never saved, a valid one is, and the plan follows the parameters."""

from __future__ import annotations

import pytest
from textual.widgets import Collapsible, Input, Static

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.widgets.param_field import TickBox
from engine.project.folder import load_project
from tests.test_app_support import make_projects, notices, plan_text, screen_text, use_home, wait_until


def plan_steps(app, side: str) -> str:
    """The steps of ``side`` in the project screen's plan."""
    import re

    found = re.search(rf"^{side}\s+(\d+) steps", plan_text(app), re.M)
    return found.group(1) if found else ""


def editor(app, path: str) -> Input:
    section, key = path.split(".")
    return app.screen.query_one(f"#field-{section}-{key} #editor")


def field_error(app, path: str) -> str:
    section, key = path.split(".")
    return str(app.screen.query_one(f"#field-{section}-{key} .param-error", Static).render())


async def open_project(pilot, app, folder):
    app.action_open_project(folder)
    # The sections unfolded on opening ([project] and [train]) are built, and mounted.
    await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen) and "train.max_train_steps" in app.screen.fields
                     and app.screen.query("#field-train-max_train_steps #editor"))


async def test_invalid_value_is_shown_and_never_saved_then_valid_one_is(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    toml = folder / "copylora.toml"
    original = toml.read_text()
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        dim = editor(app, "train.network_dim")
        dim.focus()
        dim.value = "0"
        await wait_until(pilot, lambda: "must be greater than 0" in field_error(app, "train.network_dim"))
        assert "train.network_dim: LoRA rank" in str(app.screen.query_one("#field-help", Static).render())
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert toml.read_text() == original  # refused while invalid
        assert "not saved" in str(app.screen.query_one("#project-status", Static).render())
        dim.value = "eight"
        # Waited for, not one pause: under a loaded CI machine the form's check can land a frame later.
        await wait_until(pilot, lambda: "not a value" in field_error(app, "train.network_dim"))
        dim.value = "8"  # back to the saved value: valid, nothing to save
        await wait_until(pilot, lambda: field_error(app, "train.network_dim") == "")
        assert not app.screen.dirty
        dim.value = "4"
        await wait_until(pilot, lambda: "unsaved" in str(app.screen.query_one("#project-status", Static).render()))
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "network_dim = 4" in toml.read_text())
        assert load_project(folder).train.network_dim == 4
        await wait_until(pilot, lambda: "saved, valid" in str(app.screen.query_one("#project-status", Static).render()))


def status(app) -> str:
    return str(app.screen.query_one("#project-status", Static).render())


async def test_saving_over_a_file_another_program_changed_asks_first(tmp_path, monkeypatch):
    """copylora.toml edited in vim (or by `import-kohya --into`) while the form is open: ctrl+s
    wrote the form over it, that edit lost without a word. Now the first ctrl+s only warns and
    the second overwrites; a save of the app's own writing never asks."""
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    toml = folder / "copylora.toml"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        outside = toml.read_text().replace("seed = 42", "seed = 7")
        assert outside != toml.read_text()
        toml.write_text(outside)  # another program, after the form was read
        # said where the form says its state, within a disk check (it said "✓ saved, valid" until ctrl+s)
        await wait_until(pilot, lambda: "copylora.toml changed on disk since it was read here" in status(app))
        editor(app, "train.network_dim").value = "4"
        await wait_until(pilot, lambda: app.screen.dirty)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: any("changed on disk since it was read here" in n for n in notices(app)))
        # which keys the overwrite would put back (a seed changed in vim went back to 42 unsaid)
        assert any("(train.seed 42 → 7): ctrl+s again overwrites it" in n for n in notices(app)), notices(app)
        assert toml.read_text() == outside  # not overwritten
        await pilot.press("ctrl+s")  # asked, answered: the form wins
        await wait_until(pilot, lambda: "network_dim = 4" in toml.read_text())
        assert "seed = 42" in toml.read_text()
        await wait_until(pilot, lambda: "saved, valid" in status(app))
        await pilot.pause(2.5)  # a disk check after the save: the file is the form's own now
        assert "saved, valid" in status(app)
        # a check that read the file before that save answers after it: the version it saw is
        # the one the save replaced, not another program's
        screen = app.screen
        screen.post_message(screen.DiskVersion(("before the save",), screen._saves - 1))
        await pilot.pause(0.3)
        assert "saved, valid" in status(app) and not screen.changed_on_disk
        app.clear_notifications()
        editor(app, "train.network_dim").value = "8"  # the app's own file: saved at once, nothing asked
        await wait_until(pilot, lambda: app.screen.dirty)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "network_dim = 8" in toml.read_text())
        assert not any("changed on disk" in n for n in notices(app))


async def test_cross_key_problem_is_shown_and_blocks_saving(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    toml = folder / "copylora.toml"
    original = toml.read_text()
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        app.screen.query_one("#section-b").collapsed = False  # folded sections are built when unfolded
        await wait_until(pilot, lambda: app.screen.query("#field-b-folder #editor"))
        editor(app, "b.folder").value = "a"  # B's pictures A's: a problem of two keys
        await wait_until(pilot, lambda: "A and B use the same folder" in field_error(app, "b.folder"))
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert toml.read_text() == original
        editor(app, "b.folder").value = "b"
        # steps typed while epochs are set: the epochs go ("not both" it said, to clear by hand)
        editor(app, "train.max_train_steps").value = "100"
        await wait_until(pilot, lambda: plan_steps(app, "A") == "100" and editor(app, "train.max_train_epochs").value == "")
        assert any("max_train_epochs cleared" in n for n in notices(app)) and "not both" not in screen_text(app)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "max_train_steps = 100" in toml.read_text())


async def test_side_override_and_bad_folder(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        for side in ("a", "b"):  # folded sections are built when unfolded
            app.screen.query_one(f"#section-{side}").collapsed = False
        # In the dict once built, on screen once mounted: the edits below need the latter.
        await wait_until(pilot, lambda: app.screen.query("#field-a-network_dim #editor") and app.screen.query("#field-b-folder #editor"))
        editor(app, "b.folder").value = "nowhere"
        await wait_until(pilot, lambda: "folder not found" in field_error(app, "b.folder"))
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert load_project(folder).b.folder == "b"
        editor(app, "b.folder").value = "b"
        editor(app, "a.network_dim").value = "4"
        await wait_until(pilot, lambda: field_error(app, "b.folder") == "")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: load_project(folder).a.overrides == {"network_dim": 4})


async def test_unsaved_changes_need_a_second_escape_and_run_needs_a_save(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        editor(app, "train.seed").value = "7"
        await pilot.pause()
        await pilot.press("ctrl+r")
        await pilot.pause(0.3)
        assert env.worker_calls == []  # not run: the edit is not saved
        await pilot.press("escape")
        assert isinstance(app.screen, ProjectScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, ProjectScreen)
        assert "seed = 42" in (folder / "copylora.toml").read_text()


async def test_run_refuses_a_file_changed_on_disk_since_it_was_read(tmp_path, monkeypatch):
    """The form said network_dim 8 (and "copylora.toml changed on disk"), the file 4: ctrl+r
    queued the file's rank 4 and said only "queued". It refuses, saying why; nothing is queued."""
    from engine.jobs.queue import Queue

    env = use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    toml = folder / "copylora.toml"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        edited = folder / "copylora.toml.new"  # as vim writes it: a new file renamed over
        edited.write_text(toml.read_text().replace("network_dim = 8", "network_dim = 4"))
        edited.rename(toml)
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: any("changed on disk since it was read here: run queues what the file says" in n
                                            for n in notices(app)))
        await pilot.pause(0.3)
        assert env.worker_calls == [] and Queue(env.home).jobs() == []


async def test_a_save_while_the_projects_training_runs_says_it_trains_the_old_settings(tmp_path, monkeypatch):
    """The app's save during a training said only "saved": the running job went on with the
    settings it started with, and the merge queued after it was made of them. It says so now
    (as `copylora run` does), for a training of this project only."""
    from engine.jobs.queue import Queue

    env = use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, ("example-monochrome", "other"))
    folder = projects / "example-monochrome"
    queue = Queue(env.home)
    for where in (folder, projects / "other"):
        job = queue.enqueue("train", str(where), side="ab", label="train A+B", total=200)
        queue.claim(None)
        queue.note_params(job.id, fingerprints={"a": "as it started", "b": "as it started"})
    from engine.project.plan import make_plan
    from engine.project.provenance import training_fingerprint

    edited = folder / "copylora.toml"
    saved = edited.read_text()
    edited.write_text(saved.replace("seed = 42", "seed = 7"))  # what the save below will make: a training of it is current
    current = training_fingerprint(make_plan(load_project(folder)), "a")
    edited.write_text(saved)
    job = queue.enqueue("train", str(folder), side="a", label="train A", total=200)
    queue.claim(None)
    queue.note_params(job.id, fingerprints={"a": current})
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        await wait_until(pilot, lambda: len(app.snapshot.jobs) == 3)
        editor(app, "train.seed").value = "7"
        await wait_until(pilot, lambda: app.screen.dirty)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: any("#1 train A+B trains the settings from before this save" in n for n in notices(app)))
        await pilot.pause(0.5)
        assert not any(n.startswith(("#2 ", "#3 ")) for n in notices(app)), notices(app)


async def test_a_project_folder_moved_away_while_open_is_said_and_nothing_is_written(tmp_path, monkeypatch):
    """`mv p1 p1-renamed` with p1 open: the status said "✗ 2 problems: not saved / a.folder:
    folder not found" (nothing was unsaved) and the outputs line kept its ✓s; a save would have
    made a new p1/ holding copylora.toml alone. It says the folder is gone, refuses save and run,
    keeps the edits, and comes back when the folder does."""
    env = use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        editor(app, "train.seed").value = "7"
        await wait_until(pilot, lambda: app.screen.dirty)
        moved = folder.with_name("renamed")
        folder.rename(moved)
        await wait_until(pilot, lambda: "the project folder" in status(app) and "is gone" in status(app))
        assert "edits are kept" in status(app)
        assert "not known" in str(app.screen.query_one("#project-outputs", Static).content)
        for key in ("ctrl+s", "ctrl+r"):
            app.clear_notifications()
            await pilot.press(key)
            await wait_until(pilot, lambda: any("is gone (moved, renamed or removed?)" in n for n in notices(app)))
        assert not folder.exists() and env.worker_calls == []
        moved.rename(folder)
        await wait_until(pilot, lambda: "is gone" not in status(app) and "unsaved changes" in status(app))
        assert editor(app, "train.seed").value == "7"


async def test_a_project_that_does_not_load_shows_its_problems(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    toml = folder / "copylora.toml"
    toml.write_text(toml.read_text().replace("network_dim = 8", "network_dim = 0"))
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_open_project(folder)
        await wait_until(pilot, lambda: "train.network_dim: must be greater than 0" in screen_text(app))
        await pilot.press("ctrl+s")
        assert toml.read_text().count("network_dim = 0") == 1


async def test_a_project_whose_picture_does_not_read_says_to_fix_the_picture(tmp_path, monkeypatch):
    """A truncated teacher picture: the app said 'copylora.toml cannot be loaded: fix it in an
    editor', where nothing in the file is wrong."""
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    picture = folder / "a" / "colour.png"
    picture.write_bytes(picture.read_bytes()[:200])
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_open_project(folder)
        await wait_until(pilot, lambda: "a.folder colour.png: corrupt image" in screen_text(app))
        said = str(app.screen.query_one("#load-problems", Static).render())
        assert "example-monochrome cannot be loaded: replace or remove the pictures named below" in said
        assert "fix it in an editor" not in said and "fix copylora.toml" not in said


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # textual-image's use of a Pillow API
async def test_teacher_pictures_drawn_with_textual_image_or_text(tmp_path, monkeypatch):
    from copylora_tui import teacher_images

    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    monkeypatch.setenv("COPYLORA_IMAGES", "1")
    monkeypatch.setattr(teacher_images, "_loader", None)
    monkeypatch.setattr(teacher_images, "_image_class", None)
    assert teacher_images.preload()
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        await wait_until(pilot, lambda: len(app.screen.query(".teacher-image")) == 2)
        assert "A: a/colour.png  128×192" in screen_text(app)

    def broken(*args, **kwargs):
        raise RuntimeError("cannot draw here")

    monkeypatch.setattr(teacher_images, "_image_class", broken)  # rendering fails: text only
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        await wait_until(pilot, lambda: "B: b/monochrome.png  128×192" in screen_text(app))
        assert len(app.screen.query(".teacher-image")) == 0


async def test_unticked_box_reads_empty(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_open_project(folder)
        # The fields dict fills while the screen composes, before the widgets are mounted:
        # wait for the box itself, or the query can run between the two (seen once in CI).
        selector = "#field-train-gradient_checkpointing TickBox"
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen) and bool(app.screen.query(selector)))
        box = app.screen.query_one(selector, TickBox)
        assert box.value is False and str(box._button) == "▐ ▌"
        box.toggle()
        await pilot.pause()
        assert str(box._button) == "▐X▌" and str(box.label) == "true"


async def test_unfolded_section_shows_problems_before_its_fields_compose(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_open_project(folder)
        # the form is read in a thread, then mounted: wait for its folded sections
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen) and app.screen.query("#section-sample"))
        await pilot.pause(0.5)
        screen = app.screen
        from engine.errors import Problem

        problems = [Problem("sample.prompts", "must not be empty")]
        # The screen re-checks the whole project a moment after fields change (new fields do):
        # that check must find the same problem, or it would clear the one injected here.
        from copylora_tui.core import form

        monkeypatch.setattr(form, "validate", lambda candidate: (None, problems))
        # The race, made certain: the problems arrive in the same tick as the new fields.
        screen.project_problems = problems
        screen.build_section("sample")
        screen.show_project_problems(problems)
        await pilot.pause()
        error = screen.query_one("#field-sample-prompts .param-error", Static)
        assert "must not be empty" in str(error.render()) and error.display
        # and the way a user does it: enter on the folded [reg]-less sections' titles
        for section in ("a", "b"):
            screen.query_one(f"#section-{section} CollapsibleTitle").focus()
            await pilot.press("enter")
            await wait_until(pilot, lambda: not screen.query_one(f"#section-{section}", Collapsible).collapsed)
        assert app._exception is None


async def test_saving_over_a_read_only_project_file_keeps_the_edits_and_the_app(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    toml = folder / "copylora.toml"
    original = toml.read_text()
    toml.chmod(0o444)
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        dim = editor(app, "train.network_dim")
        dim.focus()
        dim.value = "4"
        await wait_until(pilot, lambda: app.screen.dirty)
        await pilot.press("ctrl+s")  # a PermissionError here used to end the app, edits and all
        await wait_until(pilot, lambda: any("not saved" in str(n.message) and "read-only" in str(n.message) for n in app._notifications))
        assert app.is_running and app.screen.dirty and dim.value == "4"
        assert toml.read_text() == original


async def test_a_plan_that_fails_unforeseen_is_said_and_the_form_still_opens(tmp_path, monkeypatch):
    import copylora_tui.screens.project as project_screen

    def odd_metadata(_project):  # as a merged LoRA whose copylora_merge inputs are not tables did
        raise AttributeError("'int' object has no attribute 'get'")

    monkeypatch.setattr(project_screen, "_plan_and_outputs", odd_metadata)
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)  # stayed on "reading copylora.toml …" for good
        await wait_until(pilot, lambda: "no plan: AttributeError" in plan_text(app))


async def test_a_check_that_fails_unforeseen_is_said_in_the_status(tmp_path, monkeypatch):
    """The form checks each edit in a thread; an error no validator foresaw (an OS error, a bug)
    ended that thread silently, and the form waited for a check that never came."""
    from copylora_tui.core import form

    def unforeseen(_project, **_options):
        raise OSError(13, "Permission denied", "/mnt/dead/models")

    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        monkeypatch.setattr(form, "validate", unforeseen)
        editor(app, "train.network_dim").value = "4"
        status = lambda: str(app.screen.query_one("#project-status", Static).render())  # noqa: E731
        await wait_until(pilot, lambda: "could not check the project: /mnt/dead/models: Permission denied" in status())
        assert isinstance(app.screen, ProjectScreen)


async def test_a_value_with_brackets_is_repeated_in_its_error_as_typed(tmp_path, monkeypatch):
    """A problem repeats the value (a folder "x[/]y" is "folder not found: …/x[/]y"); as markup
    its "[/]" ended the app with a MarkupError, two keys from the form."""
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        app.screen.query_one("#section-a").collapsed = False
        await wait_until(pilot, lambda: app.screen.query("#field-a-folder #editor"))
        editor(app, "a.folder").value = "x[/]y [train]"
        await wait_until(pilot, lambda: "x[/]y [train]" in field_error(app, "a.folder"))
        await pilot.pause()
        assert "folder not found" in field_error(app, "a.folder")


async def test_outputs_changed_by_another_program_are_read_again(tmp_path, monkeypatch):
    """The outputs line kept "merged✓" for a merged LoRA removed from outside (`rm`, a job, `copylora
    sample`), until the project was opened again: a change in the output folders is read again."""
    import copylora_tui.screens.project as screen_module
    from tests.test_app_support import mark_trained, write_merged

    use_home(monkeypatch, tmp_path)
    monkeypatch.setattr(screen_module, "DISK_CHECK_S", 0.1)
    monkeypatch.setattr(screen_module, "OUTPUTS_RECHECK_S", 0.0)
    folder = make_projects(tmp_path) / "example-monochrome"
    mark_trained(folder)
    write_merged(folder)
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        outputs = app.screen.query_one("#project-outputs", Static)
        await wait_until(pilot, lambda: "merged✓" in str(outputs.content))
        (folder / "output" / "example-monochrome.safetensors").unlink()
        await wait_until(pilot, lambda: "merged·" in str(outputs.content))


async def test_warm_up_steps_with_the_constant_schedule_are_warned_of_and_saved(tmp_path, monkeypatch):
    """Warm-up steps under the constant schedule do nothing: the form says so as you type (in
    the plan's warnings) and saves them all the same (a refusal broke projects saved so)."""
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    toml = folder / "copylora.toml"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_project(pilot, app, folder)
        warmup = editor(app, "train.lr_warmup_steps")
        warmup.focus()
        warmup.value = "50"
        await wait_until(pilot, lambda: "warm-up steps do nothing" in plan_text(app))
        assert field_error(app, "train.lr_warmup_steps") == ""
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "lr_warmup_steps = 50" in toml.read_text())
        assert load_project(folder).train.lr_warmup_steps == 50


async def test_max_token_length_in_the_form_refuses_other_values_and_saves_kohyas(tmp_path, monkeypatch):
    """The new [train] key as a user types it: 300 is refused at the field (nothing written),
    225 is saved."""
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    toml = folder / "copylora.toml"
    before = toml.read_text()
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_project(pilot, app, folder)
        field = editor(app, "train.max_token_length")
        field.focus()
        field.value = "300"
        await wait_until(pilot, lambda: "must be 75, 150 or 225" in field_error(app, "train.max_token_length"))
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert toml.read_text() == before
        field.value = "225"
        await wait_until(pilot, lambda: field_error(app, "train.max_token_length") == "")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "max_token_length = 225" in toml.read_text())
    assert load_project(folder).train.max_token_length == 225


async def test_a_value_written_another_way_is_saved_once_not_unsaved_for_good(tmp_path, monkeypatch):
    """"1e-4" for the learning rate, "2.0" for a rank: the file writes 0.0001 and 2, and the form
    compared its text with those, so it said "unsaved changes" after the save, and esc asked again."""
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    toml = folder / "copylora.toml"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        editor(app, "train.learning_rate").value = "3e-4"
        editor(app, "train.network_dim").value = "4.0"
        await wait_until(pilot, lambda: "unsaved" in status(app))
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "network_dim = 4" in toml.read_text() and "0.0003" in toml.read_text())
        await wait_until(pilot, lambda: "saved, valid" in status(app))
        assert not app.screen.dirty
        assert editor(app, "train.learning_rate").value == "3e-4"  # left as typed
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ProjectScreen))


async def test_keys_typed_ahead_of_a_tab_go_to_the_next_field(tmp_path, monkeypatch):
    """Over SSH a lag spike delivers "tab Q" at once: Q went into the field being left (the name)."""
    from tests.test_app_support import burst

    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        name = editor(app, "project.name")
        name.focus()
        await pilot.pause()
        burst(app, "\tQ")
        await wait_until(pilot, lambda: "Q" in editor(app, "project.base_model").value)
        assert name.value == "example-monochrome"
        burst(app, "\tR")
        # shift+tab back, then typed: still in order
        from textual import events

        app.post_message(events.Key("shift+tab", None))
        app.post_message(events.Key("S", "S"))
        await wait_until(pilot, lambda: "S" in editor(app, "project.base_model").value)
        assert name.value == "example-monochrome"


def test_the_picture_list_says_how_many_more_a_side_has(tmp_path, monkeypatch):
    """Two captions a side are shown: a side of four said nothing of the other two."""
    import shutil

    from copylora_tui.screens.project import picture_list

    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    for n in range(3):
        shutil.copy(folder / "a" / "colour.png", folder / "a" / f"more{n}.png")
    captions = [caption for caption, _path in picture_list(load_project(folder))]
    assert captions == ["A: a/colour.png  128×192", "A: a/more0.png  128×192  (+2 more)", "B: b/monochrome.png  128×192"]
