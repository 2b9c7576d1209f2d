"""What the app sends to the terminal while nothing or little changes (SSH bandwidth, CPU).

Measured in a 37-minute soak: with a job running the app sent 40-48 KB/s whatever screen was
shown (150 MB an hour), and a finished job's monitor never went quiet. The screen under the top
one kept following the queue and Textual repainted the top screen in full for it; every status
line was laid out again on each poll, the same text or not; a finished job's curve was read and
drawn twice a second. Counted here headless: each compositor update the app would write, and
the cells it would paint."""

from __future__ import annotations

from rich.text import Text
from textual._compositor import ChopsUpdate, LayoutUpdate

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.monitor import MonitorScreen
from copylora_tui.screens.queue import QueueScreen
from copylora_tui.widgets.steady import SteadyStatic
from engine.jobs.queue import Queue
from engine.train.progress import Progress
from tests.test_app_support import make_projects, running_job, screen_text, use_home, wait_until


def count_paints(app) -> dict:
    """Wrap the app's display: full-screen updates, partial ones, and the cells they paint."""
    counts = {"full": 0, "partial": 0, "cells": 0}
    display = app._display

    def counting(screen, renderable):
        if isinstance(renderable, LayoutUpdate):
            counts["full"] += 1
            counts["cells"] += renderable.region.area
        elif isinstance(renderable, ChopsUpdate):
            counts["partial"] += 1
            counts["cells"] += sum(len(segment.text) for chops in renderable.chops for line in chops.values() if line for segment in line)
        return display(screen, renderable)

    app._display = counting
    return counts


def step(queue: Queue, job_id: int, n: int) -> None:
    queue.report_progress(job_id, Progress(n, 200, 0.1, 0.1, 1e-4, 12.5, 80.0, 5.0, 2150.0), point=False)


async def test_a_running_jobs_monitor_repaints_its_changed_lines_only_and_a_finished_one_nothing(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    queue = Queue()
    job = running_job(queue, projects / "example-monochrome", step=50, total=200, points=40)
    app = CopyloraApp(projects, poll_s=0.1)
    counts = count_paints(app)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: "example-monochrome" in screen_text(app))
        app.action_show_monitor(job.id)  # over the Projects screen, which follows the same queue
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and "step 50/200" in screen_text(app))
        await pilot.pause(0.5)
        counts.update(full=0, partial=0, cells=0)
        for n in range(51, 71):  # two seconds of a job stepping at each poll
            step(queue, job.id, n)
            await pilot.pause(0.1)
        await wait_until(pilot, lambda: "step 70/200" in screen_text(app))
        # each poll: the numbers line, the progress bar and the running time; a full screen is 3000 cells
        assert counts["full"] == 0 and 0 < counts["cells"] < 20 * 600, counts
        queue.finish(job.id, "done")
        await wait_until(pilot, lambda: "done" in screen_text(app))
        await pilot.pause(1.0)
        counts.update(full=0, partial=0, cells=0)
        reads = []
        monitor = app.screen
        read = monitor.read_history
        monitor.read_history = lambda: (reads.append(1), read())
        await pilot.pause(2.0)  # twenty polls of a queue where nothing moves
        assert counts == {"full": 0, "partial": 0, "cells": 0}
        assert len(reads) <= 1  # its curve read every HISTORY_IDLE_S, not at each poll


def one_running_job(tmp_path, monkeypatch):
    """The app (polling every 0.1 s) over a queue with one running training job."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    queue = Queue()
    job = running_job(queue, projects / "example-monochrome", step=50, total=200)
    return CopyloraApp(projects, poll_s=0.1), queue, job


async def test_a_screen_under_another_catches_up_when_shown_again(tmp_path, monkeypatch):
    """Covered, the Projects screen skips the snapshots; back on top it shows the latest at once."""
    app, queue, job = one_running_job(tmp_path, monkeypatch)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: "1 running" in screen_text(app))
        projects_screen = app.screen
        worker_line = projects_screen.query_one("#worker-line")
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and "running" in screen_text(app))
        queue.finish(job.id, "failed", error="boom")
        await wait_until(pilot, lambda: "failed" in screen_text(app))
        await pilot.pause(0.5)
        assert "1 running" in str(worker_line.render())  # covered: five polls, none of them shown there
        await pilot.press("1")
        await wait_until(pilot, lambda: app.screen is projects_screen and "0 running" in str(worker_line.render()))


async def test_a_steady_line_repaints_for_a_new_style_with_the_same_words(tmp_path, monkeypatch):
    """rich's Text == ignores the base style: a line turning from dim to red would have stayed dim."""
    from textual.app import App

    class One(App):
        def compose(self):
            yield SteadyStatic(Text("worker not running", style="dim"), id="line")

    app = One()
    async with app.run_test(size=(40, 3)) as pilot:
        line = app.query_one("#line", SteadyStatic)
        await pilot.pause(0.3)  # the first frame drawn
        counts = count_paints(app)
        line.update(Text("worker not running", style="dim"))
        await pilot.pause(0.2)
        assert counts["cells"] == 0
        line.update(Text("worker not running", style="red"))
        await pilot.pause(0.2)
        assert counts["cells"] > 0 and str(line.content.style) == "red"
        line.update(Text("worker not running\nand a second line", style="red"))  # a new height: laid out again
        await wait_until(pilot, lambda: line.size.height == 2)


async def test_a_screen_behind_a_dialog_keeps_following_the_queue(tmp_path, monkeypatch):
    """A dialog leaves the screen under it in sight: the Projects list behind a dialog stood at
    the step it had when the dialog opened."""
    from copylora_tui.screens.new_project import NewProjectScreen

    app, queue, job = one_running_job(tmp_path, monkeypatch)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: "1 running" in screen_text(app))
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, NewProjectScreen))
        queue.finish(job.id, "failed", error="boom")
        await wait_until(pilot, lambda: "0 running" in str(app.screen_stack[0].query_one("#worker-line").render()))


async def test_the_queue_screen_repaints_the_cells_that_moved_not_its_table(tmp_path, monkeypatch):
    """DataTable.update_cell repaints the whole table: with a job stepping, the Queue screen sent
    every row again at each poll (7.7 KB/s measured over a real terminal, bench/app_bytes.sh)."""
    app, queue, job = one_running_job(tmp_path, monkeypatch)
    for n in range(12):  # a queue with history: the rows a whole-table repaint would send again
        queue.enqueue("merge", job.project)
    counts = count_paints(app)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and "50/200" in screen_text(app))
        await pilot.pause(0.5)
        counts.update(full=0, partial=0, cells=0)
        for n in range(51, 71):
            step(queue, job.id, n)
            await pilot.pause(0.1)
        await wait_until(pilot, lambda: "70/200" in screen_text(app))
        # each poll: the running row's progress, speed, ETA and loss cells and the lines under
        # the table; the table alone is ~13 rows of 100 cells
        assert counts["full"] == 0 and 0 < counts["cells"] < 20 * 400, counts
