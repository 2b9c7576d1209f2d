"""The first screen: every concept project in the projects folder and where it stands.

Per project: are the A and B LoRAs trained and current, is the merge made and current
("stale" means ``copylora run`` would redo it because the parameters or pictures changed),
which jobs are queued or running, when it last produced something and how big output/ is.
Scanning the folder hashes images and LoRAs, so it runs in a thread; the job columns follow
the app's queue snapshot live.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Static
from textual.worker import Worker

from copylora_tui.core.formatting import STATUS_STYLE, project_label, size_text, when_text
from copylora_tui.core.projects import (
    DONE,
    RESUMABLE,
    STALE,
    ProjectSummary,
    Stamp,
    is_project_folder,
    project_stamps,
    read_projects,
    scan_projects,
    sides_apart,
    stamp,
)
from copylora_tui.core.snapshot import QueueSnapshot
from copylora_tui.widgets.app_footer import AppFooter
from copylora_tui.widgets.app_header import AppHeader
from copylora_tui.widgets.fitted_table import FittedTable, fitted_widths
from copylora_tui.widgets.guard import ActsWhileOpen, while_open
from copylora_tui.widgets.snapshot_watch import catch_up, watch_snapshot
from copylora_tui.widgets.steady import SteadyStatic
from engine.jobs.queue import Job, JobStatus
from engine.project.pair_route import PAIR_METHODS

EMPTY_HELP = """\
[b]No projects in $folder/ yet.[/b]

A project is two teacher pictures: A, and B = the same picture changed only in the way you want (colour → monochrome, day → night).

Press [b]n[/b] to make one here, or run:

    copylora new NAME --a A.png --b B.png

