"""The Projects screen and its dialogs, driven with the pilot: list, empty state, new
project (a bad picture path first, then a good one), run, delete, stats, navigation."""

from __future__ import annotations

import threading

from textual.widgets import DataTable, Input, Static

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.new_project import NewProjectScreen
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.screens.queue import QueueScreen
from copylora_tui.screens.stats import StatsScreen
from engine.jobs.queue import Queue
from tests.helpers import snapshot, write_png
from tests.test_app_support import burst, make_projects, mark_trained, notices, screen_text, use_home, wait_until, write_stats


def table(app) -> DataTable:
    return app.screen.query_one("#projects", DataTable)


async def test_lists_projects_with_their_state(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, ("example-monochrome", "day-night"))
    mark_trained(projects / "day-night", ("a",))
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 2)
        rows = [table(app).get_row_at(i) for i in range(2)]
        assert [str(r[0]) for r in rows] == ["day-night", "example-monochrome"]
        assert str(rows[0][2]) == "✓ trained" and str(rows[0][3]) == "—" and str(rows[0][1]) == "tiny"
        await wait_until(pilot, lambda: "n New" in screen_text(app))
        text = screen_text(app)
        assert "worker not running" in text and "r Run" in text and "d Delete" in text


async def test_home_and_end_go_to_the_first_and_last_project(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, ("alpha", "beta", "gamma"))
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 3)
        await pilot.press("end")
        await wait_until(pilot, lambda: table(app).cursor_row == 2 and "gamma: base" in screen_text(app))
        await pilot.press("home")
        await wait_until(pilot, lambda: table(app).cursor_row == 0 and "alpha: base" in screen_text(app))


async def test_empty_folder_says_how_to_make_a_project(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    app = CopyloraApp(tmp_path / "none")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: "copylora new" in screen_text(app))
        assert "press n" in screen_text(app).lower() or "Press n" in screen_text(app)
    odd = tmp_path / "[[x]] [b]y"  # shown as named (Textual's escape read "[[" as "[\[")
    app = CopyloraApp(odd)
    async with app.run_test(size=(120, 24)) as pilot:
        await wait_until(pilot, lambda: "copylora new" in screen_text(app))
        assert f"No projects in {odd}/ yet." in screen_text(app)


async def test_new_project_bad_path_writes_nothing_then_good_one_is_created(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    a, b = write_png(tmp_path / "pics" / "a.png"), write_png(tmp_path / "pics" / "b.png", colour=(90, 90, 90))
    before = snapshot(projects)
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        await pilot.press("n")
        assert isinstance(app.screen, NewProjectScreen)
        dialog = app.screen
        dialog.query_one("#new-name", Input).value = "mono"
        dialog.query_one("#new-a", Input).value = str(tmp_path / "pics" / "missing.png")
        dialog.query_one("#new-b", Input).value = str(b)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, NewProjectScreen)  # still open, with the error at the field
        assert "no such file" in str(dialog.query_one("#error-a").render())
        assert str(dialog.query_one("#error-b").render()) == ""
        assert snapshot(projects) == before and not (projects / "mono").exists()
        dialog.query_one("#new-a", Input).value = str(a)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: table(app).row_count == 2)
        assert (projects / "mono" / "copylora.toml").is_file() and (projects / "mono" / "a" / "a.png").is_file()
        assert str(table(app).get_row_at(table(app).cursor_row)[0]) == "mono"  # the new one is selected


