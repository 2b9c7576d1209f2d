"""The screens read at 80×24 and 100×30: the project form, the stats figures, the queue's footer
and a twin job's losses, the footer after a resize, a merge's progress in its monitor."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.project import ProjectScreen
from tests.test_app_support import FIXED_T, build_demo, freeze_times, make_projects, open_stats, screen_text, use_home, wait_until

NARROW, WIDE = (80, 24), (100, 30)
CAPTION = "a yellow circle on a blue background"


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """The snapshot tests' demo (tests/test_app_snapshots.py) with a finished twin job (#10,
    both sides' losses) and the merge #3's progress rows; example-monochrome trains under a
    caption by the differential route."""
    from engine.jobs.queue import Queue
    from engine.train.progress import Progress

    use_home(monkeypatch, tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    projects = build_demo(tmp_path)
    toml = projects / "example-monochrome" / "copylora.toml"
    toml.write_text(re.sub(r'(?m)^caption = .*$', f'caption = "{CAPTION}"', toml.read_text()).replace('method = "svd-merge"', 'method = "differential"'))
    queue = Queue()
    twin = queue.enqueue("train", str((projects / "night-sky").resolve()), side="ab", label="train A+B", total=200)
    with queue.transaction() as db:  # claimed next, ahead of the waiting jobs
        db.execute("UPDATE jobs SET position = -1 WHERE id = ?", (twin.id,))
    assert queue.claim(None).id == twin.id
    queue.report_progress(twin.id, Progress(200, 200, 0.7431, 0.7426, 1e-3, 6.6, 0.0, 30.0, None, loss_b=0.7425, smooth_loss_b=0.7420), point=True)
    queue.finish(twin.id, "done")
    queue.report_progress(3, Progress(192, 192, float("nan"), float("nan"), 0.0, 0.0, 0.0, 0.0), point=False)  # the merge's rows
    freeze_times(queue)
    queue.close()
    monkeypatch.setattr("copylora_tui.core.snapshot.worker_pid", lambda home: 4242)
    app = CopyloraApp("projects", poll_s=0.2)
    app.clock = lambda: FIXED_T + 6 * 600 + 125
    yield app
    monkeypatch.delenv("TZ")
    time.tzset()


def projects_ready(pilot):
    return wait_until(pilot, lambda: pilot.app.screen.summaries and "4242" in screen_text(pilot.app))


async def open_demo_project(pilot):
    await projects_ready(pilot)
    pilot.app.action_open_project(Path("projects/example-monochrome"))
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ProjectScreen) and pilot.app.screen.query("#field-train-caption #editor"))


async def test_an_empty_choice_reads_as_quotes_in_the_hint(demo):
    """log_with's choices are "" (off) and tensorboard: the hint said " | tensorboard"."""
    from textual.widgets import Input

    async with demo.run_test(size=WIDE) as pilot:
        await open_demo_project(pilot)
        editor = demo.screen.query_one("#field-train-log_with #editor", Input)
        assert editor.placeholder == '"" | tensorboard'


async def open_caption(pilot):
    """example-monochrome's form, scrolled to its caption."""
    await open_demo_project(pilot)
    await scroll_to_caption(pilot)


async def scroll_to_caption(pilot):

    def scrolled() -> bool:  # asked again until the form has been laid out and the field is in view
        screen = pilot.app.screen
        screen.query_one("#form").scroll_to_widget(screen.query_one("#field-train-caption"), animate=False, top=True)
        text = screen_text(pilot.app)
        return text.splitlines()[1].startswith(" caption ") and "no preview yet" in text

    await wait_until(pilot, scrolled)


async def test_the_project_form_reads_in_full_at_80_columns(demo):
    async with demo.run_test(size=NARROW) as pilot:
        await open_demo_project(pilot)
        await wait_until(pilot, lambda: "no preview yet" in screen_text(demo))
        text = screen_text(demo)
        assert re.search(r"^ name\s*▏", text, re.M) and "  example-monochrome " in text  # the key above, the value whole
        assert "differential" in text and "▐X▌ true" in text
        await scroll_to_caption(pilot)
        text = screen_text(demo)
        assert CAPTION in text  # read from its start, and whole
        assert "▐ ▌ false" in text  # network_train_unet_only's neighbours: ticks with their words


async def test_a_wide_terminal_gives_the_side_column_its_room(demo):
    """At 200 columns the form's rows filled 40 and left 120 blank, while the side column
    stayed 41 wide: the plan wrapped every line and the preview stayed small."""
    async with demo.run_test(size=(200, 50)) as pilot:
        await open_demo_project(pilot)
        side = pilot.app.screen.query_one("#side")
        await wait_until(pilot, lambda: side.outer_size.width == 80)
        assert "tiny (built-in, SD1.5 topology, random weights), family auto" in screen_text(demo)  # one line
        await pilot.resize_terminal(120, 30)
        await wait_until(pilot, lambda: side.outer_size.width == 41)


