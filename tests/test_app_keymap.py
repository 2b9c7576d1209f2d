"""A user keymap file rebinds the app's keys by binding id (posting's model)."""

from __future__ import annotations

from copylora_tui.app import CopyloraApp, binding_owners
from copylora_tui.cli.main import main
from copylora_tui.core.keymap import app_bindings, load_keymap
from copylora_tui.screens.queue import QueueScreen
from engine.jobs.queue import Queue
from tests.test_app_support import make_projects, running_job, screen_text, use_home, wait_until


def test_every_binding_has_an_id_and_the_default_keymap_lists_them(capsys):
    from copylora_tui.screens.queue import QueueScreen as Q

    assert all(b.id for b in Q.BINDINGS)
    ids = [b.id for b in app_bindings(binding_owners())]
    assert len(ids) == len(set(ids)) and {"app.queue", "queue.cancel", "monitor.sample", "project.save"} <= set(ids)
    assert main(["keymap"]) == 0
    text = capsys.readouterr().out
    assert '"queue.cancel" = "c"  # Queue: Cancel' in text
    assert len([line for line in text.splitlines() if line.startswith('"')]) == len(ids)
    from copylora_tui.core.keymap import is_key_name

    # the file `copylora keymap` prints loads back as it is: every default key passes the check
    assert all(is_key_name(key) for b in app_bindings(binding_owners()) for key in b.keys.replace(" ", "").split(","))


def test_keymap_file_problems_are_reported_and_the_rest_applies(tmp_path):
    path = tmp_path / "keymap.toml"
    path.write_text('[keymap]\n"queue.cancel" = "x"\n"queue.cancle" = "y"\n"app.queue" = 3\n')
    keymap, problems = load_keymap(binding_owners(), path)
    assert keymap == {"queue.cancel": "x"}
    assert any("unknown binding id 'queue.cancle' (did you mean 'queue.cancel'?)" in p for p in problems)
    assert any("app.queue must be keys as a string" in p for p in problems)
    path.write_text('[keymap]\n"queue.cancel" = "ctrl+x, question_mark,f5,pageup,shift+tab"\n"monitor.pause" = "not a key!!"\n'
                    '"queue.retry" = "ctrl+shift+alt+banana"\n"queue.pause" = "x,hyperdrive+x"\n'
                    '"app.queue" = "slash,minus,ctrl+backslash,underscore,plus,at,full_stop"\n')  # Textual's own names of those keys
    keymap, problems = load_keymap(binding_owners(), path)
    assert keymap == {"queue.cancel": "ctrl+x,question_mark,f5,pageup,shift+tab", "app.queue": "slash,minus,ctrl+backslash,underscore,plus,at,full_stop"}
    assert [p.split(": ", 1)[1].split(" is no key name")[0] for p in problems] == [
        "monitor.pause = 'not a key!!': 'notakey!!'", "queue.retry = 'ctrl+shift+alt+banana': 'ctrl+shift+alt+banana'",
        "queue.pause = 'x,hyperdrive+x': 'hyperdrive+x'"]
    path.write_text("[keymap\n")
    assert load_keymap(binding_owners(), path)[1][0].startswith(f"{path}: not read")
    path.write_text('[keymap]\n"queue.cancel" = ' + "9" * 5000 + "\n")  # tomllib's int limit: ValueError, at the app's start
    assert load_keymap(binding_owners(), path)[1][0].startswith(f"{path}: not read")


def test_a_keymap_saved_by_a_windows_editor_loads_or_names_its_encoding(tmp_path):
    """A BOM ("UTF-8 with BOM") read as "not read (Invalid statement (at line 1, column 1))" and
    Shift-JIS as a codec's byte offset; the comments in them are Japanese."""
    path = tmp_path / "keymap.toml"
    text = '# キーマップ（日本語のコメント）\n[keymap]\n"queue.cancel" = "x"  # 取り消し\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_keymap(binding_owners(), path) == ({"queue.cancel": "x"}, [])
    path.write_bytes(text.encode("cp932"))
    keymap, problems = load_keymap(binding_owners(), path)
    assert keymap == {} and problems == [f"{path}: not read (not UTF-8 at line 1 (byte 0x83) (it reads as Shift-JIS/cp932, as a Japanese "
                                         "Windows editor saves it): TOML files are UTF-8; save it as UTF-8 in your editor)"]