async def test_keys_typed_ahead_of_enter_or_tab_go_to_the_next_field(tmp_path, monkeypatch):
    """A burst of keys (a lag spike over SSH, a paste): "abc⏎def⏎ghi" gave name "abcdef" and
    picture B "ghi", focus moving after the keys behind it had gone to the old field."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        await pilot.press("n")
        dialog = app.screen
        burst(app, "abc\rdef\tghi\r")
        await wait_until(pilot, lambda: dialog.query_one("#new-b", Input).value == "ghi")
        assert [dialog.query_one(f"#new-{key}", Input).value for key in ("name", "a", "b")] == ["abc", "def", "ghi"]
        assert app.focused is dialog.query_one("#new-base", Input)
        burst(app, "\t\r")  # to the Create button, which enter presses: the pictures do not exist
        await wait_until(pilot, lambda: "no such file" in str(dialog.query_one("#error-a").render()))
        assert isinstance(app.screen, NewProjectScreen)


async def test_new_project_rejects_a_name_taken_or_with_a_slash(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    a = write_png(tmp_path / "a.png")
    app = CopyloraApp(projects)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        dialog = app.screen
        for name, message in (("example-monochrome", "already exists"), ("x/y", "without /")):
            dialog.query_one("#new-name", Input).value = name
            dialog.query_one("#new-a", Input).value = str(a)
            dialog.query_one("#new-b", Input).value = str(a)
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert message in str(dialog.query_one("#error-name").render())
        await pilot.press("escape")
        assert not isinstance(app.screen, NewProjectScreen)


async def test_new_project_says_a_pasted_nul_or_an_overlong_name_under_its_field(tmp_path, monkeypatch):
    """A NUL pasted into the name or the base model ended the app (os.path's ValueError); a
    name or picture path longer than the filesystem allows was "could not write the project"
    with the OS's message, under no field. Each is now its field's problem, nothing written."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    a = write_png(tmp_path / "a.png")
    before = snapshot(projects)
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        dialog = app.screen
        cases = (("name", "p\x00q", "NUL character"), ("name", "n" * 300, "too long for a file name"),
                 ("a", str(tmp_path / ("x" * 300 + ".png")), "File name too long"), ("base", "tiny\x00", "NUL character"))
        for field, value, message in cases:
            values = {"name": "fine", "a": str(a), "b": str(a), "base": "tiny", field: value}
            for key, text in values.items():
                dialog.query_one(f"#new-{key}", Input).value = text
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert isinstance(app.screen, NewProjectScreen)
            assert message in str(dialog.query_one(f"#error-{field}").render()), (field, str(dialog.query_one(f"#error-{field}").render()))
        assert snapshot(projects) == before


async def test_run_queues_a_b_merge_and_starts_the_worker(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        await pilot.press("r")
        await wait_until(pilot, lambda: str(table(app).get_row_at(0)[2]) == "queued")
        jobs = Queue(env.home).jobs()
        assert {"merge", "train A+B"} <= {j.label for j in jobs}
        assert env.worker_calls, "the app starts the worker when the user runs a project"
        assert str(table(app).get_row_at(0)[2]) == "queued"
        await wait_until(pilot, lambda: "queued" in screen_text(app))
        await pilot.press("r")  # again: nothing new is queued
        await pilot.pause(0.3)
        assert len(Queue(env.home).jobs()) == len(jobs)


async def test_delete_asks_and_keeps_output_unless_ticked(tmp_path, monkeypatch):
    from copylora_tui.core.drafts import draft_path, write_draft

    env = use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, ("one", "two"))
    for name in ("one", "two"):
        mark_trained(projects / name, ("a",))
    write_draft(env.home, projects / "one", {"train.seed": "7"}, None, None)  # a hangup's edits: they go with it
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 2)
        await pilot.press("d")
        assert "Delete project one?" in screen_text(app) and "o: also output/" in screen_text(app)
        await pilot.press("n")  # keep it
        assert (projects / "one" / "copylora.toml").is_file()
        await pilot.press("d", "y")  # delete, keep output/
        await wait_until(pilot, lambda: table(app).row_count == 1)
        assert not (projects / "one" / "copylora.toml").exists() and not draft_path(env.home, projects / "one").exists()
        assert (projects / "one" / "output" / "one_A.safetensors").is_file()
        await pilot.press("d", "o", "y")  # delete with output/: a second explicit choice
        await wait_until(pilot, lambda: not table(app).display)
        assert not (projects / "two").exists()
    bare = make_projects(tmp_path / "bare", ("three",))  # no output folder: o is not offered (it did nothing)
    app = CopyloraApp(bare)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        await pilot.press("d")
        await wait_until(pilot, lambda: "Delete project three?" in screen_text(app))
        assert "y: delete  ·  n or esc: keep it" in screen_text(app) and "o: also" not in screen_text(app)


