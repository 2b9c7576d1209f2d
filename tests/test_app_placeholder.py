"""The app opens on the projects folder (the full screens come with the app issue)."""

from __future__ import annotations

from textual.widgets import DataTable, Static

from copylora_tui.app import CopyloraApp
from tests.helpers import copy_example


async def test_app_lists_projects(tmp_path):
    copy_example(tmp_path)
    app = CopyloraApp(projects_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(DataTable)
        assert table.row_count == 1
        assert table.get_row_at(0)[0] == "example-monochrome"
        await pilot.press("q")


async def test_app_empty_state_says_how_to_start(tmp_path):
    app = CopyloraApp(projects_dir=tmp_path / "none")
    async with app.run_test(size=(80, 24)):
        text = str(app.query_one("#empty", Static).render())
        assert "copylora new" in text
