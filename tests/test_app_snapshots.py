"""Snapshots of every screen at 100×30 (and the projects screen at 80×24), from fixed data:
fixed job times, fixed file times, UTC, relative paths. Regenerate after an intended change
with ``pytest tests/test_app_snapshots.py --snapshot-update`` and look at the SVGs."""

from __future__ import annotations

import time

import pytest
from textual.widgets import Input

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.monitor import MonitorScreen
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.widgets.preview_pane import PreviewPane
from tests.test_app_support import FIXED_T, build_demo, open_stats, screen_text, use_home, wait_until, write_preview

WIDE, NARROW = (100, 30), (80, 24)


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """The demo folder and queue, a worker that 'runs' (pid 4242), UTC, cwd = tmp."""
    use_home(monkeypatch, tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    build_demo(tmp_path)
    monkeypatch.setattr("copylora_tui.core.snapshot.worker_pid", lambda home: 4242)
    app = CopyloraApp("projects", poll_s=0.2)
    app.clock = lambda: FIXED_T + 6 * 600 + 125  # the running job (#6) has run for 2 minutes
    yield app
    monkeypatch.delenv("TZ")
    time.tzset()


@pytest.fixture
def previews(demo, tmp_path):
    """The demo with example-monochrome's previews: A at steps 100 and 200, then the grid."""
    folder = tmp_path / "projects" / "example-monochrome" / "output" / "samples"
    # written while the demo's training runs (its job made at FIXED_T + id·600: engine.core.previews
    # shows a job only what was written while it ran)
    for step in (100, 200):
        write_preview(folder / f"example-monochrome_A-step{step:06d}.png", strengths=(1.0,), step=step, side="a", mtime=FIXED_T + 9000 + step)
    write_preview(folder / "example-monochrome-grid.png", mtime=FIXED_T + 9300)
    return demo


def preview_shown(pilot, pane_id: str, name: str) -> bool:
    panes = pilot.app.screen.query(f"#{pane_id}")
    return bool(panes) and panes.first(PreviewPane).shown is not None and panes.first(PreviewPane).shown.name == name


def jobs_shown(pilot) -> bool:
    """The project's jobs are in its table (below the fold at 100×30)."""
    return pilot.app.screen.query_one("#history").row_count == 3


def projects_ready(pilot):
    return wait_until(pilot, lambda: pilot.app.screen.summaries and "4242" in screen_text(pilot.app) and "q Quit" in screen_text(pilot.app))


def test_projects_wide(snap_compare, demo):
    assert snap_compare(demo, terminal_size=WIDE, run_before=projects_ready)


def test_projects_narrow(snap_compare, demo):
    assert snap_compare(demo, terminal_size=NARROW, run_before=projects_ready)


def test_projects_empty(snap_compare, tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    app = CopyloraApp("projects")
    assert snap_compare(app, terminal_size=NARROW, run_before=lambda pilot: wait_until(pilot, lambda: "copylora new" in screen_text(pilot.app)))


def test_new_project_with_an_error(snap_compare, demo, tmp_path):
    async def run_before(pilot):
        await projects_ready(pilot)
        await pilot.press("n")
        pilot.app.screen.query_one("#new-name", Input).value = "mono"
        pilot.app.screen.query_one("#new-a", Input).value = "pics/colour.png"
        pilot.app.screen.query_one("#new-b", Input).value = "pics/grey.png"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "no such file" in screen_text(pilot.app))

    assert snap_compare(demo, terminal_size=WIDE, run_before=run_before)


def test_delete_dialog(snap_compare, demo):
    async def run_before(pilot):
        await projects_ready(pilot)
        await pilot.press("down", "d")  # day-night: trained and merged, so output/ is at stake
        await wait_until(pilot, lambda: "Delete project day-night?" in screen_text(pilot.app))

    assert snap_compare(demo, terminal_size=WIDE, run_before=run_before)


def test_project_form_with_an_invalid_field(snap_compare, demo):
    async def run_before(pilot):
        await projects_ready(pilot)
        await pilot.press("down", "down", "o")  # example-monochrome, training
        selector = "#field-train-network_dim #editor"  # mounted, not only built
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ProjectScreen) and pilot.app.screen.query(selector))
        field = pilot.app.screen.query_one(selector, Input)
        field.cursor_blink = False  # its cursor shown for good: a loaded machine took the picture mid-blink
        field.focus()
        field.value = "0"
        await wait_until(pilot, lambda: "must be greater than 0" in screen_text(pilot.app) and jobs_shown(pilot)
                         and "no preview yet" in screen_text(pilot.app))

    assert snap_compare(demo, terminal_size=WIDE, run_before=run_before)


def test_project_with_a_preview(snap_compare, previews):
    async def run_before(pilot):
        await projects_ready(pilot)
        await pilot.press("down", "down", "o")  # example-monochrome: the newest preview is the grid
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ProjectScreen) and pilot.app.screen.fields
                         and preview_shown(pilot, "project-preview", "example-monochrome-grid.png") and jobs_shown(pilot))
        await pilot.pause(0.2)

    assert snap_compare(previews, terminal_size=WIDE, run_before=run_before)


def test_queue(snap_compare, demo):
    async def run_before(pilot):
        await projects_ready(pilot)
        await pilot.press("2")
        await wait_until(pilot, lambda: "1800/4000" in screen_text(pilot.app) and "m Monitor" in screen_text(pilot.app))

    assert snap_compare(demo, terminal_size=WIDE, run_before=run_before)


def test_queue_failed_job_selected(snap_compare, demo):
    async def run_before(pilot):
        await projects_ready(pilot)
        await pilot.press("2", "down", "down", "down", "down", "down")
        await wait_until(pilot, lambda: "loss became nan" in screen_text(pilot.app))

    assert snap_compare(demo, terminal_size=WIDE, run_before=run_before)


def test_monitor_running_job(snap_compare, demo):
    async def run_before(pilot):
        await projects_ready(pilot)
        await pilot.press("3")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen)
                         and len(pilot.app.screen.query_one("#loss-curve").values) >= 400
                         and pilot.app.screen.query_one("#log").line_count >= 40 and "ETA 02:56" in screen_text(pilot.app)
                         and "no preview yet" in screen_text(pilot.app))

    assert snap_compare(demo, terminal_size=WIDE, run_before=run_before)


def test_monitor_with_a_preview(snap_compare, previews):
    async def run_before(pilot):
        await projects_ready(pilot)
        await pilot.press("3")  # train A: its newest step preview, not the grid
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen)
                         and len(pilot.app.screen.query_one("#loss-curve").values) >= 400
                         and pilot.app.screen.query_one("#log").line_count >= 40 and "ETA 02:56" in screen_text(pilot.app)
                         and preview_shown(pilot, "monitor-preview", "example-monochrome_A-step000200.png"))
        await pilot.pause(0.2)

    assert snap_compare(previews, terminal_size=WIDE, run_before=run_before)


def test_stats(snap_compare, demo):
    assert snap_compare(demo, terminal_size=WIDE, run_before=lambda pilot: open_stats(pilot, projects_ready))