async def test_open_project_stats_and_navigation_keys(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        await pilot.press("s")  # no merge yet: a message, no screen
        assert not isinstance(app.screen, StatsScreen)
        write_stats(projects / "example-monochrome" / "output" / "example-monochrome.stats.json")
        await pilot.press("f5")
        await wait_until(pilot, lambda: app.screen.summaries and app.screen.summaries[0].stats_path is not None)
        await pilot.press("s")
        assert isinstance(app.screen, StatsScreen)
        await pilot.press("2")
        assert isinstance(app.screen, QueueScreen)
        await pilot.press("1")
        await pilot.press("enter")
        assert isinstance(app.screen, ProjectScreen)
        await pilot.press("escape")
        await pilot.press("o")
        assert isinstance(app.screen, ProjectScreen)


async def test_command_palette_lists_the_screens(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    app = CopyloraApp(make_projects(tmp_path))
    async with app.run_test(size=(100, 30)):
        names = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Projects", "Queue", "Monitor", "New project", "Run project", "Merge stats"} <= set(names)


async def test_projects_say_they_are_loading(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    release = threading.Event()
    import copylora_tui.screens.projects as screen_module

    real = screen_module.scan_projects

    def slow_scan(folder, *more):
        release.wait(5)
        return real(folder, *more)

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


async def test_a_one_lora_route_project_in_the_list_and_on_its_screen(tmp_path, monkeypatch):
    """An addift project: its one LoRA stands in both the A and B columns, its job is one
    training ("train A→B (addift)"), and its screen shows the pair's steps and its PAIR file."""
    env = use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    root = projects / "example-monochrome"
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('method = "svd-merge"', 'method = "addift"'))
    mark_trained(root, ("pair",))
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        row = table(app).get_row_at(0)
        assert str(row[2]) == "✓ trained" and str(row[3]) == "✓ trained" and str(row[4]) == "—"
        await pilot.press("r")
        await wait_until(pilot, lambda: len(Queue(env.home).jobs()) == 2)
        assert [j.label for j in Queue(env.home).jobs()] == ["result", "preview"]  # the LoRA is up to date: not trained again
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen) and "PAIR" in screen_text(app))
        text = screen_text(app)
        assert "outputs: PAIR✓ result·" in text and "A→B       200 steps: one LoRA on" in text


async def test_names_paths_and_messages_with_brackets_are_shown_as_written(tmp_path, monkeypatch):
    """What the user named is text, never Textual markup: a project folder "[bold]x" showed as
    "x", "[@click=app.quit]q" as a "q" that quit the app when clicked; the delete dialog's ticked
    "[x] ALSO DELETE output/" lost its "[x]"; a picture path "a[/]b.png" in the New dialog, and
    the same in a toast, ended the app with a MarkupError."""
    from copylora_tui.screens.confirm_delete import ConfirmDeleteScreen

    use_home(monkeypatch, tmp_path)
    names = ("[bold]x", "[@click=app.quit]q")
    projects = make_projects(tmp_path, names)
    (projects / names[0] / "output").mkdir()
    (projects / names[0] / "output" / "x_A.safetensors").write_bytes(b"0" * 10)
    app = CopyloraApp(projects)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 2)
        shown = screen_text(app)
        assert all(name in shown for name in names), shown
        table(app).move_cursor(row=[s.folder.name for s in app.screen.summaries].index(names[0]))
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDeleteScreen))
        await pilot.press("o")
        await pilot.pause()
        shown = screen_text(app)
        assert "Delete project [bold]x?" in shown and "[x] ALSO DELETE output/" in shown, shown
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmDeleteScreen))
        await pilot.press("n")
        dialog = app.screen
        assert isinstance(dialog, NewProjectScreen)
        for key, value in {"name": "fine", "a": str(tmp_path / "a[/]b.png"), "b": str(tmp_path / "a[/]b.png")}.items():
            dialog.query_one(f"#new-{key}", Input).value = value
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "a[/]b.png" in str(dialog.query_one("#error-a").render())
        dialog.notify("could not read a[/]b.png: set [train] caption")  # as the screens call it (markup=True)
        await wait_until(pilot, lambda: len(app._notifications) > 0)
        from textual.widgets._toast import Toast  # the widget a toast is drawn by (not in a headless screenshot)

        assert Toast(list(app._notifications)[-1]).render().plain == "could not read a[/]b.png: set [train] caption"
    assert app.return_code in (None, 0)


