"""Every screen, driven with every one of its bindings, over the state real runs leave behind
(``tests/real_runs.py``: finished, failed, cancelled, paused, interrupted and running jobs of
every kind, with their real artifacts), at 100×30 and 80×24.

A test fails on any exception in the app (Textual re-raises it when ``run_test`` ends; each
step also checks, so the failure names the key that caused it).
"""

from __future__ import annotations

import pytest
from textual.widgets import Collapsible, DataTable, Static

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.monitor import MonitorScreen
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.screens.projects import ProjectsScreen
from copylora_tui.screens.queue import QueueScreen
from copylora_tui.screens.stats import StatsScreen
from tests.app_keys import send_keys
from tests.test_app_support import plan_text, screen_text, wait_until

SIZES = [(100, 30), (80, 24)]


class Driver:
    """Presses keys and says which one broke the app."""

    def __init__(self, pilot) -> None:
        self.pilot = pilot
        self.app = pilot.app
        self.trail: list[str] = []

    async def press(self, *keys: str) -> None:
        for key in keys:
            self.trail.append(f"{type(self.app.screen).__name__}:{key}")
            await send_keys(self.pilot, [key])
            self.alive()

    def alive(self) -> None:
        if self.app._exception is not None or not self.app.is_running:
            raise AssertionError(f"the app ended after {self.trail[-8:]}: {self.app._exception!r}")

    async def back_to(self, screen_type, key: str = "escape") -> None:
        for _ in range(4):
            if isinstance(self.app.screen, screen_type):
                return
            await self.press(key)
        assert isinstance(self.app.screen, screen_type), f"stuck on {self.app.screen} after {self.trail[-8:]}"


def rows(app, table_id: str) -> int:
    return app.screen.query_one(table_id, DataTable).row_count


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_every_screen_and_binding_over_real_runs(real_runs, size):
    app = CopyloraApp(real_runs, poll_s=0.2)
    async with app.run_test(size=size) as pilot:
        drive = Driver(pilot)
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and app.screen.summaries, timeout=20)
        names = [s.folder.name for s in app.screen.summaries]
        assert len(names) == 8

        # ---- Projects: every row with the keys that depend on the project, the dialogs once
        for index, name in enumerate(names):
            app.screen.query_one("#projects", DataTable).move_cursor(row=index)
            await drive.press("s")  # stats, or a message saying there are none yet
            if isinstance(app.screen, StatsScreen):
                await drive.press("s", "r", "b", "k", "enter", "down", "enter")
                await drive.back_to(ProjectsScreen)
            await drive.press("o")  # open it
            if isinstance(app.screen, ProjectScreen):
                await project_bindings(drive)
            await drive.back_to(ProjectsScreen)
        await drive.press("d")  # the delete dialog: toggle "also output/", then keep the project
        await drive.press("o", "n")
        await drive.back_to(ProjectsScreen)
        await drive.press("n", "ctrl+s", "escape", "f5")  # the new-project dialog: create with nothing filled in
        app.screen.query_one("#projects", DataTable).move_cursor(row=names.index("invalid"))
        await drive.press("d", "y")  # delete a project for real
        await wait_until(pilot, lambda: not (real_runs / "invalid").exists())
        await wait_until(pilot, lambda: len(app.screen.summaries) == 7)
        names = [s.folder.name for s in app.screen.summaries]
        app.screen.query_one("#projects", DataTable).move_cursor(row=names.index("mono"))
        await drive.press("r")  # run: queue what is missing (the worker start is recorded, not done)

        # ---- Queue: every row highlighted (the crash of issue 12), the keys on one job of
        # each kind and state, and the monitor of each
        await drive.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and rows(app, "#jobs") > 20)
        jobs = list(app.snapshot.jobs)
        shown = set()
        for _ in range(len(jobs)):
            await drive.press("down")
        for job in jobs:
            kind = (job.kind, job.shown_status)
            if kind in shown:
                continue
            shown.add(kind)
            table = app.screen.query_one("#jobs", DataTable)
            order = [j.id for j in app.snapshot.jobs]
            if job.id not in order:
                continue
            table.move_cursor(row=order.index(job.id))
            await drive.press("m")
            if isinstance(app.screen, MonitorScreen):
                await drive.press("o", "s", "v", "3", "p", "r", "c")
                await drive.back_to(QueueScreen)
            await drive.press("K", "J", "p", "r", "c", "w", "enter")
            await drive.back_to(QueueScreen)
        assert ("reg", "done") in shown and ("train", "interrupted") in shown and ("train", "cancelled") in shown

        # ---- the global keys from every screen, and the palette
        await drive.press("3")
        assert isinstance(app.screen, MonitorScreen)
        await drive.press("1", "3", "2", "1", "ctrl+p")
        await drive.press("escape")
        await drive.back_to(ProjectsScreen)
        await pilot.press("q")  # quits: the app ends cleanly
    assert app.return_code == 0


