"""Keys faster than screens: keys that arrive while a screen is still opening or closing (the
races the monkey test found) do nothing, and never end the app."""

from __future__ import annotations

import pytest

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.screens.queue import QueueScreen
from engine.jobs.queue import Queue
from tests.test_app_support import make_projects, use_home, wait_until

# Races the monkey test found: keys that arrive while a screen is still opening or closing.
# The first ones are the monkey's own sequences (the keys before each failure); the others say
# what went wrong in a few keys. Each burst is sent before the app handles its first key.
RACES = [
    # ScreenStackError: a second escape popped the last screen
    ['up', 'enter', 'f5', 'right', 'pageup', '1', 'pageup', 'y', 'left', 'right', 'n', 'f5', 'd', '2', 'o', 'o', 'left',
     'home', 'o', 'up', 'home', 'o', 's', 'enter', 'f5', 'down', 's', 's', 'o', 'y', '1', 'r', 'end', 'up', 'space', 'y',
     'f5', 'y', 'enter', 'n'],
    # NoMatches '#history': the monitor key asked a project screen being built for its job table
    ['escape', 'up', 'home', 's', 'b', 'shift+tab', 'left', 'space', 'r', 'up', 'home', 'enter', 'left', 'left', 'k', 'end',
     'shift+tab', '1', '2', 'tab', 'down', 'right', 'end', 'down', 'r', '2', 'end', '1', 'enter', '3', 'k', '2', 'shift+tab',
     '3', 'left', 'b', 'enter', 'enter', '3', 's'],
    # NoMatches 'HeaderTitle': Textual's Header looked up a child of a closed screen
    ['end', 'home', 'up', 'd', 'd', 'home', 'pagedown', 'end', 'escape', 'r', 'space', 'escape', 'n', 'd', 'n', 'f5', '2',
     'shift+tab', 'enter', 'd', 'right', 'space', 'escape', '2', 'n', 'right', 'down', 'home', 'left', 'r', 'escape',
     'pageup', 's', 'enter', 'pageup', 'left', 'o', 'f5', 'enter', 'tab'],
    ["2", "escape", "escape", "escape"],
    ["o", "3", "escape", "o", "escape", "o", "escape"],
    ["d", "y", "y", "n", "escape", "n", "escape", "n", "ctrl+s", "ctrl+s", "escape"],
    ["2", "m", "escape", "m", "escape", "m"],
]


@pytest.mark.parametrize("keys", RACES, ids=[" ".join(k[-6:]) for k in RACES])
async def test_keys_faster_than_screens(tmp_path, monkeypatch, keys):
    from tests.app_keys import send_keys
    from tests.test_app_support import running_job

    env = use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, ("example-monochrome", "second"))
    running_job(Queue(env.home), (projects / "example-monochrome").resolve(), step=10, total=200)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries)
        for _ in range(5):  # the same burst again from wherever it ended
            await send_keys(pilot, keys)  # all sent before the app handles the first
            assert app._exception is None and app.is_running, keys
        await pilot.pause(0.3)
        assert app._exception is None and app.is_running


async def test_a_second_back_on_a_closing_screen_does_nothing(tmp_path, monkeypatch):
    """Two escapes handled before the first pop completes: the second must not pop the
    Projects screen under it (the last screen: ScreenStackError ended the app)."""
    use_home(monkeypatch, tmp_path)
    app = CopyloraApp(make_projects(tmp_path), poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen))
        queue_screen = app.screen
        queue_screen.action_back()
        queue_screen.action_back()  # same tick: the first has not finished
        await pilot.pause(0.2)
        assert len(app.screen_stack) == 1 and app._exception is None


async def test_screens_answer_for_their_job_before_they_are_built(tmp_path, monkeypatch):
    """The monitor key (3) asks the current screen which job is selected; a project screen
    still being built has no job table yet."""
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    assert ProjectScreen(folder).selected_job_id() is None
    assert QueueScreen().selected_job_id() is None


async def test_delete_dialog_deletes_once(tmp_path, monkeypatch):
    from copylora_tui.core.projects import summarise
    from copylora_tui.screens.confirm_delete import ConfirmDeleteScreen

    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, ("example-monochrome", "second"))
    app = CopyloraApp(projects, poll_s=0.1)
    results: list = []
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries)
        dialog = ConfirmDeleteScreen(summarise((projects / "second").resolve()))
        app.push_screen(dialog, results.append)
        await wait_until(pilot, lambda: app.screen is dialog)
        dialog.action_delete()
        dialog.action_delete()  # a second "y" before the dialog has gone
        await pilot.pause(0.2)
        assert app._exception is None and results == ["deleted second"] and not (projects / "second").exists()


async def test_keys_that_reach_a_closed_screen_run_no_action(tmp_path, monkeypatch):
    """The monkey's seed 23: "o" (show the preview's path) reached a monitor that the previous
    key had closed; its preview pane was gone (NoMatches)."""
    from copylora_tui.screens.monitor import MonitorScreen
    from tests.test_app_support import running_job

    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    job = running_job(Queue(env.home), project, step=10, total=200)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_show_monitor(job.id)
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen))
        monitor = app.screen
        monitor.action_back()
        await pilot.pause(0.2)
        for action in ("open_preview", "cancel", "sample_now", "back"):
            assert await app.run_action(action, default_namespace=monitor) is False
        assert app._exception is None and len(app.screen_stack) == 1


async def test_keys_that_reach_a_screen_not_built_yet_run_no_action(tmp_path, monkeypatch):
    """The monkey's seed 23 again: "o" in the same burst as the key that opened a monitor."""
    from copylora_tui.screens.monitor import MonitorScreen
    from tests.test_app_support import running_job

    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    job = running_job(Queue(env.home), project, step=10, total=200)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries)
        monitor = MonitorScreen(job.id)
        app.push_screen(monitor)  # not awaited: the screen is current, its widgets not yet there
        assert await app.run_action("open_preview", default_namespace=monitor) is False
        await wait_until(pilot, lambda: monitor.is_mounted)
        await app.run_action("open_preview", default_namespace=monitor)  # now it acts: "no preview shown yet"
        assert app._exception is None
