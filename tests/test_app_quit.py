"""ctrl+q asks before losing edits: a project form's unsaved changes, a half-filled new project form."""

from __future__ import annotations

from textual.widgets import Input

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.new_project import NewProjectScreen
from copylora_tui.screens.project import ProjectScreen
from tests.test_app_support import make_projects, notices, use_home, wait_until


async def open_project(pilot, app, folder):
    app.action_open_project(folder)
    await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen) and app.screen.query("#field-train-seed #editor"))



async def test_ctrl_q_with_unsaved_project_edits_asks_then_quits(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_project(pilot, app, folder)
        app.screen.query_one("#field-train-seed #editor", Input).value = "7"
        await wait_until(pilot, lambda: app.screen.dirty)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.return_code is None and isinstance(app.screen, ProjectScreen)  # still open: it asked
        assert any("ctrl+q again quits without saving" in n for n in notices(app))
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: app.return_code == 0)
    assert "seed = 42" in (folder / "copylora.toml").read_text()



async def test_ctrl_q_asks_again_after_a_further_edit_and_not_without_edits(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_project(pilot, app, folder)
        seed = app.screen.query_one("#field-train-seed #editor", Input)
        seed.value = "7"
        await wait_until(pilot, lambda: app.screen.dirty)
        await pilot.press("ctrl+q")
        seed.value = "8"  # edited after the warning: the next ctrl+q asks again
        await pilot.pause()
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.return_code is None
        seed.value = "42"  # back to the saved value: nothing to lose
        await wait_until(pilot, lambda: not app.screen.dirty)
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: app.return_code == 0)



async def test_ctrl_q_with_a_half_filled_new_project_form_asks(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    app = CopyloraApp(projects)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries)
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, NewProjectScreen) and app.screen.query("#new-name"))
        await pilot.press("m", "o", "n", "o")
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.return_code is None and isinstance(app.screen, NewProjectScreen)
        assert any("ctrl+s creates the project, ctrl+q again quits" in n for n in notices(app))
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: app.return_code == 0)


async def test_the_screen_keys_ask_before_leaving_unsaved_edits_too(tmp_path, monkeypatch):
    """1 and 2 pop the form like escape does; with a tick box focused (not a text field, which
    takes the digit) they left with the edits lost and no word."""
    from copylora_tui.screens.projects import ProjectsScreen
    from copylora_tui.screens.queue import QueueScreen

    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, lands_on in (("1", ProjectsScreen), ("2", QueueScreen)):
            await open_project(pilot, app, folder)
            app.screen.query_one("#field-train-seed #editor", Input).value = "7"
            await wait_until(pilot, lambda: app.screen.dirty)
            app.screen.set_focus(None)  # keys go to the screen and the app, as from a tick box
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, ProjectScreen) and app.screen.query_one("#field-train-seed #editor", Input).value == "7"
            assert any(f"{key} again leaves without saving" in n for n in notices(app))
            await pilot.press(key)
            await wait_until(pilot, lambda: isinstance(app.screen, lands_on))
        # from the palette with a text field focused, where the key would type into the field
        await open_project(pilot, app, folder)
        field = app.screen.query_one("#field-train-seed #editor", Input)
        field.value = "7"
        await wait_until(pilot, lambda: app.screen.dirty)
        field.focus()
        await pilot.pause()
        app.action_show_queue()
        await pilot.pause()
        assert any("esc leaves without saving (2 would type into the field)" in n for n in notices(app))
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen))
    assert "seed = 42" in (folder / "copylora.toml").read_text()


async def test_ctrl_c_says_how_to_quit_in_plain_text_and_ctrl_z_says_why_it_stays(tmp_path, monkeypatch):
    """Textual's ctrl+c hint is markup, and every toast here is plain: it read "Press [b]q[/b] to
    quit the app". ctrl+z stops the app only where a shell can bring it back (copylora_tui/suspend.py)."""
    import copylora_tui.suspend as suspend

    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    stops = []
    monkeypatch.setattr(app, "action_suspend_process", lambda: stops.append(1))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: "Press q to quit the app" in notices(app))
        await pilot.press("2")  # the Queue screen: q is a plain key there too
        await pilot.press("ctrl+c")
        assert not [n for n in notices(app) if "[" in n]
        monkeypatch.setattr(suspend, "shell_can_resume", lambda: False)
        await pilot.press("ctrl+z")
        await wait_until(pilot, lambda: suspend.NO_SHELL in notices(app))
        assert stops == []
        monkeypatch.setattr(suspend, "shell_can_resume", lambda: True)
        await pilot.press("ctrl+z")
        await wait_until(pilot, lambda: stops == [1])


