"""The app crashes users hit (issue 12), each reproduced with the data that caused it.

* a finished training's artifacts hold ``steps: 5`` (an int) and a class-image job's a list:
  the Queue screen's detail line assumed every artifact was a path;
* unfolding a form section raced its fields' composition (``NoMatches: .param-error``);
* a malformed ``.stats.json`` (valid JSON, wrong shape) ended the app and the CLI.
"""

from __future__ import annotations

import json

import pytest
from textual.widgets import Collapsible, DataTable, Static

from copylora_tui.app import CopyloraApp
from copylora_tui.cli.main import main as cli
from copylora_tui.core.snapshot import QueueSnapshot
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.screens.queue import QueueScreen, job_detail
from copylora_tui.screens.stats import StatsScreen
from engine.jobs.queue import Queue, artifacts_text
from tests.test_app_support import make_projects, screen_text, use_home, wait_until, write_stats

# What the runners of engine.jobs.runner return, shape for shape.
RUNNER_ARTIFACTS = {
    "train": {"lora": "/p/out/x_A.safetensors", "state": "/p/out/runs/A/state-00000005.pt", "steps": 5},
    "merge": {"lora": "/p/out/x.safetensors", "stats": "/p/out/x.stats.json"},
    "sample": {"grid": "/p/out/samples/x-grid.png"},
    "reg": {"reg_images": ["/p/reg/class-0000.png", "/p/reg/class-0001.png"]},
}


def test_artifacts_of_every_runner_read_as_one_line():
    assert artifacts_text(RUNNER_ARTIFACTS["train"]) == "lora: x_A.safetensors, state: state-00000005.pt, steps: 5"
    assert artifacts_text(RUNNER_ARTIFACTS["reg"]) == "reg_images: 2 files"
    assert artifacts_text({"odd": {"a": 1}, "none": None, "float": 0.5}) == "odd: 1 item, none: None, float: 0.5"


async def test_queue_cursor_over_finished_jobs_of_every_kind(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    ids = []
    for kind, artifacts in RUNNER_ARTIFACTS.items():
        job = queue.enqueue(kind, str(project), side="a" if kind == "train" else None)
        queue.claim(None)
        queue.finish(job.id, "done", artifacts=artifacts)
        ids.append(job.id)
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")  # the newest job (class images) is selected on opening
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.query_one("#jobs", DataTable).row_count == 4)
        for _ in ids:
            await pilot.press("down")
        await wait_until(pilot, lambda: "steps: 5" in screen_text(app))
        assert app.is_running and app._exception is None
    for job in Queue(env.home).jobs():
        job_detail(job, QueueSnapshot(jobs=(job,), by_id={job.id: job}))  # never raises


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


MALFORMED = [
    ({"modules": [{"name": "x"}]}, "modules[0].block is missing"),
    ({"file": "x.safetensors"}, "no 'modules' list"),
    ([1, 2, 3], "JSON list"),
    ({"modules": [], "blocks": [{"block": "in1", "modules": "two"}]}, "blocks[0].modules"),
    ({"modules": [], "inputs": [{"file": 3, "ratio": 1}]}, "inputs[0].file"),
    # the LoRA Block Weight fields are optional (older files lack them), but checked where present
    ({"modules": [], "lbw_blocks": [{"block": "IN04"}]}, "lbw_blocks[0].modules is missing"),
    ({"modules": [{"name": "x", "block": "in1", "kind": "linear", "shape": [4, 4], "input_ranks": [4], "kept_rank": 4, "energy_kept": 1,
                   "rel_error": 0, "result_norm": 1, "input_norms": [1], "lbw_block": 4}]}, "modules[0].lbw_block is 4"),
    ({"modules": [], "inputs": [{"file": "B.safetensors", "ratio": 1, "lbw": [1, "x"]}]}, "inputs[0].lbw is not a list of numbers"),
]


@pytest.mark.parametrize("document,problem", MALFORMED)
def test_malformed_stats_is_one_line_in_the_cli(tmp_path, capsys, document, problem):
    path = tmp_path / "x.stats.json"
    path.write_text(json.dumps(document))
    assert cli(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert problem in err and "not a copylora statistics file" in err and "internal error" not in err


async def test_malformed_stats_is_a_message_in_the_stats_panel(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    stats = write_stats(projects / "example-monochrome" / "output" / "example-monochrome.stats.json")
    document = json.loads(stats.read_text())
    del document["modules"][2]["kind"]
    stats.write_text(json.dumps(document))
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries and app.screen.summaries[0].stats_path == stats)
        await pilot.press("s")
        assert isinstance(app.screen, StatsScreen)
        await wait_until(pilot, lambda: "modules[2].kind is missing" in " ".join(screen_text(app).split()))
        await pilot.press("s", "r", "b", "k", "v", "enter")  # the keys of an unshowable file do nothing
        assert app.is_running and app._exception is None
        await pilot.press("escape")
        assert not isinstance(app.screen, StatsScreen)


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
