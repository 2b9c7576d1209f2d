"""Preview grids in the app: which file is the newest for a project or a job, its caption from
the PNG text, the half-block drawing (size and colours), and the panes of the Project and
Monitor screens: polling for new files, the open-path key and the monitor's sample-now key."""

from __future__ import annotations

import io
import os

import pytest
from rich.console import Console
from textual.widgets import Static

from copylora_tui.app import CopyloraApp
from copylora_tui.core import previews
from copylora_tui.core.halfblock import HalfBlock, fit_cells, load_thumbnail
from copylora_tui.core.previews import PreviewTarget, caption, job_target, newest, read_record
from copylora_tui.screens.monitor import MonitorScreen
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.widgets.preview_pane import HalfBlockPicture, PreviewPane
from engine.jobs.queue import Queue
from tests.test_app_support import FIXED_T, make_projects, running_job, screen_text, use_home, wait_until, write_preview


def samples(project) -> os.PathLike:
    return project / "output" / "samples"


def caption_of(pane: PreviewPane) -> str:
    return str(pane.query_one("#preview-caption", Static).render())


def record_notifications(app) -> list[tuple[str, str]]:
    """(message, severity) of every notification, still shown as usual."""
    seen = []
    original = app.notify

    def notify(message, *args, severity="information", **kwargs):
        seen.append((str(message), severity))
        return original(message, *args, severity=severity, **kwargs)

    app.notify = notify
    return seen


# ---------------------------------------------------------------------- files and captions


def test_newest_by_time_then_name_skipping_temporary_and_other_files(tmp_path):
    folder = tmp_path / "samples"
    write_preview(folder / "mono_A-step000100.png", strengths=(1.0,), step=100, side="a", mtime=FIXED_T)
    write_preview(folder / "mono_A-step000200.png", strengths=(1.0,), step=200, side="a", mtime=FIXED_T)  # same time: name decides
    write_preview(folder / "mono_B-step000300.png", strengths=(1.0,), step=300, side="b", mtime=FIXED_T + 5)
    write_preview(folder / "mono-grid.png", mtime=FIXED_T + 1)
    (folder / ".mono-grid.png.x1y2.tmp").write_bytes(b"half written")
    (folder / "notes.txt").write_text("not a picture")
    assert newest(PreviewTarget(folder)).path.name == "mono_B-step000300.png"
    assert newest(PreviewTarget(folder, "mono_A-step*.png")).path.name == "mono_A-step000200.png"
    assert newest(PreviewTarget(folder, "mono-grid.png")).path.name == "mono-grid.png"
    assert newest(PreviewTarget(tmp_path / "nowhere")) is None
    same = newest(PreviewTarget(folder))
    assert newest(PreviewTarget(folder)) == same  # unchanged files compare equal: nothing is decoded again


def test_job_targets(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue()
    train_b = queue.enqueue("train", str(project), side="b", label="train B", total=10)
    merge = queue.enqueue("merge", str(project), label="merge")
    preview = queue.enqueue("sample", str(project), label="preview")
    reg = queue.enqueue("reg", str(project), label="class images")
    target = job_target(train_b)
    assert target.folder == project / "output" / "samples" and target.pattern == "example-monochrome_B-step*.png"
    assert job_target(merge).pattern == job_target(preview).pattern == "example-monochrome-grid.png"
    assert job_target(reg) == previews.NO_PREVIEWS
    twin = queue.enqueue("train", str(project), side="ab", label="train A+B", total=10)
    pair = queue.enqueue("train", str(project), side="pair", label="train A→B (addift)", total=10)
    assert job_target(twin).pattern == "example-monochrome_[AB]-step*.png"
    assert job_target(pair).pattern == "example-monochrome_PAIR-step*.png"  # one LoRA's previews, not one per letter of "pair"
    queue.close()


def test_caption_from_the_png_text_without_decoding(tmp_path, monkeypatch):
    from PIL import Image

    grid = write_preview(tmp_path / "mono-grid.png")
    step = write_preview(tmp_path / "mono_A-step000100.png", strengths=(1.0,), step=100, side="a")

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the caption must not decode pixels")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.PngImagePlugin.PngImageFile.load", no_decoding)
    assert caption(read_record(grid)) == "strength 0 | 1 · seed 1234 · 8 steps"
    assert caption(read_record(step)) == "strength 1 · seed 1234 · 8 steps · step 100"
    monkeypatch.undo()
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    assert caption(read_record(plain)) == "no copylora parameters in this PNG"
    assert caption({"settings": {"strengths": "x"}}) == "unreadable copylora parameters"


# ---------------------------------------------------------------------- half blocks


def test_fit_cells_keeps_the_aspect_with_two_pixels_per_cell():
    assert fit_cells(1024, 800, 36, 13) == (33, 13)  # a 2-column grid of 512x768 (+labels): height-bound
    assert fit_cells(192, 144, 40, 20) == (40, 15)  # width-bound: 40 px wide → 30 px = 15 rows
    assert fit_cells(96, 144, 30, 10) == (13, 10)
    assert fit_cells(100, 100, 0, 10) == (0, 0)
    cols, rows = fit_cells(4000, 10, 30, 10)
    assert (cols, rows) == (30, 1)  # never less than one row