async def test_edits_a_hangup_left_are_taken_back_when_the_project_opens_again(tmp_path, monkeypatch):
    """The SSH link drops with edits in the form: nobody can be asked, and they were lost without
    a word. They go to a draft (core/drafts.py), taken back (unsaved, and said) at the next open."""
    from copylora_tui.core.drafts import draft_path

    env = use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    toml = folder / "copylora.toml"
    original = toml.read_text()
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        app.screen.query_one("#field-train-learning_rate #editor", Input).value = "2e-3"
        app.screen.query_one("#field-train-seed #editor", Input).value = "seven"  # invalid: kept as typed
        await app.screen.build_section("a")  # a folded section's override
        await pilot.pause()
        app.screen.query_one("#field-a-max_train_steps #editor", Input).value = "150"
        await wait_until(pilot, lambda: app.screen.dirty)
        assert app.keep_unsaved_edits() == [draft_path(env.home, folder)]  # what the hangup calls
    assert toml.read_text() == original
    import os
    import time

    later = time.time() + 5
    os.utime(toml, (later, later))  # another program wrote it after the hangup
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        screen = app.screen
        await wait_until(pilot, lambda: any("took back 3 edit(s) not saved when the terminal went away" in n for n in notices(app)))
        assert any("copylora.toml has changed since (another program)" in n for n in notices(app))
        assert screen.query_one("#field-train-learning_rate #editor", Input).value == "2e-3"
        assert screen.query_one("#field-train-seed #editor", Input).value == "seven"
        assert screen.query_one("#field-a-max_train_steps #editor", Input).value == "150"
        assert screen.dirty and not draft_path(env.home, folder).exists()  # the form holds them now
        screen.query_one("#field-train-seed #editor", Input).value = "7"
        await wait_until(pilot, lambda: not screen.field_errors)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "seed = 7" in toml.read_text())
        assert "learning_rate = 0.002" in toml.read_text() and "max_train_steps = 150" in toml.read_text()
    app = CopyloraApp(folder.parent)  # nothing is taken back twice
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        await pilot.pause(0.5)
        assert not app.screen.dirty and not any("took back" in n for n in notices(app))
        assert app.keep_unsaved_edits() == []  # no edits: no draft


def test_a_damaged_or_foreign_draft_is_not_taken_back(tmp_path):
    from copylora_tui.core.drafts import draft_path, take_draft, write_draft

    folder = tmp_path / "p"
    folder.mkdir()
    path = draft_path(tmp_path, folder)
    path.parent.mkdir()
    path.write_text("{not json")
    assert take_draft(tmp_path, folder) is None and not path.exists()
    write_draft(tmp_path, folder, {"train.seed": "7"}, None, None)
    path.write_text(path.read_text().replace(str(folder), str(tmp_path / "other")))
    assert take_draft(tmp_path, folder) is None
    write_draft(tmp_path, folder, {"train.seed": "7"}, 2, (1, 2, 3))
    draft = take_draft(tmp_path, folder)
    assert (draft.fields, draft.concepts, draft.against) == ({"train.seed": "7"}, 2, (1, 2, 3)) and take_draft(tmp_path, folder) is None


def test_drafts_of_two_apps_in_one_hangup_add_up_and_old_or_deleted_ones_go(tmp_path):
    """Two sessions on one project lose their terminal together: the second draft replaced the
    first. A deleted project's draft went to a project made again at its path; old ones stayed."""
    import os
    import time

    from copylora_tui.core.drafts import KEEP_S, draft_path, drop_draft, take_draft, write_draft

    folder, other = tmp_path / "p", tmp_path / "q"
    folder.mkdir(), other.mkdir()
    write_draft(tmp_path, folder, {"project.name": "w1", "train.seed": "1"}, None, None)
    write_draft(tmp_path, folder, {"project.base_model": "w2", "train.seed": "2"}, None, None)
    assert take_draft(tmp_path, folder).fields == {"project.name": "w1", "project.base_model": "w2", "train.seed": "2"}
    write_draft(tmp_path, folder, {"train.seed": "3"}, None, None)
    drop_draft(tmp_path, folder)
    assert not draft_path(tmp_path, folder).exists()
    write_draft(tmp_path, other, {"train.seed": "4"}, None, None)
    long_ago = time.time() - KEEP_S - 60
    os.utime(draft_path(tmp_path, other), (long_ago, long_ago))
    write_draft(tmp_path, folder, {"train.seed": "5"}, None, None)  # a write clears the drafts nobody came back for
    assert not draft_path(tmp_path, other).exists() and draft_path(tmp_path, folder).exists()


async def test_a_view_only_projects_draft_is_taken_back_too(tmp_path, monkeypatch):
    """A project whose output folder cannot be written is shown view-only; the edit a hangup
    kept may be the very fix (output_dir): it stayed in its draft, unsaid."""
    import copylora_tui.core.projects as projects_module
    from copylora_tui.core.drafts import write_draft

    env = use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    monkeypatch.setattr(projects_module, "view_only_reason", lambda project: "output/ cannot be written")
    write_draft(env.home, folder, {"project.output_dir": "elsewhere"}, None, None)
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        await wait_until(pilot, lambda: app.screen.query_one("#field-project-output_dir #editor", Input).value == "elsewhere")
        assert app.screen.view_only and any("took back 1 edit(s)" in n for n in notices(app))
