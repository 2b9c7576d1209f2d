"""When the Projects screen reads the projects folder again, and what it reads.

A whole scan reads every project (headers, hashes of pictures and LoRAs): with hundreds of
projects, seconds. Coming back to the screen reads the projects opened meanwhile, and everything
only when the last whole scan is older than FULL_RESCAN_AFTER_S; a job that ends has its own
project read again. Scans overlap, and none may put back what a newer one read.
"""

from __future__ import annotations

import threading

import pytest
from textual.widgets import DataTable

import copylora_tui.screens.projects as screen_module
from copylora_tui.app import CopyloraApp
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.screens.projects import ProjectsScreen
from copylora_tui.screens.queue import QueueScreen
from engine.jobs.queue import JobStatus, Queue
from tests.test_app_support import make_projects, mark_trained, use_home, wait_until

NAMES = ("alpha", "beta", "gamma")


def cells(app) -> dict[str, list[str]]:
    table = app.screen.query_one("#projects", DataTable)
    return {str(row[0]): [str(c) for c in row] for row in (table.get_row_at(i) for i in range(table.row_count))}


def count_scans(monkeypatch) -> dict[str, list]:
    """Every whole scan, and every project read on its own, as they happen."""
    seen: dict[str, list] = {"whole": [], "one": []}
    whole, one = screen_module.scan_projects, screen_module.summarise_project

    def scan_projects(folder):
        seen["whole"].append(folder)
        return whole(folder)

    def summarise_project(folder):
        seen["one"].append(folder.name)
        return one(folder)

    monkeypatch.setattr(screen_module, "scan_projects", scan_projects)
    monkeypatch.setattr(screen_module, "summarise_project", summarise_project)
    return seen


def break_project(folder) -> None:
    (folder / "copylora.toml").write_text((folder / "copylora.toml").read_text() + "\n[train]\nlearning_rate = -1\n")


async def test_back_from_a_project_reads_that_project_and_no_other(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, NAMES)
    seen = count_scans(monkeypatch)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: len(cells(app)) == 3)
        assert len(seen["whole"]) == 1
        app.screen.query_one("#projects", DataTable).move_cursor(row=1)
        await pilot.press("o")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen))
        break_project(projects / "beta")  # as a save with a problem the form missed, or an editor beside the app
        break_project(projects / "gamma")  # not opened: waits for the next whole scan
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and "✗ invalid" in cells(app)["beta"])
        assert seen["one"] == ["beta"] and len(seen["whole"]) == 1
        assert "✗ invalid" not in cells(app)["gamma"]
        await pilot.press("f5")  # a whole scan on request
        await wait_until(pilot, lambda: "✗ invalid" in cells(app)["gamma"])


async def test_keys_between_screens_read_everything_only_once_the_scan_is_old(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, NAMES)
    seen = count_scans(monkeypatch)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: len(cells(app)) == 3)
        for _ in range(6):
            await pilot.press("2")
            await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen))
            await pilot.press("1")
            await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen))
        await pilot.pause()
        assert len(seen["whole"]) == 1 and seen["one"] == []  # it was read a moment ago: nothing again

        break_project(projects / "gamma")  # another program changed it
        monkeypatch.setattr(screen_module, "FULL_RESCAN_AFTER_S", 0.0)  # as if the last whole scan were old
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen))
        await pilot.press("1")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and "✗ invalid" in cells(app)["gamma"])
        assert len(seen["whole"]) == 2


@pytest.mark.parametrize("status", [JobStatus.DONE, JobStatus.CANCELLED])
async def test_a_job_that_ends_has_its_project_read_again(tmp_path, monkeypatch, status):
    """Done (its LoRA written) or cancelled (its checkpoint written): its project, alone."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, NAMES)
    queue = Queue()
    job = queue.enqueue("train", str(projects / "alpha"), side="ab", label="train A+B")
    seen = count_scans(monkeypatch)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: len(cells(app)) == 3 and cells(app)["alpha"][2] == "queued")
        mark_trained(projects / "alpha", ("a", "b"))  # what the job wrote (files the scan reads as trained)
        queue.finish(job.id, status)
        await wait_until(pilot, lambda: cells(app)["alpha"][2:4] == ["✓ trained", "✓ trained"])
        assert seen["one"] == ["alpha"] and len(seen["whole"]) == 1
    queue.close()


async def test_a_whole_scan_read_before_a_projects_own_scan_does_not_put_back_the_old_state(tmp_path, monkeypatch):
    """The whole scan reads beta, then beta changes and is read on its own (shown at once), then
    the whole scan ends: beta keeps the newer reading, the others take the whole scan's."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, NAMES)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: len(cells(app)) == 3)
        screen = app.screen
        read, release = threading.Event(), threading.Event()
        whole = screen_module.scan_projects

        def slow_scan(folder):
            summaries = whole(folder)
            read.set()
            release.wait(10)
            return summaries

        monkeypatch.setattr(screen_module, "scan_projects", slow_scan)
        break_project(projects / "alpha")  # seen by the whole scan
        screen.rescan()
        await wait_until(pilot, read.is_set)
        break_project(projects / "beta")  # after the whole scan read it
        screen.rescan_projects([projects / "beta"])
        await wait_until(pilot, lambda: "✗ invalid" in cells(app)["beta"])
        assert "✗ invalid" not in cells(app)["alpha"]  # the whole scan has not ended yet
        release.set()
        await wait_until(pilot, lambda: "✗ invalid" in cells(app)["alpha"])
        await pilot.pause()
        assert "✗ invalid" in cells(app)["beta"]
