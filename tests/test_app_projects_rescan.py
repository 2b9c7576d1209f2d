"""When the Projects screen reads the projects folder again, and what it reads.

A whole scan reads every project (headers, hashes of pictures and LoRAs): with hundreds of
projects, seconds. Coming back to the screen reads the projects opened meanwhile, and everything
only when the last whole scan is older than FULL_RESCAN_AFTER_S; a job that ends has its own
project read again. Scans overlap, and none may put back what a newer one read.
"""

from __future__ import annotations

import threading
import time

import pytest
from textual.widgets import DataTable

import copylora_tui.screens.projects as screen_module
from copylora_tui.app import CopyloraApp
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.screens.projects import ProjectsScreen
from copylora_tui.screens.queue import QueueScreen
from engine.jobs.queue import JobStatus, Queue
from tests.test_app_support import make_projects, mark_trained, notices, screen_text, use_home, wait_until

NAMES = ("alpha", "beta", "gamma")


def cells(app) -> dict[str, list[str]]:
    table = app.screen.query_one("#projects", DataTable)
    return {str(row[0]): [str(c) for c in row] for row in (table.get_row_at(i) for i in range(table.row_count))}


def count_scans(monkeypatch) -> dict[str, list]:
    """Every whole scan, and every project read on its own, as they happen."""
    seen: dict[str, list] = {"whole": [], "one": []}
    whole, some = screen_module.scan_projects, screen_module.read_projects

    def scan_projects(folder, *more):
        seen["whole"].append(folder)
        return whole(folder, *more)

    def read_projects(folders, *more):
        seen["one"].extend(folder.name for folder in folders)
        return some(folders, *more)

    monkeypatch.setattr(screen_module, "scan_projects", scan_projects)
    monkeypatch.setattr(screen_module, "read_projects", read_projects)
    return seen


def break_project(folder) -> None:
    (folder / "copylora.toml").write_text((folder / "copylora.toml").read_text() + "\n[train]\nlearning_rate = -1\n")


async def test_back_from_a_project_reads_that_project_and_no_other(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    monkeypatch.setattr(screen_module, "DISK_CHECK_S", 1000.0)  # the disk check (tested below) would find gamma too
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
    monkeypatch.setattr(screen_module, "DISK_CHECK_S", 1000.0)
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

        def slow_scan(folder, *more):
            summaries = whole(folder, *more)
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


async def test_the_list_follows_projects_made_changed_and_removed_beside_the_app(tmp_path, monkeypatch):
    """`copylora new` or an editor in a pane beside the app: while the list is shown, a stat per
    project every DISK_CHECK_S finds it; unchanged, nothing is read again; on another screen,
    nothing is checked."""
    import shutil

    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, NAMES)
    monkeypatch.setattr(screen_module, "DISK_CHECK_S", 0.1)
    seen = count_scans(monkeypatch)
    some = screen_module.read_projects

    def slow_read(folders, *more):  # a project that takes several checks to read is asked for once
        time.sleep(0.4)
        return some(folders, *more)

    monkeypatch.setattr(screen_module, "read_projects", slow_read)
    checked: list[list[str]] = []
    stamps = screen_module.project_stamps

    def project_stamps(folders):
        checked.append(sorted(f.name for f in folders))
        return stamps(folders)

    monkeypatch.setattr(screen_module, "project_stamps", project_stamps)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: len(cells(app)) == 3)
        await pilot.pause(0.5)  # five checks: nothing changed, nothing read
        assert len(seen["whole"]) == 1 and seen["one"] == []

        made = tmp_path / "delta"  # made beside the app (`copylora new`), moved in whole
        shutil.copytree(projects / "alpha", made)
        (made / "copylora.toml").write_text((made / "copylora.toml").read_text().replace('name = "alpha"', 'name = "delta"'))
        made.rename(projects / "delta")
        await wait_until(pilot, lambda: "delta" in cells(app))
        assert len(seen["whole"]) == 2

        toml = projects / "beta" / "copylora.toml"
        toml.write_text(toml.read_text().replace('base_model = "tiny"', 'base_model = "tiny-sdxl"'))  # edited in place
        await wait_until(pilot, lambda: cells(app)["beta"][1] == "tiny-sdxl")
        assert seen["one"] == ["beta"] and len(seen["whole"]) == 2

        shutil.rmtree(projects / "gamma")
        await wait_until(pilot, lambda: "gamma" not in cells(app))
        await pilot.pause(0.5)
        assert seen["one"] == ["beta"] and len(seen["whole"]) == 3
        assert checked[-1] == ["alpha", "beta", "delta"]  # the removed one is checked no more

        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen))
        break_project(projects / "alpha")
        checks = len(checked)
        await pilot.pause(0.5)
        assert seen["one"] == ["beta"] and len(seen["whole"]) == 3  # not shown: not read
        assert len(checked) <= checks + 1  # nor checked (but for one under way when the key came)
        await pilot.press("1")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and "✗ invalid" in cells(app)["alpha"])