def render_ansi(renderable, color_system: str) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=60, color_system=color_system, force_terminal=True, legacy_windows=False)
    console.print(renderable)
    return out.getvalue().splitlines()


def test_half_block_renderable_size_and_colours(tmp_path):
    picture = load_thumbnail(write_preview(tmp_path / "g.png", size=(96, 128)))  # 192x144
    block = HalfBlock(picture, 40, 20)
    assert block.size() == (40, 15)
    lines = render_ansi(block, "truecolor")
    assert len(lines) == 15
    assert "▀" in lines[0] and "\x1b[38;2;" in lines[0] and "48;2;" in lines[0]
    assert HalfBlock(picture, 20, 20).size() == (20, 8)  # 20 px wide → 15 px tall, rounded to 8 rows
    eight_bit = render_ansi(block, "256")
    assert "\x1b[38;2;" not in "".join(eight_bit) and "38;5;" in eight_bit[-1]  # TEXTUAL_COLOR_SYSTEM=256 terminals


def test_half_block_is_centred_in_its_box_and_the_widget_asks_for_its_rows(tmp_path):
    from rich.text import Text

    picture = load_thumbnail(write_preview(tmp_path / "g.png", size=(96, 128)))  # 192x144
    plain = [Text.from_ansi(line).plain for line in render_ansi(HalfBlock(picture, 34, 10), "truecolor")]
    assert len(plain) == 10  # height-bound: 20 px tall → 27 px wide
    assert {len(line) - len(line.lstrip()) for line in plain} == {(34 - 27) // 2}
    assert {len(line.strip()) for line in plain} == {27}
    assert HalfBlockPicture(picture).get_content_height(None, None, 34) == 13  # 34 px wide → 25.5 px tall


# ---------------------------------------------------------------------- the Project screen


async def test_project_pane_shows_the_newest_preview_and_follows_new_ones(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    folder = (make_projects(tmp_path) / "example-monochrome").resolve()
    decoded = []
    import copylora_tui.widgets.preview_pane as pane_module

    def counting(path):
        decoded.append(path.name)
        return load_thumbnail(path)

    monkeypatch.setattr(pane_module, "load_thumbnail", counting)
    app = CopyloraApp(folder.parent, poll_s=0.1)
    notes = record_notifications(app)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_open_project(folder)
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen) and "no preview yet" in screen_text(app))
        pane = app.screen.query_one("#project-preview", PreviewPane)
        await pilot.press("ctrl+o")
        assert notes[-1] == ("no preview shown yet", "warning")
        write_preview(samples(folder) / "example-monochrome_A-step000100.png", strengths=(1.0,), step=100, side="a", mtime=FIXED_T)
        await wait_until(pilot, lambda: caption_of(pane) == "strength 1 · seed 1234 · 8 steps · step 100")
        assert pane.query(HalfBlockPicture) and pane.shown.name == "example-monochrome_A-step000100.png"
        grid = write_preview(samples(folder) / "example-monochrome-grid.png", mtime=FIXED_T + 60)
        await wait_until(pilot, lambda: pane.shown == grid)
        assert caption_of(pane) == "strength 0 | 1 · seed 1234 · 8 steps" and "strength 0 | 1" in screen_text(app)
        await pilot.pause(0.5)  # several polls of an unchanged folder
        assert decoded == ["example-monochrome_A-step000100.png", "example-monochrome-grid.png"]
        await pilot.press("ctrl+o")
        assert notes[-1][0].startswith(str(grid)) and app.clipboard == str(grid)
        grid.write_bytes(grid.read_bytes()[:300])  # damaged: the pane says so, and ctrl+o where it is ("no preview shown yet")
        await wait_until(pilot, lambda: pane.shown is None)
        await pilot.press("ctrl+o")
        assert notes[-1] == (f"{grid} cannot be read (see the pane)", "warning")


# ---------------------------------------------------------------------- the Monitor screen


async def open_monitor(pilot, app, job_id):
    app.action_show_monitor(job_id)
    await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and f"#{job_id}" in screen_text(app))


async def test_monitor_pane_shows_the_jobs_own_previews_and_o_reports_the_path(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, side="a", step=150, total=400)
    write_preview(samples(project) / "example-monochrome_B-step000300.png", strengths=(1.0,), step=300, side="b", mtime=FIXED_T + 9)
    write_preview(samples(project) / "example-monochrome-grid.png", mtime=FIXED_T + 9)
    app = CopyloraApp(project.parent, poll_s=0.1)
    notes = record_notifications(app)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, job.id)
        pane = app.screen.query_one("#monitor-preview", PreviewPane)
        await wait_until(pilot, lambda: "(v samples now)" in screen_text(app))  # B's and the grid are not A's
        assert pane.shown is None
        step = write_preview(samples(project) / "example-monochrome_A-step000100.png", strengths=(1.0,), step=100, side="a")
        await wait_until(pilot, lambda: pane.shown == step)
        assert caption_of(pane).endswith("step 100") and "A-step000100.png" in screen_text(app)
        await pilot.press("o")
        assert notes[-1][0].startswith(str(step)) and app.clipboard == str(step)
        assert "o Preview" in screen_text(app) and "v Sample" in screen_text(app)
    queue.close()