async def test_a_very_long_project_name_is_cut_in_the_table_and_whole_below_it(tmp_path, monkeypatch):
    """A 200-character name widened the name column until the other columns had scrolled off."""
    use_home(monkeypatch, tmp_path)
    long = "very-long-" * 20
    projects = make_projects(tmp_path, (long,))
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        shown = screen_text(app)
        assert "base model" in shown and "merge" in shown and "…" in shown, shown
        assert table(app).ordered_columns[0].width <= 40
        assert long in screen_text(app).replace("\n", "").replace(" ", "")  # the line under the table, wrapped


async def test_a_long_name_is_cut_to_leave_every_column_on_the_screen(tmp_path, monkeypatch):
    """At 80 columns a 40-cell name left "last output" as "Dec 0" and the output's size off the
    screen (at 100 too, once the base model column came back)."""
    use_home(monkeypatch, tmp_path)
    long = "夜景-テスト-" + "very-long-" * 6
    projects = make_projects(tmp_path, (long,))
    mark_trained(projects / long)
    app = CopyloraApp(projects)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        for size in ((80, 24), (100, 30), (60, 20)):
            await pilot.resize_terminal(*size)
            grid = table(app)
            await wait_until(pilot, lambda: sum(c.get_render_width(grid) for c in grid.ordered_columns) <= grid.size.width
                             or size[0] < 80)
            assert "output" in screen_text(app).splitlines()[2] or size[0] < 80, screen_text(app)
        assert table(app).ordered_columns[0].width >= 12  # never cut to nothing
        # at 60 columns the table scrolls sideways; a running job's new step (rows rebuilt) snapped it back
        grid = table(app)
        await wait_until(pilot, lambda: grid.max_scroll_x > 0)
        grid.scroll_to(x=grid.max_scroll_x, animate=False)
        await wait_until(pilot, lambda: grid.scroll_x == grid.max_scroll_x)
        app.screen._rows = []  # as after a poll with new cells
        app.screen.refresh_table()
        await pilot.pause(0.3)
        assert grid.scroll_x == grid.max_scroll_x > 0
        await pilot.resize_terminal(200, 30)
        await wait_until(pilot, lambda: table(app).ordered_columns[0].width == 40)


async def test_a_long_name_is_cut_to_fit_when_the_app_starts(tmp_path, monkeypatch):
    """The first scan fills the table before it is laid out, so the names were not cut then, and
    nothing cut them later while no job moved: a long Japanese name kept "last output" and the
    output's size off a 100-column screen until a resize or f5."""
    use_home(monkeypatch, tmp_path)
    long = "長い名前のプロジェクト" * 5
    projects = make_projects(tmp_path, (long, "白黒"))
    mark_trained(projects / "白黒")
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 2)
        grid = table(app)
        await wait_until(pilot, lambda: sum(c.get_render_width(grid) for c in grid.ordered_columns) <= grid.size.width)
        assert "output" in screen_text(app).splitlines()[2], screen_text(app)


