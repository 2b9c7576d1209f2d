"""The Textual app: navigation between the screens and the one poll of the queue database.

The app never runs a job itself (jobs run in the worker daemon and outlive the app); it reads
the queue twice a second in a thread and publishes the result as the typed reactive
``snapshot``, which every screen watches. Closing the app, or losing the SSH connection,
leaves jobs running; the next ``copylora`` on any terminal shows them live.

Nothing heavy is imported here: the app must open in well under a second and never loads
torch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.notifications import Notify, SeverityLevel
from textual.reactive import var
from textual.screen import ModalScreen, Screen

from copylora_tui.core.reader import QueueReader
from copylora_tui.core.snapshot import QueueSnapshot, read_snapshot

POLL_S = 0.5
MAX_NOTIFICATIONS = 3  # on screen at once: a held key must not stack toasts over the table


class CopyloraApp(App[int]):
    TITLE = "copylora"
    SUB_TITLE = "copy-machine LoRAs"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("1", "show_projects", "Projects", id="app.projects"),
        Binding("2", "show_queue", "Queue", id="app.queue"),
        Binding("3", "show_monitor", "Monitor", id="app.monitor"),
        Binding("q", "quit", "Quit", id="app.quit", show=False),
        # The palette's "Keys" panel stayed open (and came back with its screen): escape closes
        # it where the screen has no escape of its own.
        Binding("escape", "hide_keys", "Hide keys", id="app.hide_keys", show=False),
        Binding("ctrl+z", "suspend", "Suspend", id="app.suspend", show=False),
    ]

    snapshot: var[QueueSnapshot] = var(QueueSnapshot)
    """The latest read of the queue; screens watch it."""

    clock: Callable[[], float] = staticmethod(time.time)
    """Now, for durations such as "running for" (snapshot tests fix it)."""

    class SnapshotRead(Message):
        """Posted by the poll thread with a fresh snapshot."""

        def __init__(self, snapshot: QueueSnapshot) -> None:
            super().__init__()
            self.snapshot = snapshot

    def __init__(self, projects_dir: str | Path = "projects", *, home: str | Path | None = None, poll_s: float = POLL_S) -> None:
        super().__init__()
        from copylora_tui.control_codes import guard_displayed_text

        guard_displayed_text()  # a shared project's folder named with an escape sequence cannot drive the terminal
        self.projects_dir = Path(projects_dir)
        self.home = home  # None: COPYLORA_HOME or ~/.local/state/copylora, as the CLI
        self.poll_s = poll_s
        self._reader = QueueReader(home)  # the poll thread's own connection
        self._opened_projects: set[Path] = set()  # opened on the Project screen since the Projects screen last asked

    def get_default_screen(self) -> Screen:
        from copylora_tui.screens.projects import ProjectsScreen

        return ProjectsScreen()

    def project_summary(self, project: str):
        """The Projects screen's summary of the project at ``project`` (a job's), as last read;
        None where it has not read it. Other screens ask it what a job alone does not say (how
        many steps each side of a twin job has), rather than read the project on the UI thread."""
        from copylora_tui.screens.projects import ProjectsScreen

        home = self.screen_stack[0] if self.screen_stack else None
        if not isinstance(home, ProjectsScreen):
            return None
        return next((s for s in home.summaries if str(s.folder) == project), None)

    def on_mount(self) -> None:
        self.apply_user_keymap()
        self.set_interval(self.poll_s, self.poll)
        self.poll()
        if not self.is_headless:
            from copylora_tui.hangup import watch_for_hangup

            watch_for_hangup(self)
        self.app_resume_signal.subscribe(self, self._repaint_after_resume)

    def _repaint_after_resume(self, _app: App) -> None:
        """Back from ctrl+z (fg): the terminal's screen was the shell's, and Textual repaints
        only what changes, so the Projects screen came back blank but for its detail line."""
        self.screen.refresh(repaint=True, layout=True)
        self.refresh(repaint=True, layout=True)

    def apply_user_keymap(self) -> None:
        """The user's keymap file (copylora_tui.core.keymap), if there is one."""
        from copylora_tui.core.keymap import load_keymap

        keymap, problems = load_keymap(binding_owners())
        if keymap:
            self.set_keymap(keymap)
        for problem in problems:
            self.notify(problem, title="keymap", severity="warning", timeout=10)

    # ------------------------------------------------------------------ polling

    def poll(self) -> None:
        """Read the queue in a thread, unless the last read is still going (a busy database
        must not pile up readers)."""
        if self._reader.begin():
            self._read_queue()

    @work(thread=True, group="poll", exit_on_error=False)
    def _read_queue(self) -> None:
        try:
            snapshot = read_snapshot(self._reader.queue(), self._reader.jobs)
        except Exception as exc:  # the state folder cannot be created or opened
            snapshot = QueueSnapshot(error=str(exc))
        finally:
            self._reader.end()
        self.post_message(self.SnapshotRead(snapshot))

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information", timeout: float | None = None,
               markup: bool = True) -> None:
        """Every toast is plain text, whatever the caller asked (screens pass markup=True, their
        default): toasts carry project names, paths and error messages, and in markup
        "[train] caption" lost its "[train]", a picture named "[Pony] x.png" its brackets, and a
        "[/]" in a path ended the app with a MarkupError."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def keep_unsaved_edits(self) -> list[Path]:
        """The terminal is gone (hangup.py): each open form's unsaved edits go to a draft, taken
        back when the project is opened next (core/drafts.py). Never raises: the app is leaving."""
        from copylora_tui.core.drafts import write_draft
        from engine.jobs.state_home import state_folder

        kept = []
        for screen in self.screen_stack:
            try:
                edits = screen.unsaved_edits() if hasattr(screen, "unsaved_edits") else None
                if edits is not None:
                    kept.append(write_draft(state_folder(self.home), screen.folder, *edits))
            except Exception:  # a full disk, a screen half taken down: the hangup still leaves
                pass
        return kept

    def action_help_quit(self) -> None:
        """ctrl+c says how to quit, in plain text (Textual's own says it in markup, and toasts
        here are plain: it showed "Press [b]q[/b] to quit the app")."""
        keys = [key for key, active in self.active_bindings.items() if active.binding.action in ("quit", "app.quit")]
        if keys:
            self.notify(f"Press {self.get_key_display(self.active_bindings[keys[0]].binding)} to quit the app",
                        title="Do you want to quit?")

    def action_suspend(self) -> None:
        """ctrl+z stops the app where a shell can bring it back with fg (copylora_tui/suspend.py);
        elsewhere it says why not, instead of leaving the screen for good."""
        from copylora_tui.suspend import NO_SHELL, shell_can_resume

        if shell_can_resume():
            self.action_suspend_process()
        else:
            self.notify(NO_SHELL, timeout=6)

    def on_notify(self, event: Notify) -> None:
        """Before Textual's own handler shows ``event``'s toast: the same message already on
        screen goes (the new one replaces it, its time starting again), and of the others only
        the newest ``MAX_NOTIFICATIONS - 1`` stay. Holding a key (c on a done job, ctrl+s)
        used to stack one toast per repeat over the table."""
        new = event.notification
        shown = list(self._notifications)
        for old in shown:
            if (old.message, old.title, old.severity) == (new.message, new.title, new.severity):
                self._unnotify(old, refresh=False)
        for old in list(self._notifications)[: -(MAX_NOTIFICATIONS - 1) or None]:
            self._unnotify(old, refresh=False)

    def on_copylora_app_snapshot_read(self, message: SnapshotRead) -> None:
        self.snapshot = message.snapshot

    def queue_command(self, command: Callable, *, done: Callable[[str], None] | None = None) -> None:
        """Run ``command(queue) -> message`` in a thread with its own connection; show the
        message (or the QueueError's) and poll at once so the screen shows the change."""
        self._run_command(command, done)

    @work(thread=True, group="command", exit_on_error=False)
    def _run_command(self, command: Callable, done: Callable[[str], None] | None) -> None:
        from engine.errors import CopyloraError
        from engine.jobs.queue import Queue

        queue = None
        try:
            queue = Queue(self.home)
            message = command(queue)
        except CopyloraError as exc:
            self.call_from_thread(self.notify, str(exc), severity="error", timeout=8)
        except Exception as exc:  # a bug must be seen, not vanish with the thread; the app goes on
            self.call_from_thread(self.notify, f"internal error: {type(exc).__name__}: {exc}", severity="error", timeout=12)
        else:
            if message:
                self.call_from_thread(self.notify, message)
            if done is not None:
                self.call_from_thread(done, message)
        finally:
            if queue is not None:
                queue.close()
            self.call_from_thread(self.poll)

    def on_unmount(self) -> None:
        self._reader.close()

    async def action_quit(self) -> None:
        """ctrl+q, q and the palette's Quit: a form with unsaved edits warns first (as its
        escape does) and the same key again quits; jobs go on in the worker either way."""
        from copylora_tui.screens.unsaved import may_quit

        if may_quit(self.screen_stack):
            self.exit()

    # ------------------------------------------------------------------ navigation

    def close_screen(self, screen: Screen, result=None) -> None:
        """Take ``screen`` off the top of the stack (a dialog with ``result``). Nothing happens
        if it is no longer on top: a second escape that arrived while it was closing must not
        pop the screen under it (or the last one, which ends the app with ScreenStackError)."""
        if self.screen is not screen or len(self.screen_stack) < 2 or screen._closing:
            return
        if isinstance(screen, ModalScreen):
            screen.dismiss(result)
        else:
            self.pop_screen()

    def action_hide_keys(self) -> None:
        self.close_keys_panel()

    def close_keys_panel(self) -> bool:
        """Close the palette's Keys panel if it is open (True then). The screens' back actions ask
        this first: their escape comes before the app's, and one esc to close the panel left the
        screen too (a form with edits warned instead of closing it). Not a priority binding: that
        took "esc Back" out of the footer."""
        if not self.screen.query("HelpPanel"):
            return False
        self.action_hide_help_panel()
        return True

    def _in_dialog(self) -> bool:
        return isinstance(self.screen, ModalScreen)

    def _to_base(self, key: str) -> bool:
        """Back to the Projects screen, unless a screen on the way holds unsaved edits: it warns
        and stays, and ``key`` again leaves (as escape does on the form); False when it stayed."""
        from copylora_tui.screens.unsaved import AsksBeforeLosingEdits

        for screen in reversed(self.screen_stack[1:]):
            if isinstance(screen, AsksBeforeLosingEdits) and not screen.may_discard_edits(key, "leaves"):
                return False
        while len(self.screen_stack) > 1:
            self.pop_screen()
        return True

    def action_show_projects(self) -> None:
        if not self._in_dialog():
            self._to_base("1")

    def action_show_queue(self) -> None:
        from copylora_tui.screens.queue import QueueScreen

        if self._in_dialog() or isinstance(self.screen, QueueScreen):
            return
        if self._to_base("2"):
            self.push_screen(QueueScreen())

    def action_show_monitor(self, job_id: int | None = None) -> None:
        """The monitor of ``job_id``; without one: the job highlighted on this screen, else
        the running job, else the newest job."""
        from copylora_tui.screens.monitor import MonitorScreen

        if self._in_dialog():
            return
        if job_id is None:
            job_id = getattr(self.screen, "selected_job_id", lambda: None)()
        if job_id is None:
            jobs = self.snapshot.jobs
            running = [j for j in jobs if j.live]
            pick = running[0] if running else max(jobs, key=lambda j: j.id, default=None)
            job_id = pick.id if pick else None
        if job_id is None:
            self.notify("No jobs yet: run a project first (r on the Projects screen).")
            return
        if isinstance(self.screen, MonitorScreen):
            if self.screen.job_id == job_id:
                return
            self.pop_screen()
        self.push_screen(MonitorScreen(job_id))

    def action_open_project(self, folder: Path) -> None:
        from copylora_tui.screens.project import ProjectScreen

        if self._to_base("o"):
            self._opened_projects.add(Path(os.path.realpath(folder)))
            self.push_screen(ProjectScreen(folder))

    def take_opened_projects(self) -> set[Path]:
        """The projects opened (and so perhaps edited) since the last call: the Projects screen
        reads these again when it comes back, whatever else it leaves for later."""
        opened, self._opened_projects = self._opened_projects, set()
        return opened

    def action_open_stats(self, stats_path: Path) -> None:
        from copylora_tui.screens.stats import StatsScreen

        self.push_screen(StatsScreen(stats_path))

    def action_start_worker(self) -> None:
        from copylora_tui.core.actions import start_worker

        self.queue_command(lambda queue: start_worker(queue.home))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield SystemCommand("Projects", "The concept projects (key 1)", self.action_show_projects)
        yield SystemCommand("Queue", "All jobs, their progress and the worker (key 2)", self.action_show_queue)
        yield SystemCommand("Monitor", "Live progress, loss curve, GPU and log of a job (key 3)", self.action_show_monitor)
        yield SystemCommand("Start worker", "Start the background worker that runs queued jobs", self.action_start_worker)
        yield from screen_commands(screen)
        yield from super().get_system_commands(screen)


def screen_commands(screen: Screen) -> Iterable[SystemCommand]:
    """Commands a screen offers for itself (its ``palette_commands``), e.g. New project."""
    commands = getattr(screen, "palette_commands", None)
    if commands is not None:
        yield from commands()


def run_app(projects_dir: str | Path = "projects", home: str | Path | None = None) -> int:
    from copylora_tui.teacher_images import preload

    preload()  # before Textual owns the terminal: textual-image asks the terminal what it can draw
    app = CopyloraApp(projects_dir, home=home)
    app.run()
    return app.return_code or 0


def binding_owners() -> list[tuple[type, str]]:
    """The app and its screens with where their keys work, in the order ``copylora keymap``
    lists them: the keymap (copylora_tui.core.keymap) is below the screens and is handed them."""
    from copylora_tui.screens.confirm_delete import ConfirmDeleteScreen
    from copylora_tui.screens.monitor import MonitorScreen
    from copylora_tui.screens.new_project import NewProjectScreen
    from copylora_tui.screens.project import ProjectScreen
    from copylora_tui.screens.projects import ProjectsScreen
    from copylora_tui.screens.queue import QueueScreen
    from copylora_tui.screens.stats import StatsScreen

    return [(CopyloraApp, "everywhere"), (ProjectsScreen, "Projects"), (ProjectScreen, "Project"), (QueueScreen, "Queue"),
            (MonitorScreen, "Monitor"), (StatsScreen, "Merge stats"), (NewProjectScreen, "New project"), (ConfirmDeleteScreen, "Delete")]