async def test_a_disk_check_that_fails_is_said_nowhere_and_the_next_one_runs(tmp_path, monkeypatch):
    """A stat that raises what no one foresaw: the app goes on, and later checks still run."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, NAMES)
    monkeypatch.setattr(screen_module, "DISK_CHECK_S", 0.1)
    calls = []
    real = screen_module.project_stamps

    def failing_once(folders):
        calls.append(len(folders))
        if len(calls) == 1:
            raise RuntimeError("a network disk went away")
        return real(folders)

    monkeypatch.setattr(screen_module, "project_stamps", failing_once)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: len(cells(app)) == 3)
        await wait_until(pilot, lambda: len(calls) >= 3)
        break_project(projects / "beta")
        await wait_until(pilot, lambda: "✗ invalid" in cells(app)["beta"])
    assert app.return_code in (0, None)


async def test_a_disk_check_that_hangs_is_the_only_one_and_is_said(tmp_path, monkeypatch):
    """A stat on a hung network disk blocks until the disk answers: no second check starts meanwhile
    (each would be one more stuck thread), the user is told once, and checks go on once it answers."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, NAMES)
    monkeypatch.setattr(screen_module, "DISK_CHECK_S", 0.05)
    monkeypatch.setattr(screen_module, "CHECK_SLOW_S", 0.3)
    disk_back = threading.Event()
    started = []
    real = screen_module.project_stamps

    def hanging(folders):
        started.append(threading.get_ident())
        disk_back.wait(timeout=30)
        return real(folders)

    monkeypatch.setattr(screen_module, "project_stamps", hanging)
    app = CopyloraApp(projects, poll_s=0.1)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: len(cells(app)) == 3 and started)
            await wait_until(pilot, lambda: any("has not answered for 0 s (a network disk?)" in n for n in notices(app)))
            await pilot.pause(0.6)  # twelve check intervals, two of the slow limit
            assert len(started) == 1
            assert sum("has not answered" in n for n in notices(app)) == 1  # said once
            disk_back.set()
            await wait_until(pilot, lambda: any("answers again" in n for n in notices(app)))
            await wait_until(pilot, lambda: len(started) >= 3)  # checks run again
            break_project(projects / "beta")
            await wait_until(pilot, lambda: "✗ invalid" in cells(app)["beta"])
    finally:
        disk_back.set()