async def test_below_80_columns_the_form_keeps_the_width_and_the_field_typed_into_stays_in_sight(demo):
    """At 60 columns the side column's 41 cells left the form 18 (at 40: none, and typing still
    changed fields no one could see); a resize left the field being typed into out of sight."""
    from textual.widgets import Input

    async with demo.run_test(size=WIDE) as pilot:
        await open_demo_project(pilot)
        screen = pilot.app.screen
        seed = screen.query_one("#field-train-seed #editor", Input)
        seed.focus()
        await pilot.pause()
        for size in ((60, 20), (40, 12), WIDE, (40, 12)):
            await pilot.resize_terminal(*size)
            form = screen.query_one("#form")
            wide_enough = size[0] - 2 if size[0] < 80 else 40
            await wait_until(pilot, lambda: form.size.width >= wide_enough and form.region.contains_region(seed.region))
            assert "✓ saved" in screen_text(demo) or "unsaved" in screen_text(demo) or size == WIDE  # the status, below
        await pilot.press("9")
        await wait_until(pilot, lambda: seed.value.endswith("9") and form.region.contains_region(seed.region))


async def test_the_stats_figures_and_cos_fit_80_columns(tmp_path, monkeypatch):
    from copylora_tui.screens.stats import StatsScreen
    from tests.test_app_support import write_stats

    use_home(monkeypatch, tmp_path)
    path = write_stats(tmp_path / "tiny.stats.json")
    document = json.loads(path.read_text())
    for module in document["modules"]:  # a tiny model's changes are small
        module["result_norm"] *= 1e-4
    for block in document["blocks"]:
        block["result_norm"] *= 1e-4
    path.write_text(json.dumps(document))
    app = CopyloraApp(make_projects(tmp_path))
    async with app.run_test(size=NARROW) as pilot:
        app.action_open_stats(path)
        await wait_until(pilot, lambda: isinstance(app.screen, StatsScreen) and "6 modules" in screen_text(app))
        await pilot.pause()
        text = screen_text(app)
        header = next(line for line in text.splitlines() if "energy" in line and "error" in line)
        assert header.split()[-3:] == ["‖Δ‖", "cos", "module"]
        assert "2.1e-04" in text and "+0.700" in text  # up2_res0_conv1: ‖Δ‖ 2.1e-04 (not "0."), cos in view


async def test_queue_footer_at_80_and_a_twin_loss_at_100_columns(demo):
    from copylora_tui.screens.queue import QueueScreen

    async with demo.run_test(size=NARROW) as pilot:
        await projects_ready(pilot)
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(demo.screen, QueueScreen) and "1800/4000" in screen_text(demo))
        assert screen_text(demo).splitlines()[-1].rstrip().endswith("1 Projects")
    wide = CopyloraApp("projects", poll_s=0.2)  # an app runs once
    async with wide.run_test(size=WIDE) as pilot:
        await projects_ready(pilot)
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(wide.screen, QueueScreen) and "1800/4000" in screen_text(wide))
        assert "A 0.7426 B 0.7420" in screen_text(wide)


async def test_the_footer_follows_a_resize(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    app = CopyloraApp(make_projects(tmp_path))
    async with app.run_test(size=WIDE) as pilot:
        await wait_until(pilot, lambda: screen_text(app).splitlines()[-1].rstrip().endswith("^p palette"))
        await pilot.resize_terminal(*NARROW)
        await wait_until(pilot, lambda: screen_text(app).splitlines()[-1].rstrip().endswith("3 Monitor"))  # every key, none cut
        await pilot.resize_terminal(*WIDE)
        await wait_until(pilot, lambda: screen_text(app).splitlines()[-1].rstrip().endswith("^p palette"))


async def test_a_merge_monitor_shows_its_progress_not_a_loss(demo):
    from copylora_tui.screens.monitor import MonitorScreen

    async with demo.run_test(size=WIDE) as pilot:
        await projects_ready(pilot)
        demo.action_show_monitor(3)
        await wait_until(pilot, lambda: isinstance(demo.screen, MonitorScreen) and "modules merged" in screen_text(demo))
        text = screen_text(demo)
        assert "192/192 modules merged" in text and "100%" in text
        assert "no loss" not in text and "loss curve appears" not in text
        assert "step " not in text  # a merge has modules, not steps (the numbers line said "step 192/192")


# Snapshots of the same (regenerate with --snapshot-update after an intended change).


def test_snapshot_project_form_narrow(snap_compare, demo):
    assert snap_compare(demo, terminal_size=NARROW, run_before=open_caption)


def test_snapshot_stats_narrow(snap_compare, demo):
    assert snap_compare(demo, terminal_size=NARROW, run_before=lambda pilot: open_stats(pilot, projects_ready))


def queue_shown(pilot):
    async def run_before(pilot):
        await projects_ready(pilot)
        await pilot.press("2")
        await wait_until(pilot, lambda: "1800/4000" in screen_text(pilot.app) and "m Monitor" in screen_text(pilot.app))

    return run_before(pilot)


def test_snapshot_queue_narrow(snap_compare, demo):
    assert snap_compare(demo, terminal_size=NARROW, run_before=queue_shown)


def test_snapshot_queue_wide_with_a_twin_job(snap_compare, demo):
    assert snap_compare(demo, terminal_size=WIDE, run_before=queue_shown)


def test_snapshot_merge_monitor(snap_compare, demo):
    async def run_before(pilot):
        await projects_ready(pilot)
        pilot.app.action_show_monitor(3)
        await wait_until(pilot, lambda: "modules merged" in screen_text(pilot.app) and pilot.app.screen.query_one("#log").line_count >= 0
                         and "no preview yet" in screen_text(pilot.app))

    assert snap_compare(demo, terminal_size=WIDE, run_before=run_before)