async def project_bindings(drive: Driver) -> None:
    app = drive.app
    await wait_until(drive.pilot, lambda: isinstance(app.screen, ProjectScreen))
    for collapsible in list(app.screen.query(Collapsible)):
        collapsible.collapsed = False
    await drive.pilot.pause()
    drive.alive()
    await drive.press("tab", "tab", "ctrl+s", "ctrl+o", "ctrl+r", "ctrl+t")
    if isinstance(app.screen, StatsScreen):
        await drive.press("escape")
    await drive.press("escape", "escape")  # unsaved-change guard, then leave


async def test_panels_of_damaged_files_say_so(real_runs):
    """A truncated preview and a stats file that is not one: the panel says it, the app goes on."""
    app = CopyloraApp(real_runs, poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and app.screen.summaries, timeout=20)
        names = [s.folder.name for s in app.screen.summaries]
        app.screen.query_one("#projects", DataTable).move_cursor(row=names.index("damaged"))
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, StatsScreen) and "not a copylora statistics file" in screen_text(app))
        await pilot.press("escape", "o")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen)
                         and "cannot be read" in str(app.screen.query_one("#preview-caption").render()))
        assert app._exception is None


async def test_interrupted_and_resumable_states_of_real_runs(real_runs):
    app = CopyloraApp(real_runs, poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and app.screen.summaries, timeout=20)
        stopped = next(s for s in app.screen.summaries if s.folder.name == "stopped")
        assert stopped.sides["a"].reason.startswith("step ") and "resumable" in stopped.sides["a"].reason
        await wait_until(pilot, lambda: "interrupted" in screen_text(app))
        queue_text = ""
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen))
        queue_text = rows_text(app)  # every row: more jobs than a 30-line terminal shows
        assert "class images" in queue_text and "cancelled" in queue_text and "paused" in queue_text


def rows_text(app) -> str:
    """The queue table's cells, row by row (rows scrolled out of view included)."""
    from copylora_tui.widgets.job_table import JobTable

    table = app.screen.query_one(JobTable)
    return "\n".join(" ".join(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count))


async def test_a_differential_project_shows_its_route(real_runs):
    """The differential route's finished run: the list says "result", the project its route,
    the queue B's job trained on A and the result job."""
    app = CopyloraApp(real_runs, poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and app.screen.summaries, timeout=20)
        summary = next(s for s in app.screen.summaries if s.folder.name == "differential")
        # (the sides trained 4 of the plan's 200 steps: "resumable", as --max-steps leaves them; the
        # result made of them is stale until they are trained on and it is made again)
        assert summary.method == "differential" and summary.merge.state == "stale", summary
        assert all(state.state == "resumable" for state in summary.sides.values()), summary.sides
        # The summaries are read before the table is drawn from them: wait for the drawing, not
        # only the data (under load the screen was captured in between; CI saw it fail so).
        await wait_until(pilot, lambda: any(line.split()[:5] == ["differential", "tiny", "resumable", "resumable", "stale"]
                                            for line in screen_text(app).splitlines()))
        names = [s.folder.name for s in app.screen.summaries]
        app.screen.query_one("#projects", DataTable).move_cursor(row=names.index("differential"))
        await pilot.press("o")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen) and "route     differential: B trains" in plan_text(app))
        # each output's state above the pictures, as `copylora check` says it (the sides short of the plan)
        # (their checkpoints continue them: "resumable", as the Projects list says; it said A↻ B↻ "stale")
        assert str(app.screen.query_one("#project-outputs", Static).content) == "outputs: A◐ B◐ result↻ stats↻ grid↻ check↻"
        assert "resumable: step 4/200 trained, run continues it" in plan_text(app)
        await pilot.press("escape", "2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and "train B on A" in rows_text(app))
        assert "result" in rows_text(app)
        assert app._exception is None