def test_a_jobs_previews_are_those_written_while_it_ran(tmp_path):
    """The Monitor of a job cancelled at step 35 showed a step-40 preview another run wrote later."""
    import os

    from copylora_tui.core.previews import job_target

    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(tmp_path / "state")
    job = queue.enqueue("train", str(project), side="b", label="train B", total=400)
    queue.claim(None)
    queue.finish(job.id, "cancelled")
    job = queue.get(job.id)
    own = write_preview(samples(project) / "example-monochrome_B-step000030.png", strengths=(1.0,), step=30, side="b",
                        mtime=job.created_at)  # as the job began (a file's clock may read a few ms behind time.time())
    later = write_preview(samples(project) / "example-monochrome_B-step000040.png", strengths=(1.0,), step=40, side="b")
    os.utime(later, (job.finished_at + 60, job.finished_at + 60))  # written a minute after the job ended
    assert newest(job_target(job)).path == own
    queue.close()


async def test_v_asks_a_running_training_for_a_preview_and_explains_otherwise(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=5, total=10)
    app = CopyloraApp(project.parent, poll_s=0.1)
    notes = record_notifications(app)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, app, job.id)
        await pilot.press("v")
        await wait_until(pilot, lambda: queue.get(job.id).sample_now == 1)
        await wait_until(pilot, lambda: any("to sample at its next step" in n for n, _ in notes))
        queue.finish(job.id, "done")
        await wait_until(pilot, lambda: "done" in screen_text(app))
        await pilot.press("v")
        await wait_until(pilot, lambda: any(s == "error" for _, s in notes))
        message = next(n for n, s in notes if s == "error")
        assert message == f"job #{job.id} is a done train job: only running trainings take sample-now requests"
    queue.close()


async def test_monitor_hides_the_pane_on_a_narrow_terminal(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=5, total=10)
    step = write_preview(samples(project) / "example-monochrome_A-step000005.png", strengths=(1.0,), step=5, side="a")
    app = CopyloraApp(project.parent, poll_s=0.1)
    notes = record_notifications(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_monitor(pilot, app, job.id)
        pane = app.screen.query_one("#monitor-preview", PreviewPane)
        await wait_until(pilot, lambda: pane.shown == step)
        assert not pane.display
        await pilot.press("o")  # still reports the path
        assert notes[-1][0].startswith(str(step))
    queue.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # textual-image's use of a Pillow API
async def test_textual_image_draws_the_preview_where_the_terminal_has_pictures(tmp_path, monkeypatch):
    from copylora_tui import teacher_images

    use_home(monkeypatch, tmp_path)
    folder = (make_projects(tmp_path) / "example-monochrome").resolve()
    write_preview(samples(folder) / "example-monochrome-grid.png", mtime=FIXED_T)
    monkeypatch.setenv("COPYLORA_IMAGES", "1")
    monkeypatch.setattr(teacher_images, "_loader", None)
    monkeypatch.setattr(teacher_images, "_image_class", None)
    assert teacher_images.preload()
    app = CopyloraApp(folder.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_open_project(folder)
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen) and app.screen.query(".preview-image"))
        pane = app.screen.query_one("#project-preview", PreviewPane)
        picture = pane.query_one(".preview-image")
        assert isinstance(picture, teacher_images._image_class) and not pane.query(HalfBlockPicture)
        step = write_preview(samples(folder) / "example-monochrome_A-step000100.png", strengths=(1.0,), step=100, side="a", mtime=FIXED_T + 60)
        await wait_until(pilot, lambda: pane.shown == step)
        assert pane.query_one(".preview-image") is picture and picture.image.size == (96, 144)  # redrawn in place


async def test_a_pane_whose_target_failed_once_looks_again(tmp_path):
    from textual.app import App

    folder = tmp_path / "samples"
    calls = []

    def resolve():
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the project folder is being copied")  # gone by the next poll
        return PreviewTarget(folder)

    class One(App):
        def compose(self):
            yield PreviewPane(resolve, interval=0.05, id="pane")

    app = One()
    async with app.run_test(size=(60, 20)) as pilot:
        pane = app.query_one(PreviewPane)
        await wait_until(pilot, lambda: len(calls) >= 1)
        write_preview(folder / "x-grid.png", mtime=FIXED_T)
        await wait_until(pilot, lambda: pane.shown is not None and pane.shown.name == "x-grid.png")  # stayed on "no preview: …"
