"""Tables show their cells whole on the first paint after a change, whatever comes first.

Textual's DataTable measures auto-width columns only on its idle and caches the cells it
painted before: a repaint between ``add_row`` and that idle kept cells cut to the old widths
("q  q  queue" for "queued" on the Projects screen, seen under the full suite's load). Each
test paints right after the change (``render_line``, as the app's timer may), then lets the
idle pass and paints again.
"""

from __future__ import annotations

import dataclasses

from rich.text import Text
from textual.app import App, ComposeResult

from copylora_tui.widgets.fitted_table import FittedTable, cell_width, fitted_widths
from copylora_tui.widgets.job_table import JobTable
from engine.jobs.queue import JobStatus, Queue

COLUMNS = [("project", "project", None), ("a", "A", None), ("merge", "merge", None), ("base", "base model", 6)]


def painted(table, rows: int) -> list[str]:
    """The table's lines as the next repaint draws them (header, then rows)."""
    return [table.render_line(y).text for y in range(rows + 1)]


def test_widths_fit_labels_and_cells_and_keep_fixed_ones():
    rows = [["one", Text("✓ trained"), "—", "sd15-long-name"], ["a-longer-name", "", Text("queued"), ""]]
    assert fitted_widths(COLUMNS, rows) == [len("a-longer-name"), len("✓ trained"), len("queued"), 6]
    assert cell_width(Text("▶ 40%")) == 5 and cell_width("日本") == 4  # cells, not characters


class OneTable(App):
    def __init__(self, table) -> None:
        super().__init__()
        self.table = table

    def compose(self) -> ComposeResult:
        yield self.table


async def test_a_fitted_table_paints_new_wider_cells_whole_before_its_idle():
    table = FittedTable(cursor_type="row")
    async with OneTable(table).run_test(size=(80, 10)) as pilot:
        table.show(COLUMNS, [("p", ["demo", "—", "—", "x"])])
        await pilot.pause(0.2)
        table.show(COLUMNS, [("p", ["demo", "queued", "queued", "x"])])
        before_idle = painted(table, 1)
        await pilot.pause(0.3)
        for lines in (before_idle, painted(table, 1)):
            assert lines[1].split() == ["demo", "queued", "queued", "x"], lines
        table.show(COLUMNS, [("p", ["demo", "—", "—", "x"])])  # and the columns shrink back
        assert table.column_widths() == {"project": 7, "a": 1, "merge": 5, "base": 6}


async def test_the_job_table_paints_a_status_that_grows_whole(tmp_path):
    queue = Queue(tmp_path / "home")
    queue.enqueue("train", "demo", side="a")
    job = queue.jobs()[0]
    running = dataclasses.replace(job, status=JobStatus.RUNNING, step=10, total=100)
    table = JobTable(("job", "task", "status", "progress"))
    async with OneTable(table).run_test(size=(100, 10)) as pilot:
        table.show_jobs([running])
        await pilot.pause(0.2)
        table.move_cursor(row=0)
        table.show_jobs([dataclasses.replace(running, interrupted=True)])  # running → interrupted: wider, then still
        before_idle = painted(table, 1)
        await pilot.pause(0.3)
        for lines in (before_idle, painted(table, 1)):
            assert "interrupted" in lines[1], lines
        assert table.selected_job_id() == job.id  # the rebuild for the width kept the cursor on the job
        table.show_jobs([dataclasses.replace(running, step=20)])  # same widths: cells change in place
        assert "20/100" in painted(table, 1)[1]


async def test_the_job_table_formats_again_only_the_jobs_that_changed(tmp_path, monkeypatch):
    """The queue's reads hand back the same Job while its row is unchanged (engine.jobs.job_cache):
    the table then neither formats nor rewrites that row; a new Job object is formatted and
    written even when only one number moved."""
    import copylora_tui.widgets.job_table as job_table

    queue = Queue(tmp_path / "home")
    for side in "ab":
        queue.enqueue("train", "demo", side=side, total=100)
    first, second = queue.jobs()
    made = []
    real = job_table.COLUMNS["progress"]
    monkeypatch.setitem(job_table.COLUMNS, "progress", (real[0], lambda j: made.append(j.id) or real[1](j)))
    table = JobTable(("job", "task", "status", "progress"))
    async with OneTable(table).run_test(size=(100, 10)) as pilot:
        table.show_jobs([first, second])
        await pilot.pause(0.1)
        assert made == [first.id, second.id]
        written = []
        monkeypatch.setattr(table, "set_cell", lambda *args, **kwargs: written.append(args[0]))
        table.show_jobs([first, second])
        assert made == [first.id, second.id] and written == []
        table.show_jobs([first, dataclasses.replace(second, step=7)])
        assert made[2:] == [second.id] and written == [str(second.id)]
