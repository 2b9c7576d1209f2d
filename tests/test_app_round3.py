"""The app's round-3 fixes (issue 29): ctrl+q asks before losing form edits, the screens read
at 80×24 and 100×30, a resumed job's newest loss, a merge's progress in its monitor, and
notifications that do not pile up when a key is held."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from textual.widgets import Input

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.new_project import NewProjectScreen
from copylora_tui.screens.project import ProjectScreen
from tests.test_app_support import FIXED_T, build_demo, freeze_times, make_projects, open_stats, screen_text, use_home, wait_until


def notices(app) -> list[str]:
    return [n.message for n in app._notifications]


async def open_project(pilot, app, folder):
    app.action_open_project(folder)
    await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen) and app.screen.query("#field-train-seed #editor"))


# ---------------------------------------------------------------- 1. ctrl+q with unsaved edits


async def test_ctrl_q_with_unsaved_project_edits_asks_then_quits(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_project(pilot, app, folder)
        app.screen.query_one("#field-train-seed #editor", Input).value = "7"
        await wait_until(pilot, lambda: app.screen.dirty)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.return_code is None and isinstance(app.screen, ProjectScreen)  # still open: it asked
        assert any("ctrl+q again quits without saving" in n for n in notices(app))
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: app.return_code == 0)
    assert "seed = 42" in (folder / "copylora.toml").read_text()


async def test_ctrl_q_asks_again_after_a_further_edit_and_not_without_edits(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_project(pilot, app, folder)
        seed = app.screen.query_one("#field-train-seed #editor", Input)
        seed.value = "7"
        await wait_until(pilot, lambda: app.screen.dirty)
        await pilot.press("ctrl+q")
        seed.value = "8"  # edited after the warning: the next ctrl+q asks again
        await pilot.pause()
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.return_code is None
        seed.value = "42"  # back to the saved value: nothing to lose
        await wait_until(pilot, lambda: not app.screen.dirty)
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: app.return_code == 0)


async def test_ctrl_q_with_a_half_filled_new_project_form_asks(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    app = CopyloraApp(projects)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries)
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, NewProjectScreen) and app.screen.query("#new-name"))
        await pilot.press("m", "o", "n", "o")
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.return_code is None and isinstance(app.screen, NewProjectScreen)
        assert any("ctrl+s creates the project, ctrl+q again quits" in n for n in notices(app))
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: app.return_code == 0)


# ---------------------------------------------------------------- 7. notifications do not pile up


def commands_done(app) -> bool:
    return not [w for w in app.workers if w.group == "command" and not w.is_finished]


async def test_a_held_key_shows_one_notification_and_at_most_three_stay(tmp_path, monkeypatch):
    from copylora_tui.app import MAX_NOTIFICATIONS
    from copylora_tui.screens.queue import QueueScreen

    use_home(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    build_demo(tmp_path)
    app = CopyloraApp("projects", poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries)
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.selected_job_id() is not None)
        table = app.screen.query_one("#jobs")
        table.move_cursor(row=table.row_count - 1)  # #1, done: c says "nothing to cancel" each time
        await wait_until(pilot, lambda: app.screen.selected_job_id() == 1)
        await pilot.press(*["c"] * 8)  # a held key
        await wait_until(pilot, lambda: commands_done(app) and any("nothing to cancel" in n for n in notices(app)))
        await pilot.pause()
        assert sum("#1 is done: nothing to cancel" in n for n in notices(app)) == 1
        for _ in range(3):  # four different messages: the oldest goes
            await pilot.press("up", "c")
            await wait_until(pilot, lambda: commands_done(app))
        await pilot.pause()
        shown = notices(app)
        assert len(shown) == MAX_NOTIFICATIONS, shown
        assert "job #4 is failed: nothing to cancel" in shown[-1] and not any("#1 is done" in n for n in shown)


# ---------------------------------------------------------------- 5. a resumed job's loss


def two_attempts(queue, project: str) -> int:
    """A 4000-step training (a point every 4th step, as the runner writes them) that diverged
    at step 2000 and failed, retried from its checkpoint at step 1600, done: the first
    attempt's points 1603…1999 (loss 2.0) lie between the second's 1601…4000 (loss 0.1)."""
    from engine.train.progress import Progress

    job = queue.enqueue("train", project, side="a", label="train A", total=4000)
    queue.claim(None)
    for step in range(3, 2000, 4):
        loss = 0.5 if step <= 1600 else 2.0
        queue.report_progress(job.id, Progress(step, 4000, loss, loss, 1e-3, 10.0, 60.0, 1.0), point=True)
    queue.finish(job.id, "failed", error="loss became nan at step 2001")
    with queue.transaction() as db:  # that attempt ran a while ago
        db.execute("UPDATE points SET t = t - 1000 WHERE job_id = ?", (job.id,))
    queue.retry(job.id)
    assert queue.claim(None).id == job.id
    queue.set_start_step(job.id, 1600, 4000)
    for step in [*range(1601, 4000, 4), 4000]:
        queue.report_progress(job.id, Progress(step, 4000, 0.1, 0.1, 1e-3, 10.0, 60.0, 1.0), point=True)
    queue.finish(job.id, "done")
    return job.id


async def test_a_resumed_job_shows_its_newest_attempts_loss(tmp_path, monkeypatch):
    from copylora_tui.screens.monitor import MonitorScreen
    from engine.jobs.queue import Queue

    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    queue = Queue()
    job_id = two_attempts(queue, str(folder.resolve()))
    queue.close()
    app = CopyloraApp(folder.parent, poll_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.snapshot.job(job_id) is not None)
        await pilot.press("3")  # the newest job's monitor
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.query_one("#loss-curve").values)
        values = app.screen.query_one("#loss-curve").values
        assert 2.0 not in values  # the failed attempt's steps past the checkpoint are gone
        assert values[-1] == 0.1 and values.count(0.5) == len(range(3, 1601, 4))
        assert "smoothed 0.1000" in screen_text(app) and "resumed at step 1600" in screen_text(app)


def test_newest_attempt_keeps_the_last_curve_until_the_new_attempt_writes():
    from copylora_tui.core.history import newest_attempt

    old = [{"step": s, "t": 100.0 + s} for s in (10, 20, 30)]
    assert newest_attempt(old, 500.0, 20) == old  # resumed, still loading its model: nothing of its own yet
    new = old + [{"step": 25, "t": 600.0}]
    assert [p["step"] for p in newest_attempt(new, 500.0, 20)] == [10, 20, 25]
    assert newest_attempt(new, None, None) == new


# ---------------------------------------------------------------- 2, 3, 4, 6: the screens at 80×24 and 100×30

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
