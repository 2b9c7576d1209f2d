"""A project that can be looked at but not written: on a read-only mount (a shared dataset
disk), or another user's on a shared box. It was "✗ invalid" in the app, whose form said "fix
it in an editor", and `sample --save_to /tmp/x.png` refused it though nothing is written there.
It opens now, says why it cannot be trained, and `check`/`run` still refuse it."""

from __future__ import annotations

import shutil

import pytest

from copylora_tui.app import CopyloraApp
from copylora_tui.cli.main import EXIT_USAGE, main
from tests.helpers import EXAMPLE, mount_tmpfs, remount_read_only
from tests.test_app_support import notices, use_home, wait_until


@pytest.fixture
def read_only_projects(tmp_path):
    """projects/mono, a finished-looking example, on a tmpfs mounted read-only."""
    for where in mount_tmpfs(tmp_path / "projects", "20M"):
        shutil.copytree(EXAMPLE, where / "mono", ignore=shutil.ignore_patterns("output"))
        remount_read_only(where)
        yield where


def test_a_read_only_project_is_listed_valid_to_look_at_and_check_still_refuses_it(read_only_projects, capsys):
    from copylora_tui.core.projects import summarise

    summary = summarise(read_only_projects / "mono")
    assert summary.valid, summary.problems
    assert summary.view_only.startswith("view only: ") and "read-only filesystem" in summary.view_only
    assert main(["check", str(read_only_projects / "mono")]) == EXIT_USAGE  # what `run` needs
    assert "project.output_dir" in capsys.readouterr().err


def test_sample_of_a_read_only_project_to_a_file_elsewhere(read_only_projects, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", str(read_only_projects / "mono"), "--lora", "none", "--save_to", str(out), "--steps", "1",
                 "--strengths", "0", "--size", "64x64"]) == 0
    assert out.is_file()


async def test_the_app_opens_a_read_only_project_and_says_why_it_does_not_run(read_only_projects, tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    app = CopyloraApp(read_only_projects)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries)
        await pilot.press("r")  # from the list
        await wait_until(pilot, lambda: any(n.startswith("example-monochrome: view only: ") for n in notices(app)))
        app.action_open_project(read_only_projects / "mono")
        await wait_until(pilot, lambda: "view only: " in str(app.screen.query_one("#project-status").render()))
        assert "problem" not in str(app.screen.query_one("#project-status").render())
        app.clear_notifications()
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: any(n.startswith("view only: ") for n in notices(app)))
        assert env.worker_calls == []