def test_a_keymap_path_under_a_home_that_does_not_exist_is_no_keymap(monkeypatch):
    from copylora_tui.core.keymap import KEYMAP_ENV, keymap_path

    monkeypatch.setenv(KEYMAP_ENV, "~nosuchuser-copylora/keymap.toml")  # expanduser: RuntimeError, at the app's start
    assert load_keymap(binding_owners(), keymap_path()) == ({}, [])


def test_a_relative_xdg_config_home_is_ignored(tmp_path, monkeypatch):
    from copylora_tui.core.keymap import KEYMAP_ENV, keymap_path

    monkeypatch.delenv(KEYMAP_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", "conf")  # invalid by the XDG spec: not ./conf of wherever the app starts
    assert keymap_path() == tmp_path / ".config" / "copylora" / "keymap.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "conf"))
    assert keymap_path() == tmp_path / "conf" / "copylora" / "keymap.toml"


async def test_rebound_keys_work_in_the_app(tmp_path, monkeypatch):
    env = use_home(monkeypatch, tmp_path)
    keymap = tmp_path / "keymap.toml"
    keymap.write_text('[keymap]\n"app.queue" = "g"\n"queue.cancel" = "x"\n"bogus.id" = "z"\n')
    monkeypatch.setenv("COPYLORA_KEYMAP", str(keymap))
    project = (make_projects(tmp_path) / "example-monochrome").resolve()
    queue = Queue(env.home)
    job = running_job(queue, project, step=10, total=200)
    notes: list[str] = []
    app = CopyloraApp(project.parent, poll_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        monkeypatch.setattr(app, "notify", lambda message, **_k: notes.append(message))
        app.apply_user_keymap()  # (it ran at mount too, before notify was recorded)
        assert any("unknown binding id 'bogus.id'" in n for n in notes)
        await pilot.press("g")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen))
        await pilot.press("c")  # no longer cancel
        await pilot.pause(0.3)
        assert queue.get(job.id).control is None
        await pilot.press("x")
        await wait_until(pilot, lambda: queue.get(job.id).control == "cancel")
        assert "x Cancel" in screen_text(app)  # the footer shows the new key


async def test_escape_closes_the_keys_panel(tmp_path, monkeypatch):
    """The palette's Keys panel did not close on escape, and came back with its screen."""
    from copylora_tui.app import CopyloraApp
    from tests.test_app_support import make_projects, use_home, wait_until

    use_home(monkeypatch, tmp_path)
    app = CopyloraApp(make_projects(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.query("#projects"))
        app.action_show_help_panel()
        await wait_until(pilot, lambda: app.screen.query("HelpPanel"))
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.screen.query("HelpPanel"))
        await pilot.press("escape")  # nothing to close: nothing happens
        await pilot.pause()
        assert app.is_running


async def test_escape_closes_the_keys_panel_before_it_leaves_a_screen(tmp_path, monkeypatch):
    """On the Monitor or a Project form, the screen's own escape (back) came first: one esc to close
    the panel left the screen too, and a form with edits warned instead of closing the panel."""
    from textual.widgets import Input

    from copylora_tui.app import CopyloraApp
    from copylora_tui.screens.project import ProjectScreen
    from tests.test_app_project import open_project
    from tests.test_app_support import make_projects, notices, use_home, wait_until

    use_home(monkeypatch, tmp_path)
    folder = make_projects(tmp_path) / "example-monochrome"
    app = CopyloraApp(folder.parent)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_project(pilot, app, folder)
        app.screen.query_one("#field-train-seed #editor", Input).value = "7"
        await wait_until(pilot, lambda: app.screen.dirty)
        app.action_show_help_panel()
        await wait_until(pilot, lambda: app.screen.query("HelpPanel"))
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.screen.query("HelpPanel"))
        assert isinstance(app.screen, ProjectScreen) and not any("unsaved changes" in n for n in notices(app))
        await pilot.press("escape")  # now the screen's own: it warns of the edits
        await wait_until(pilot, lambda: any("unsaved changes" in n for n in notices(app)))
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ProjectScreen))