async def test_a_copied_project_that_kept_its_name_shows_its_folder(tmp_path, monkeypatch):
    """`cp -r mono night` keeps [project] name: both rows read "mono", with no way to tell them
    apart (the queue and the CLI name them by folder). Rows of a shared name say their folder
    and the line under the table says why; a long name is cut, the folder kept; a project
    whose name no other has is shown as before."""
    import shutil

    use_home(monkeypatch, tmp_path)
    long = "very-long-" * 15
    projects = make_projects(tmp_path, ("mono", "solo", long))
    shutil.copytree(projects / "mono", projects / "night")
    shutil.copytree(projects / long, projects / "long-copy")
    app = CopyloraApp(projects)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 5)
        names = [str(table(app).get_row_at(i)[0]) for i in range(5)]
        assert names[0].endswith("… (long-copy/)") and len(names[0]) <= 40, names
        assert names[1:4] == ["mono (mono/)", "mono (night/)", "solo"], names
        assert names[4] == "very-long-very-… (very-long-very-long…/)", names
        await pilot.press("down", "down")
        await wait_until(pilot, lambda: "night/ has the [project] name of another project here" in screen_text(app).replace("\n", " "))
        await pilot.press("down")
        await wait_until(pilot, lambda: "solo: base" in screen_text(app))
        assert "[project] name of another" not in screen_text(app) and "all outputs current" not in screen_text(app)


async def test_a_projects_job_waiting_for_disk_room_is_said_under_the_list(tmp_path, monkeypatch):
    """A training waiting for room on a full disk stood still at its last step in the list's
    cells; the line under the table says what it waits for (its log's newest lines say it)."""
    import os

    env = use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    queue = Queue(env.home)
    job = queue.enqueue("train", str((projects / "example-monochrome").resolve()), side="ab", label="train A+B", total=200)
    queue.claim(None)
    queue.set_pid(job.id, os.getpid(), None)
    log = queue.log_path(job.id)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("12:00:00 warning: no space left on the disk of /data for the final checkpoint (A) (0.0 MB free; df -h /data): …\n")
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: "#1 waiting for room on the disk of /data: free some space there" in screen_text(app).replace("\n", " "))
        with open(log, "a") as handle:
            handle.write("12:00:20 the final checkpoint (A) written after waiting 20 s for room on the disk\n")
        await wait_until(pilot, lambda: "waiting for room" not in screen_text(app))


async def test_delete_a_project_whose_output_is_a_link_to_nothing_or_to_itself(tmp_path, monkeypatch):
    """`d` on such a project ended the app (pathlib's "Symlink loop" from resolving output/): a
    disk unmounted under a link, a link made by mistake. The link is the project's own entry: it
    goes with the project, the place it points to is never touched."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, ("loop", "dangling"))
    elsewhere = tmp_path / "elsewhere"
    (projects / "loop" / "output").symlink_to("output")
    (projects / "dangling" / "output").symlink_to(elsewhere / "gone")
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 2)
        await pilot.press("d")
        assert "Delete project dangling?" in screen_text(app)
        await pilot.press("y")
        await wait_until(pilot, lambda: table(app).row_count == 1)
        await pilot.press("d")
        assert "Delete project loop?" in screen_text(app)
        await pilot.press("y")
        await wait_until(pilot, lambda: not table(app).display)
    assert not (projects / "loop").exists() and not (projects / "dangling").exists()


async def test_a_project_whose_file_is_a_link_to_nothing_is_listed_and_says_so(tmp_path, monkeypatch):
    """Its copylora.toml linked to a shared file that moved: the project had left the list
    without a word. Now it is a row; r and s say what is wrong; d deletes the link, never the
    place it pointed to."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path, ())
    shared = tmp_path / "shared.toml"
    (projects / "moved").mkdir(parents=True)
    (projects / "moved" / "copylora.toml").symlink_to(shared)
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        said = f"copylora.toml is a link to {shared}, which does not exist"
        for key in ("r", "s"):
            await pilot.press(key)
            await wait_until(pilot, lambda: any(said in n for n in notices(app)))
            assert "moved has problems" in notices(app)[-1] or "and it has problems" in notices(app)[-1]
            app.clear_notifications()
        await pilot.press("d")
        assert "Delete project moved?" in screen_text(app)
        await pilot.press("y")
        await wait_until(pilot, lambda: not table(app).display)
    assert not (projects / "moved").exists() and projects.is_dir()