async def test_f5_on_a_hung_scan_starts_no_second_one_and_reads_once_more_after_it(tmp_path, monkeypatch):
    """Each f5 started a whole scan in a thread: on a hung network disk, one more stuck thread
    per press. Now presses during a scan fold into one scan after it, and a long one is said."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, NAMES)
    monkeypatch.setattr(screen_module, "SCAN_BUSY_SAY_S", 0.0)
    real = screen_module.scan_projects
    disk_back = threading.Event()
    scans = []

    def scan(folder, *more):
        scans.append(folder)
        if len(scans) == 2:
            disk_back.wait(timeout=30)
        return real(folder, *more)

    monkeypatch.setattr(screen_module, "scan_projects", scan)
    app = CopyloraApp(projects, poll_s=0.1)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: len(cells(app)) == 3)
            await pilot.press("f5")  # the second scan: it hangs
            await wait_until(pilot, lambda: len(scans) == 2)
            break_project(projects / "beta")
            for _ in range(5):
                await pilot.press("f5")
            await pilot.pause(0.3)
            assert len(scans) == 2
            assert any("still reading" in n and "it is read again when that answers" in n for n in notices(app))
            disk_back.set()
            await wait_until(pilot, lambda: "✗ invalid" in cells(app)["beta"])  # the one scan after it
            await pilot.pause(0.3)
            assert len(scans) == 3
    finally:
        disk_back.set()


async def test_a_scan_that_fails_says_so_instead_of_reading_for_ever(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, NAMES)
    real = screen_module.scan_projects
    failures = [RuntimeError("the projects folder's disk went away")]

    def scan(folder, *more):
        if failures:
            raise failures.pop()
        return real(folder, *more)

    monkeypatch.setattr(screen_module, "scan_projects", scan)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: "cannot read the projects in" in screen_text(app))
        shown = " ".join(screen_text(app).split())  # the line wraps where the folder's name ends
        assert "RuntimeError: the projects folder's disk went away (f5 tries again)" in shown and "reading the projects" not in shown
        await pilot.press("f5")
        await wait_until(pilot, lambda: len(cells(app)) == 3)


async def test_the_first_scan_says_how_far_it_has_got(tmp_path, monkeypatch):
    """Hundreds of projects take seconds to read the first time (on a network disk, more): the
    screen counts them rather than show a bare "reading …"."""
    import copylora_tui.core.projects as core

    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, NAMES)
    monkeypatch.setattr(screen_module, "SCAN_PROGRESS_S", 0.0)
    release = threading.Event()
    one = core.summarise_project

    def slow(folder):
        if folder.name == "gamma":
            release.wait(10)
        return one(folder)

    monkeypatch.setattr(core, "summarise_project", slow)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: "/ … 2 of 3" in " ".join(screen_text(app).split()))  # the line wraps with the folder's name
        release.set()
        await wait_until(pilot, lambda: len(cells(app)) == 3)
        assert "reading the projects" not in screen_text(app)


async def test_a_teacher_picture_or_a_lora_changed_beside_the_app_shows_in_its_row(tmp_path, monkeypatch):
    """A picture replaced in place from a shell left "✓ trained" and "all outputs current" on
    the list (only copylora.toml was watched) while `check` said B stale; a LoRA removed by hand
    still read "✓ trained". Both show within a disk check now, by that project's read alone."""
    from tests.helpers import write_png

    use_home(monkeypatch, tmp_path)
    monkeypatch.setattr(screen_module, "DISK_CHECK_S", 0.1)
    projects = make_projects(tmp_path, NAMES)
    mark_trained(projects / "beta")
    seen = count_scans(monkeypatch)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: len(cells(app)) == 3 and cells(app)["beta"][3] == "✓ trained")
        await pilot.pause(0.5)
        assert seen["one"] == []  # nothing changed: nothing read
        picture = next((projects / "beta" / "b").glob("*.png"))
        with open(picture, "r+b") as handle:  # in place, as an editor that does not rename writes it
            handle.write(write_png(tmp_path / "other.png", (128, 192), (10, 200, 10)).read_bytes())
        await wait_until(pilot, lambda: cells(app)["beta"][3] == "stale")
        assert cells(app)["beta"][2] == "✓ trained" and set(seen["one"]) == {"beta"}
        next((projects / "beta" / "output").glob("*_A.safetensors")).unlink()
        await wait_until(pilot, lambda: cells(app)["beta"][2] == "—")
        assert set(seen["one"]) == {"beta"} and len(seen["whole"]) == 1


def test_a_project_watches_its_output_folder_where_it_lies_outside(tmp_path):
    from copylora_tui.core.projects import summarise

    projects = make_projects(tmp_path, ("alpha",))
    toml = projects / "alpha" / "copylora.toml"
    toml.write_text(toml.read_text().replace('output_dir = "output"', 'output_dir = "../../shared-out"'))
    inputs = summarise(projects / "alpha").inputs
    assert (tmp_path / "shared-out").resolve() in {p.resolve() for p in inputs} and projects / "alpha" / "a" in inputs


def test_a_class_folder_counts_by_its_own_stamp_not_each_picture(tmp_path):
    """A check stats every project every DISK_CHECK_S: class folders of thousands of pictures
    took 0.7 s a check for 200 projects. Such a folder counts by its own stamp (a picture added
    or removed changes it); the teacher folders by each file (one rewritten in place does not)."""
    import os

    from copylora_tui.core.projects import project_stamp, summarise
    from tests.helpers import write_png

    projects = make_projects(tmp_path, ("alpha",))
    root = projects / "alpha"
    reg = root / "reg"
    for n in range(3):
        write_png(reg / f"class-{n:04d}.png", (64, 64), (90, 90, 90))
    inputs = summarise(root).inputs
    assert reg not in inputs and root / "a" in inputs
    before = project_stamp(root, inputs)
    picture = reg / "class-0000.png"
    folder_time = reg.stat().st_mtime_ns
    picture.write_bytes(picture.read_bytes() + b"\0")  # in place: the folder's time stays
    os.utime(reg, ns=(folder_time, folder_time))
    assert project_stamp(root, inputs) == before  # not looked at, file by file
    write_png(reg / "class-0003.png", (64, 64), (90, 90, 90))
    assert project_stamp(root, inputs) != before