To try the shipped example, copy projects/example-monochrome into $folder/ and press [b]r[/b] on it."""


FULL_RESCAN_AFTER_S = 5.0  # back on this screen sooner than this after a whole scan: only the projects opened meanwhile are read
DISK_CHECK_S = 2.0  # while shown: a project made, removed or whose file changed (in a shell beside the app) shows within this
SCAN_PROGRESS_S = 0.5  # the first scan of hundreds of projects says how far it has got this often
SCAN_BUSY_SAY_S = 2.0  # f5 while a whole scan has run this long is answered (a quicker one just folds in)
CHECK_SLOW_S = 30.0  # a check that has not answered by then (a hung network disk) is said, once

NAME_CELLS = 40  # the name column's widest: the line under the table says the whole name


NAME_CELLS_LEAST = 12  # however narrow the terminal: a name cut shorter says nothing


def name_cell(name: str, folder: str | None = None, cells: int = NAME_CELLS) -> Text:
    """A project's name for its row, cut with "…" past ``cells``: a 200-character name widened
    the column until every other column had scrolled off the screen. ``folder``: the folder
    after it (see :func:`shared_names`), kept whole where the name is cut."""
    if folder is not None and len(folder) > cells // 2:
        folder = folder[:cells // 2 - 1] + "…"
    tail = f" ({folder}/)" if folder is not None else ""
    text = Text(name)
    text.truncate(max(8, cells - len(tail)), overflow="ellipsis")
    return text + tail if tail else text


def shared_names(summaries: list[ProjectSummary]) -> set[Path]:
    """The folders whose project's name another listed project has too: a project folder copied
    to start another concept (`cp -r mono night`) keeps [project] name, and both rows read
    "mono" while the queue and the CLI name them by folder. Their rows say the folder as well."""
    from collections import Counter

    counts = Counter(s.name for s in summaries)
    return {s.folder for s in summaries if counts[s.name] > 1}


def _jobs_of(jobs: list[Job], kind: str, side: str | None) -> list[Job]:
    return [j for j in jobs if (j.trains(side) if kind == "train" and side else j.kind == kind and j.side == side)]


def job_note(jobs: list[Job], kind: str, side: str | None, summary: ProjectSummary | None = None) -> str | None:
    """The job at work on one output, for the line under the table (None: no job is). The
    output's state on disk, read when the project was, says a training's checkpoint as it was
    then ("step 100/200, resumable") while the job is far past it, or paused where `r` does nothing."""
    active = next((j for j in _jobs_of(jobs, kind, side) if j.status.active), None)
    if active is None:
        return None
    at = f" at step {active.step or 0}/{active.total}" if active.total else ""
    if active.interrupted:
        return f"job #{active.id} interrupted{at} (the worker resumes it: w in the Queue)"
    if active.status is JobStatus.RUNNING:
        if summary is not None and (steps := sides_apart(active, summary)) is not None and side in ("a", "b"):
            a, b = steps
            step = active.step or 0
            if side == "a":
                return f"job #{active.id} running, step {step}/{a}" if step < a else f"trained by job #{active.id}, which trains B now"
            return f"next, after A (job #{active.id})" if step < a else f"job #{active.id} running, step {step - a}/{b}"
        return f"job #{active.id} running" + (f", step {active.step or 0}/{active.total}" if active.total else "")
    if active.status is JobStatus.PAUSED:
        return f"job #{active.id} paused{at} (the Queue resumes it: 2, then p)"
    return f"job #{active.id} queued"


def _side_after_side(job: Job, summary: ProjectSummary, side: str | None) -> Text | None:
    """A twin job that trains A, then B (they could not go as one batch) counts its steps over
    both (engine.jobs.runner): side by side its one percent showed "▶ 40%" under A and B alike,
    with A already trained. None where the job is not that (a twin batch's total is one side's)."""
    steps = sides_apart(job, summary)
    if steps is None or side not in ("a", "b"):
        return None
    a, b = steps
    step = job.step or 0
    if side == "a":
        return Text("✓ trained", style="green") if step >= a else Text(f"▶ {int(100 * step / a)}%", style="bold cyan")
    return Text("next", style="dim") if step < a else Text(f"▶ {int(100 * (step - a) / b)}%", style="bold cyan")


def side_cell(summary: ProjectSummary, jobs: list[Job], kind: str, side: str | None) -> Text:
    """What one output of a project is doing: its live job, else its state on disk."""
    mine = _jobs_of(jobs, kind, side)
    active = next((j for j in mine if j.status.active), None)
    if active is not None:
        if active.interrupted:
            return Text("interrupted", style="bold yellow")
        if active.status is JobStatus.RUNNING:
            if (one := _side_after_side(active, summary, side)) is not None:
                return one
            return Text(f"▶ {int(active.fraction * 100)}%", style="bold cyan")
        return Text(str(active.status), style=STATUS_STYLE.get(active.shown_status, ""))
    state = summary.merge if kind == "merge" else summary.sides.get(side or "")
    latest = max(mine, key=lambda j: j.id, default=None)
    if latest is not None and latest.status is JobStatus.FAILED and (state is None or state.state != DONE):
        return Text("✗ failed", style="bold red")
    if state is None:
        return Text("")
    if state.state == DONE:
        if kind != "merge":
            return Text("✓ trained", style="green")
        return Text("✓ merged" if summary.method == "svd-merge" else "✓ result", style="green")
    if state.state == STALE:
        return Text("stale", style="yellow")
    if state.state == RESUMABLE:
        return Text("resumable", style="yellow")
    return Text("—", style="dim")


ALL_COLUMNS = ("project", "base", "a", "b", "merge", "last", "size")


class ProjectsScreen(ActsWhileOpen, Screen):
    TITLE = "Projects"
    BINDINGS = [
        Binding("n", "new_project", "New", id="projects.new"),
        Binding("o", "open_project", "Open", id="projects.open"),
        Binding("r", "run_project", "Run", id="projects.run"),
        Binding("d", "delete_project", "Delete", id="projects.delete"),
        Binding("s", "open_stats", "Stats", id="projects.stats"),
        Binding("f5", "rescan", "Refresh", id="projects.rescan", show=False),
        Binding("q", "app.quit", "Quit", id="app.quit"),
        # 1 (Projects) leads here: hidden so that the footer fits 80 columns
        Binding("1", "app.show_projects", "Projects", id="app.projects", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()  # no id: a screen of this kind may still be leaving when the next arrives
        self.summaries: list[ProjectSummary] = []
        self._scanned = False
        self._select_after_scan: Path | None = None
        self._rows: list[list] = []
        self._refit_asked = False  # a refit once the table has its width is asked for (see _fit_names)
        self._generation = 0  # of the newest scan asked for, whole or of some projects
        self._full_generation = 0  # of the newest scan of the whole folder asked for
        self._full_scan_at = float("-inf")  # when it was asked for (time.monotonic)
        self._shown_generation: dict[Path, int] = {}  # per project: the scan its shown summary came from
        self._finished_jobs: set[int] | None = None
        self._stamps: dict[Path, Stamp] = {}  # per project: its file's stamp when last read, or asked to be
        self._folder_stamp: Stamp = None  # the projects folder's, likewise (a project made or removed changes it)
        self._checking_since: float | None = None  # when the disk check under way began (time.monotonic); None: none is
        self._said_slow = False  # that the one under way has not answered for CHECK_SLOW_S
        self._full_scan: Worker | None = None  # the whole scan under way, if one is
        self._scan_again = False  # a whole scan was asked for while one was under way: one more when it ends

    def compose(self) -> ComposeResult:
        yield AppHeader()
        yield SteadyStatic("", id="worker-line", classes="status-line")
        yield Static("", id="empty")
        yield FittedTable(id="projects", cursor_type="row")
        yield SteadyStatic("", id="project-detail", classes="detail")
        yield AppFooter()

    def on_mount(self) -> None:
        self.sub_title = f"{self.app.projects_dir}/"
        table = self.query_one("#projects", DataTable)
        # The first scan reads every project (headers of pictures and LoRAs, hashes): say so
        # rather than show an empty screen while it runs.
        self.query_one("#empty", Static).update(Text(f"reading the projects in {self.app.projects_dir}/ …", style="dim"))
        table.display = False
        self.rescan()
        watch_snapshot(self, self.show_snapshot)
        self.set_interval(DISK_CHECK_S, self.check_disk)

    def columns(self) -> list[tuple[str, str, int | None]]:
        """No "jobs" column: the A/B/merge cells already say queued or running. Below 92
        columns the base model moves to the line under the table, so the rest fits 80."""
        wide = self.size.width >= 92
        return [("project", "project", None)] + ([("base", "base model", 14)] if wide else []) + [
            ("a", "A", None), ("b", "B", None), ("merge", "merge", None), ("last", "last output", None), ("size", "output", None)]

    def on_resize(self) -> None:
        if self._scanned:
            self.refresh_table()

    def on_screen_resume(self) -> None:
        """Back from another screen: the projects opened there are read again (their parameters,
        and so their state, may have changed), and the whole folder when its last scan is older
        than FULL_RESCAN_AFTER_S (another program may have changed any project). Every return
        read every project: with hundreds of them, keys 1 2 1 2 ran a scan of seconds each."""
        catch_up(self, self.show_snapshot)
        opened = self.app.take_opened_projects()
        if not self._scanned:
            return  # the first scan is still under way: it reads them all
        if time.monotonic() - self._full_scan_at >= FULL_RESCAN_AFTER_S:
            self.rescan()
        elif opened:
            self.rescan_projects(opened)

    # ------------------------------------------------------------------ data

    def rescan(self, select: Path | None = None) -> bool:
        """Read the whole projects folder again (in a thread): new and removed projects too.
        One whole scan at a time: asked for while one is under way, one more follows it (False
        is returned), however often it was asked (f5 pressed on a hung network disk started a
        thread each time, each blocked until the disk answered)."""
        if select is not None:
            self._select_after_scan = select
        if self._full_scan is not None and not self._full_scan.is_finished:
            self._scan_again = True
            return False
        self._generation += 1
        self._full_generation = self._generation
        self._full_scan_at = time.monotonic()
        self._full_scan = self._scan(self._generation, None)
        return True

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is self._full_scan and event.worker.is_finished and self._scan_again:
            self._scan_again = False
            self.rescan()

    def rescan_projects(self, folders: Iterable[Path]) -> None:
        """Read these listed projects again (in a thread), and no other."""
        self._generation += 1
        self._scan(self._generation, tuple(sorted(folders)))

    @work(thread=True, group="projects-scan", exit_on_error=False)
    def _scan(self, generation: int, folders: tuple[Path, ...] | None) -> None:
        stamps: dict[Path, Stamp] = {}  # each taken before its project is read
        try:
            folder_stamp = stamp(self.app.projects_dir) if folders is None else None
            if folders is None:
                summaries = scan_projects(self.app.projects_dir, stamps, self._progress_poster(generation))
            else:  # one that is no project any more (deleted meanwhile) waits for a whole scan to go
                folders = tuple(folder for folder in folders if is_project_folder(folder))
                summaries = read_projects(list(folders), stamps)
        except Exception as exc:  # each project's own errors are its summary's: this is the folder's, or a bug
            self.post_message(self.ScanFailed(f"{type(exc).__name__}: {exc}"))
            raise
        self.post_message(self.Scanned(generation, summaries, folders, stamps, folder_stamp))

    def _progress_poster(self, generation: int) -> Callable[[int, int], None]:
        """How far a whole scan has got, posted from its thread at most every SCAN_PROGRESS_S."""
        last = [time.monotonic()]

        def post(done: int, total: int) -> None:
            if done < total and time.monotonic() - last[0] >= SCAN_PROGRESS_S:
                last[0] = time.monotonic()
                self.post_message(self.ScanProgress(generation, done, total))

        return post

    class ScanProgress(Message, bubble=False):
        """A whole scan under way has read ``done`` of ``total`` projects."""

        def __init__(self, generation: int, done: int, total: int) -> None:
            super().__init__()
            self.generation, self.done, self.total = generation, done, total

    @while_open
    def on_projects_screen_scan_progress(self, message: ScanProgress) -> None:
        if not self._scanned and message.generation == self._full_generation:  # the first list: hundreds of projects take seconds
            self.query_one("#empty", Static).update(
                Text(f"reading the projects in {self.app.projects_dir}/ … {message.done} of {message.total}", style="dim"))

    class ScanFailed(Message, bubble=False):
        """A scan ended with an error of its own: said, rather than "reading the projects …" for ever."""

        def __init__(self, error: str) -> None:
            super().__init__()
            self.error = error

    @while_open
    def on_projects_screen_scan_failed(self, message: ScanFailed) -> None:
        text = f"cannot read the projects in {self.app.projects_dir}/: {message.error} (f5 tries again)"
        if not self._scanned:
            self.query_one("#empty", Static).update(Text(text, style="red"))
        else:
            self.notify(text, severity="error", timeout=8)

    class Scanned(Message, bubble=False):
        """Projects scanned in a thread (``folders`` None: the whole folder), with the stamps of
        their files taken before; Textual drops it if the screen has closed."""

        def __init__(self, generation: int, summaries: list[ProjectSummary], folders: tuple[Path, ...] | None,
                     stamps: dict[Path, Stamp], folder_stamp: Stamp) -> None:
            super().__init__()
            self.generation, self.summaries, self.folders = generation, summaries, folders
            self.stamps, self.folder_stamp = stamps, folder_stamp

    def on_projects_screen_scanned(self, message: Scanned) -> None:
        if not self._show_scan(message.generation, message.summaries, message.folders):
            return
        mine = {folder: s for folder, s in message.stamps.items() if self._shown_generation.get(folder) == message.generation}
        if message.folders is None:  # the listed projects only: a removed one is no longer checked
            self._stamps = {s.folder: mine.get(s.folder, self._stamps.get(s.folder)) for s in self.summaries}
            self._folder_stamp = message.folder_stamp
        else:
            self._stamps.update(mine)

    @while_open
    def check_disk(self) -> None:
        """Every DISK_CHECK_S while this screen is shown: has a project been made or removed, or
        a project file changed (`copylora new` or an editor in a pane beside the app)? A stat
        each, in a thread: a projects folder on a network disk must not stall the keys."""
        if not self._scanned or not self.is_active:
            return
        if self._checking_since is not None:
            # One check at a time, however long it takes: a stat on a hung network disk blocks its
            # thread until the disk answers, and a new check every CHECK_SLOW_S piled up a stuck
            # thread each time. The list stays as last read; the user is told why it may be stale.
            if not self._said_slow and time.monotonic() - self._checking_since >= CHECK_SLOW_S:
                self._said_slow = True
                self.notify(f"{self.app.projects_dir}/ has not answered for {CHECK_SLOW_S:.0f} s (a network disk?): "
                            "the list shows the projects as last read", severity="warning", timeout=10)
            return
        self._checking_since = time.monotonic()
        self._check_disk(dict(self._stamps), self._folder_stamp)

    @work(thread=True, group="projects-disk-check", exit_on_error=False)
    def _check_disk(self, known: dict[Path, Stamp], folder_stamp: Stamp) -> None:
        try:
            now = stamp(self.app.projects_dir)
            watched = {s.folder: s.inputs for s in self.summaries if s.inputs is not None}  # (a list read once: the UI thread replaces it)
            changed = project_stamps({folder: watched.get(folder) for folder in known}) if now == folder_stamp else {}
            changed = {folder: s for folder, s in changed.items() if s != known[folder]}
            self.post_message(self.DiskChanged(now if now != folder_stamp else None, changed))
        except BaseException:
            self.post_message(self.DiskChanged(None, {}))
            raise

    class DiskChanged(Message, bubble=False):
        """What a disk check found: the projects folder's new stamp (None: unchanged), the projects
        whose file changed with their new stamps."""

        def __init__(self, folder_stamp: Stamp, changed: dict[Path, Stamp]) -> None:
            super().__init__()
            self.folder_stamp, self.changed = folder_stamp, changed

    def on_projects_screen_disk_changed(self, message: DiskChanged) -> None:
        self._checking_since = None
        if self._said_slow:
            self._said_slow = False
            self.notify(f"{self.app.projects_dir}/ answers again", timeout=5)
        if not self.is_active:  # (is_current holds under a screen that is not modal too)
            return  # another screen came up while it ran: the first check once back here finds it again
        if message.folder_stamp is not None:  # asked once: the check does not ask again while the scan runs
            self._folder_stamp = message.folder_stamp
            self.rescan()
        elif message.changed:
            self._stamps.update(message.changed)
            self.rescan_projects(message.changed)

    def _show_scan(self, generation: int, summaries: list[ProjectSummary], folders: tuple[Path, ...] | None) -> bool:
        """Scans overlap (jobs finish in a burst, keys come faster than scans): a whole scan is
        shown only if it is the newest one asked for, and no project's summary is replaced by one
        read before it (a whole scan that began before a project's own scan and ended after)."""
        shown = self._shown_generation
        if folders is None:
            if generation != self._full_generation:
                return False  # a newer whole scan is under way
            current = {s.folder: s for s in self.summaries}
            merged = []
            for summary in summaries:
                if shown.get(summary.folder, -1) > generation and summary.folder in current:
                    merged.append(current[summary.folder])  # read again since this scan began
                else:
                    merged.append(summary)
                    shown[summary.folder] = generation
            self.summaries = merged
            self._scanned = True
        else:
            listed = {s.folder for s in self.summaries}
            # only projects listed already: a new one is listed by the whole scan that finds it
            fresh = {s.folder: s for s in summaries if s.folder in listed and shown.get(s.folder, -1) < generation}
            if not fresh:
                return False
            self.summaries = [fresh.get(s.folder, s) for s in self.summaries]
            shown.update({folder: generation for folder in fresh})
        self.refresh_table()
        return True

    @while_open
    def show_snapshot(self, snapshot: QueueSnapshot) -> None:
        self.query_one("#worker-line", Static).update(self._worker_text(snapshot))
        finished = {j.id: j for j in snapshot.jobs if j.status.finished}
        if self._finished_jobs is not None and (ended := finished.keys() - self._finished_jobs):
            # a job ended: its LoRA (or a cancelled one's checkpoint) is on disk: read its project again
            self.rescan_projects({Path(os.path.realpath(finished[i].project)) for i in ended})
        self._finished_jobs = set(finished)
        if self._scanned:
            self.refresh_table()

    def _worker_text(self, snapshot: QueueSnapshot) -> Text:
        # counted as the worker line counts them ("3 job(s) wait for it · 0 running, 2 waiting" it
        # read, an interrupted job in the first count and in neither of the others)
        counts = {"running": sum(j.live for j in snapshot.jobs), "interrupted": sum(j.interrupted for j in snapshot.jobs),
                  "waiting": sum(j.status is JobStatus.QUEUED for j in snapshot.jobs),
                  "paused": sum(j.status is JobStatus.PAUSED for j in snapshot.jobs)}
        style = "green" if snapshot.worker_running else "yellow"
        text = Text.assemble(("● " if snapshot.worker_running else "○ ", style), snapshot.worker_text())
        if snapshot.jobs:
            shown = ", ".join(f"{n} {what}" for what, n in counts.items() if n or what in ("running", "waiting"))
            text.append(f"  ·  {shown} (2 shows them)", style="dim")
        return text

    @while_open
    def refresh_table(self) -> None:
        table = self.query_one("#projects", FittedTable)
        empty = self.query_one("#empty", Static)
        if not self.summaries:
            table.display = False
            empty.display = True
            # A variable, not escaped text: a folder may hold "[" too, and Textual's escape read "[[" wrong
            empty.update(Content.from_markup(EMPTY_HELP, folder=str(self.app.projects_dir)))
            self._rows = []
            self.query_one("#project-detail", Static).update("")
            return
        empty.display = False
        table.display = True
        requested = self._select_after_scan
        self._select_after_scan = None
        keep = requested or (self.selected().folder if self.selected() else None)
        snapshot: QueueSnapshot = self.app.snapshot
        columns = self.columns()
        keys = [key for key, _, _ in columns]
        shared = shared_names(self.summaries)
        rows = [[c for key, c in zip(ALL_COLUMNS, self._cells(s, snapshot.for_project(s.folder), s.folder in shared)) if key in keys]
                for s in self.summaries]
        self._fit_names(table, columns, rows, shared)
        if rows == self._rows and requested is None:
            self.show_detail()  # a job's step, under the table, moves within a cell's percent
            return  # nothing changed since the last poll: leave the table and its cursor alone
        self._rows = rows
        scrolled = table.scroll_x  # scrolled sideways to read a column: a running job's new step snapped it back
        table.show(columns, [(str(s.folder), cells) for s, cells in zip(self.summaries, rows)])
        if scrolled:
            table.call_after_refresh(table.scroll_to, x=scrolled, animate=False)
        if keep is not None:
            folders = [s.folder for s in self.summaries]
            if keep in folders:
                table.move_cursor(row=folders.index(keep), animate=False)
        self.show_detail()

    def _fit_names(self, table: FittedTable, columns: list, rows: list[list], shared: set[Path]) -> None:
        """Names cut further where the other columns would not fit beside them: at 80 columns a
        40-cell name left "last output" as "Dec 0" and the output's size off the screen."""
        room = table.content_room(len(columns), len(rows))
        if room is None:
            # Not laid out yet (the first scan fills a table that was hidden): fit again once it
            # is. Nothing else did while no job moved, so a long name kept "last output" and the
            # output's size off the screen until a resize or f5.
            if not self._refit_asked:
                self._refit_asked = True
                table.call_after_refresh(self._refit_names)
            return
        others = sum(fitted_widths(columns[1:], [row[1:] for row in rows]))
        cells = max(NAME_CELLS_LEAST, min(NAME_CELLS, room - others))
        if cells < NAME_CELLS:
            for summary, row in zip(self.summaries, rows):
                row[0] = name_cell(summary.name, summary.folder.name if summary.folder in shared else None, cells)

    def _refit_names(self) -> None:
        self._refit_asked = False
        if self.query_one("#projects", FittedTable).size.width:
            self.refresh_table()

    def _cells(self, summary: ProjectSummary, jobs: list[Job], name_shared: bool = False) -> list:
        name = name_cell(summary.name, summary.folder.name if name_shared else None)
        if not summary.valid:
            return [name, "", Text("✗ invalid", style="bold red"), "", "", "", ""]
        finished = [j.finished_at for j in jobs if j.finished_at and j.status is JobStatus.DONE]
        last = max([t for t in [summary.last_output, *finished] if t], default=None)
        return [
            name,
            Text(project_label(summary.base_model), overflow="ellipsis"),
            side_cell(summary, jobs, "train", "a"),
            side_cell(summary, jobs, "train", "b"),
            side_cell(summary, jobs, "merge", None),
            when_text(last),
            size_text(summary.output_bytes),
        ]

    def selected(self) -> ProjectSummary | None:
        table = self.query_one("#projects", DataTable)
        if not self.summaries or not table.display:
            return None
        row = table.cursor_row
        return self.summaries[row] if 0 <= row < len(self.summaries) else None

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_open_project()

    @while_open
    def show_detail(self) -> None:
        summary = self.selected()
        detail = self.query_one("#project-detail", Static)
        if summary is None:
            detail.update("")
        elif not summary.valid:
            count = len(summary.problems)
            head = f"{summary.name}: {count} problem{'s' * (count != 1)} (o opens it):\n"
            detail.update(Text(head + "\n".join(summary.problems[:3]), style="red"))
        else:
            jobs = self.app.snapshot.for_project(summary.folder)
            notes = []
            one_lora = summary.method in PAIR_METHODS  # addift, slider: one LoRA on the pair, shown under A and B alike
            outputs = ([("A→B", "train", "a", summary.sides["a"])] if one_lora else
                       [("A", "train", "a", summary.sides["a"]), ("B", "train", "b", summary.sides["b"])])
            for label, kind, side, state in (*outputs, ("merge", "merge", None, summary.merge)):
                note = job_note(jobs, kind, side, summary) or (state.reason if state.state != DONE else None)
                if note:
                    notes.append(f"{label}: {note}")  # once for the pair's LoRA: "A: step 4/200 … B: step 4/200" it said
            steps = (f"base {project_label(summary.base_model)}, "
                     + (f"{summary.method}: one LoRA on the pair, {summary.steps.get('a', '?')} steps" if one_lora else
                        f"steps A {summary.steps.get('a', '?')}, B {summary.steps.get('b', '?')}"))
            if not notes:
                notes.append("all outputs current")
            waits = self.app.snapshot.room_waits
            for job in jobs:
                if job.id in waits:  # its cell stands still at its last step meanwhile
                    from engine.jobs.room_wait import room_wait_text

                    notes.insert(0, f"#{job.id} {room_wait_text(waits[job.id])}")
            if summary.view_only:
                notes.insert(0, summary.view_only)
            if summary.folder in shared_names(self.summaries):
                notes.insert(0, f"{summary.folder.name}/ has the [project] name of another project here, and its outputs the "
                                "same file names: set its own name (enter opens it)")
            detail.update(Text(f"{summary.name}: {steps}  ·  {'; '.join(notes)}", style="dim"))

    # ------------------------------------------------------------------ actions

    def action_rescan(self) -> None:
        if not self.rescan() and time.monotonic() - self._full_scan_at >= SCAN_BUSY_SAY_S:
            self.notify(f"still reading {self.app.projects_dir}/ (for {time.monotonic() - self._full_scan_at:.0f} s; a network "
                        "disk?): it is read again when that answers", severity="warning", timeout=6)

    def action_new_project(self) -> None:
        from copylora_tui.screens.new_project import NewProjectScreen

        def created(folder: Path | None) -> None:
            if folder is not None:
                self.notify(f"created {self.app.projects_dir}/{folder.name}: press r to run it, enter to edit it")
                self.rescan(select=folder)

        self.app.push_screen(NewProjectScreen(self.app.projects_dir), created)

    def action_open_project(self) -> None:
        summary = self.selected()
        if summary is not None:
            self.app.action_open_project(summary.folder)

    def action_run_project(self) -> None:
        summary = self.selected()
        if summary is None:
            return
        if not summary.valid:
            self.notify(f"{summary.name} has problems; open it (enter) to fix them:\n" + "\n".join(summary.problems[:5]), severity="error", timeout=8)
            return
        if summary.view_only:
            self.notify(f"{summary.name}: {summary.view_only}", severity="error", timeout=10)
            return
        from copylora_tui.core.actions import run_project

        self.app.queue_command(lambda queue: run_project(queue, summary.folder), done=lambda _m: self.rescan_projects([summary.folder]))

    def action_delete_project(self) -> None:
        summary = self.selected()
        if summary is None:
            return
        active = [j for j in self.app.snapshot.for_project(summary.folder) if j.status.active]
        if active:
            self.notify(f"{summary.name} has {len(active)} job(s) queued or running: cancel them first (2: queue)", severity="warning")
            return
        from copylora_tui.screens.confirm_delete import ConfirmDeleteScreen

        def deleted(result: str | None) -> None:
            if result:
                self.notify(result)
                self.rescan()

        self.app.push_screen(ConfirmDeleteScreen(summary), deleted)

    def action_open_stats(self) -> None:
        summary = self.selected()
        if summary is None:
            return
        if summary.stats_path is None:
            if not summary.valid:  # "run it (r)" would only say it has problems: say them now
                self.notify(f"{summary.name} has no merge statistics, and it has problems; open it (enter) to fix them:\n"
                            + "\n".join(summary.problems[:5]), severity="error", timeout=8)
                return
            self.notify(f"{summary.name} has no merge statistics yet: run it (r) and wait for the merge", severity="warning")
            return
        self.app.action_open_stats(summary.stats_path)

    def palette_commands(self):
        from textual.app import SystemCommand

        yield SystemCommand("New project", "Make a concept project from pictures A and B", self.action_new_project)
        yield SystemCommand("Run project", "Queue train A, train B and the merge of the selected project", self.action_run_project)
        yield SystemCommand("Delete project", "Delete the selected project (asks about output/)", self.action_delete_project)
        yield SystemCommand("Merge stats", "Per-layer statistics of the selected project's merge", self.action_open_stats)