async def test_a_one_lora_route_is_one_output_under_the_table(tmp_path, monkeypatch):
    """An addift project read "steps A 200, B 200 · A: step 4/200, resumable; B: step 4/200,
    resumable", though it trains one LoRA on the pair."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    toml = projects / "example-monochrome" / "copylora.toml"
    toml.write_text(toml.read_text().replace('method = "svd-merge"', 'method = "addift"'))
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: "one LoRA on the pair" in screen_text(app))
        flat = " ".join(screen_text(app).split())
        assert "addift: one LoRA on the pair, 200 steps · A→B: no LoRA yet" in flat and "steps A" not in flat and "; B:" not in flat, flat


async def test_the_worker_line_counts_jobs_one_way(tmp_path, monkeypatch):
    """"3 job(s) wait for it · 0 running, 2 waiting": the interrupted job was in the first count
    and in neither of the others."""
    import subprocess

    env = use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    queue = Queue(env.home)
    project = str((projects / "example-monochrome").resolve())
    gone = queue.enqueue("train", project, side="a", label="train A", total=10)
    for label in ("merge", "preview", "extra"):
        queue.enqueue("merge" if label == "merge" else "sample", project, label=label)
    queue.claim(None)
    ended = subprocess.Popen(["true"])
    ended.wait()
    queue.set_pid(gone.id, ended.pid, "gone")  # its process ended, no worker: interrupted
    queue.pause(queue.jobs(("queued",))[-1].id)
    app = CopyloraApp(projects, poll_s=0.1)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: "interrupted" in screen_text(app) and "waiting" in screen_text(app))
        flat = " ".join(screen_text(app).split())
        assert "worker not running — 3 job(s) wait for it · 0 running, 1 interrupted, 2 waiting, 1 paused (2 shows them)" in flat, flat
    queue.close()


async def test_editing_keys_in_a_burst_apply_in_the_order_typed(tmp_path, monkeypatch):
    """An Input's editing keys (backspace, ctrl+u, home…) are bindings, which Textual 8.2 runs
    only once the key has bubbled up to the app, while letters are typed at once: keys arriving
    together over a lagging SSH link applied out of order. "abx⌫c" gave "abx" (the backspace
    took the c), and ctrl+u then a pasted path left the field empty (Textual issue #6605)."""
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        await pilot.press("n")
        dialog = app.screen
        name = dialog.query_one("#new-name", Input)
        burst(app, "abx\bc\tjunk\x15/data/a.png\t")
        await wait_until(pilot, lambda: app.focused is dialog.query_one("#new-b", Input))
        await pilot.pause(0.2)
        assert name.value == "abc"
        assert dialog.query_one("#new-a", Input).value == "/data/a.png"
        burst(app, "one\x01two\x05three")
        await wait_until(pilot, lambda: "three" in dialog.query_one("#new-b", Input).value)
        await pilot.pause(0.2)
        assert dialog.query_one("#new-b", Input).value == "twoonethree"


async def test_a_full_width_space_is_typed_into_a_field(tmp_path, monkeypatch):
    """A Japanese IME types U+3000 for the space bar: Input dropped it (not printable to Python)."""
    from textual import events

    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: table(app).row_count == 1)
        await pilot.press("n")
        name = app.screen.query_one("#new-name", Input)
        for char in "白\u3000黒":
            app.post_message(events.Key(char, char))
        await wait_until(pilot, lambda: name.value == "白\u3000黒")
