"""One concept project: its parameters as a form, the plan they give, the newest preview
grid, the teacher pictures and the project's jobs.

The form is grouped like ``copylora.toml`` and built from the parameter dataclasses. Each
field is checked as it is typed (the CLI's validator, the error under the field); the whole
project, cross-key rules and files included, is re-checked a moment after the typing stops,
and the plan (steps, buckets, outputs) is recomputed from it. Saving writes only a project
that passes every check: an invalid project is never saved.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Collapsible, Input, Static

from copylora_tui import teacher_images
from copylora_tui.core import form
from copylora_tui.core.snapshot import QueueSnapshot
from copylora_tui.screens.focus_at_once import FOCUS_AT_ONCE, MovesFocusAtOnce
from copylora_tui.screens.unsaved import AsksBeforeLosingEdits
from copylora_tui.widgets.app_footer import AppFooter
from copylora_tui.widgets.app_header import AppHeader
from copylora_tui.widgets.guard import ActsWhileOpen, still_open, while_open
from copylora_tui.widgets.job_table import JobTable
from copylora_tui.widgets.param_field import ParamField
from copylora_tui.widgets.preview_pane import PreviewPane, show_preview_path
from copylora_tui.widgets.snapshot_watch import catch_up, watch_snapshot
from engine.errors import Problem, ValidationError
from engine.project.folder import Project, load_project
from engine.project.params import ConceptParams

PlanText = tuple[RenderableType, Text]  # the plan, and the outputs' states in one line

CHECK_DELAY_S = 0.3
DISK_CHECK_S = 2.0  # while shown: copylora.toml written by another program shows within this
OUTPUTS_RECHECK_S = 10.0  # an output folder changed by another program: the plan read again at most this often
LAZY_SECTIONS = ("a", "b", "sample", "reg")


class FormScroll(VerticalScroll):
    """The form's scrolling column. A new size can change its layout (a resize: keys above their
    editors, the side column below): the scroll stayed where it was and the field being typed
    into went out of sight, still taking the keys."""

    def on_resize(self) -> None:
        focused = self.screen.focused
        if focused is not None and self in focused.ancestors:
            self.call_after_refresh(self.scroll_to_widget, focused, animate=False)


class ProjectScreen(MovesFocusAtOnce, ActsWhileOpen, AsksBeforeLosingEdits, Screen):
    BINDINGS = [
        *FOCUS_AT_ONCE,  # keys typed ahead of a tab go to the next field (focus_at_once.py)
        Binding("ctrl+s", "save", "Save", id="project.save"),
        Binding("ctrl+r", "run", "Run", id="project.run"),
        Binding("ctrl+t", "stats", "Stats", id="project.stats"),
        # ctrl: a plain letter would be typed into the focused field
        Binding("ctrl+o", "open_preview", "Preview", id="project.preview"),
        Binding("escape", "back", "Back", id="project.back"),
    ]
    # Below 100 columns a key and its editor side by side leave the value a few characters
    # ("example-m", "▐ ▌ fals…"): each key goes above its editor, which then has the form's
    # whole width, and the side column narrows (CSS).
    # -huge: a wide terminal gives the side column (preview, pictures, plan) its room, which
    # the form's key/value rows cannot use (at 200 columns they filled 40 and left 120 blank).
    # -tiny (below 80): the side column's 41 cells left the form 18 at 60 columns and none at 40,
    # where typing still changed fields no one could see: the side goes below the form.
    HORIZONTAL_BREAKPOINTS = [(0, "-tiny"), (80, "-narrow"), (100, "-wide"), (150, "-huge")]

    def __init__(self, folder: Path) -> None:
        super().__init__()  # no id: a screen of this kind may still be leaving when the next arrives
        self.folder = Path(folder)
        self.project: Project | None = None
        self.load_problems: list[Problem] = []
        self.fields: dict[str, ParamField] = {}  # the fields built so far (folded sections come later)
        self.unbuilt: dict[str, list[form.FieldSpec]] = {}
        self.values: dict[str, Any] = {}
        self.field_errors: dict[str, str] = {}
        self.project_problems: list[Problem] = []
        self.checked: Project | None = None  # the last edit state that passed every check
        self._generation = 0
        self._check_timer = None
        self.loaded = False  # the load thread has answered (project or problems)
        self.on_disk: tuple | None = None  # copylora.toml's version when last read or saved here (engine.files.file_version)
        self.changed_on_disk = False  # another program has written it since (the last disk check says)
        self.folder_gone = False  # the project folder is no more (moved, renamed, removed: the last disk check says)
        self.view_only: str | None = None  # why it can be looked at, not trained (its output folder cannot be written)
        self._checking_disk = False
        self._outputs_seen: tuple | None = None  # the output folders' version the plan shown was read at
        self._outputs_checked_at = float("-inf")  # when a change there was last read (time.monotonic)
        self._saves = 0  # saves made here: a disk check begun before one is not believed
        self._overwrite_asked: tuple | None = None  # the version on disk ctrl+s warned about: ctrl+s again overwrites it
        self.concept_count = 0  # [[concept]] tables in the edit (added and removed with the buttons)

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield AppHeader()
        with Horizontal(id="project-body"):
            with FormScroll(id="form"):
                # The project is read in a thread (load): validation decodes every picture and
                # opens the base model's header, which takes seconds on big files.
                yield Static(Text(f"reading {self.folder.name}/copylora.toml …", style="dim"), id="form-loading")
            with VerticalScroll(id="side"):
                yield Static("", id="project-status")
                yield Static("", id="project-outputs")  # each output's state in a line; the plan below says why
                yield PreviewPane(self._preview_target, id="project-preview", classes="panel")
                yield Vertical(id="images", classes="panel")
                # below the pictures: with each output's state it is taller than a screen at 40 cells
                yield Static("", id="plan", classes="panel")
                yield Static("jobs", classes="panel-title")
                yield JobTable(("job", "task", "status", "bar"), id="history")
        yield Static("", id="field-help", classes="status-line")
        yield AppFooter()

    def _load_problem_text(self) -> Text:
        lines = [f"{self.folder.name} cannot be loaded: {load_fix(self.load_problems)}, then open it again.", ""]
        lines += [f"  {p}" for p in self.load_problems]
        return Text("\n".join(lines), style="red")

    def _form(self, project: Project) -> ComposeResult:
        for section, _cls, heading in form.SECTIONS:
            if section == "reg" and project.reg is None:
                continue
            specs = form.section_fields(section)
            for spec in specs:
                self.values[spec.path] = form.current_value(project, spec)
            if section in LAZY_SECTIONS:
                # Folded, and built only when unfolded: the per-side overrides alone are 60
                # fields, and mounting every field up front made the screen open slowly.
                overrides = len(project.side(section).overrides) if section in ("a", "b") else 0
                title = heading + (f"  ({overrides} set)" if overrides else "")
                self.unbuilt[section] = specs
                yield Collapsible(title=Content(title), collapsed=True, id=f"section-{section}")  # Content: plain, never markup
            else:
                yield Static(Text(heading), classes="section-title")
                yield from self._fields(project, specs)
        if project.reg is not None:  # further concepts belong to the DreamBooth flow ([reg])
            self.concept_count = len(project.concepts)
            for number in range(1, self.concept_count + 1):
                for spec in form.section_fields(form.concept_section(number)):
                    self.values[spec.path] = form.current_value(project, spec)
            yield Vertical(*self._concept_widgets(project), id="concepts")

    # ------------------------------------------------------------------ [[concept]] list

    def _concept_widgets(self, project: Project) -> list:
        """One folded section per concept (its fields, a remove button), then the add button;
        built from the edit's values, so a rebuild after add/remove keeps what was typed."""
        widgets = [Static(Text("[[concept]] further concepts (DreamBooth flow)"), classes="section-title")]
        for number in range(1, self.concept_count + 1):
            specs = form.section_fields(form.concept_section(number))
            fields = []
            for spec in specs:
                widget = ParamField(spec, self.values.get(spec.path, form.current_value(project, spec)))
                self.fields[spec.path] = widget
                fields.append(widget)
            remove = Button(f"remove concept {number}", id=f"remove-concept-{number}", classes="concept-remove")
            # Content, not a str: a str title is Textual markup, where rich's escape of "[[concept]]" showed as "[\[concept]]"
            title = Content(self._concept_title(number))
            widgets.append(Collapsible(*fields, remove, title=title, collapsed=number <= len(project.concepts),
                                       id=f"section-concept-{number}"))
        widgets.append(Button("add concept", id="add-concept"))
        return widgets

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        button = event.button.id or ""
        if button == "add-concept":
            await self.edit_concepts(add=True)
        elif button.startswith("remove-concept-"):
            await self.edit_concepts(remove=int(button.rsplit("-", 1)[1]))

    async def edit_concepts(self, *, add: bool = False, remove: int | None = None) -> None:
        """Add a concept at the end, or remove one (the later ones move up a number), then
        rebuild the list from the values and check the project. Awaited, so the old widgets
        are gone before the new ones (same ids) arrive, and a second press waits for it."""
        if self.project is None or not self.is_attached or not still_open(self):
            return
        values = form.without_concept(self.values, remove)
        self.field_errors = form.without_concept(self.field_errors, remove)
        self.concept_count -= 1 if remove is not None else 0
        if add:
            self.concept_count += 1
            for spec in form.section_fields(form.concept_section(self.concept_count)):
                values[spec.path] = getattr(ConceptParams(), spec.key)
        self.values = values
        self.fields = {path: f for path, f in self.fields.items() if form.concept_number(path.split(".", 1)[0]) is None}
        box = self.query_one("#concepts", Vertical)
        await box.remove_children()
        await box.mount_all(self._concept_widgets(self.project))
        if add:
            self.call_after_refresh(self._focus_new_concept)
        self.edits_changed()
        self.update_status()
        self.check_project()

    @while_open
    def _focus_new_concept(self) -> None:
        editors = self.query(f"#field-concept-{self.concept_count}-folder #editor")
        if editors:
            editors.first().focus()

    def _fields(self, project: Project, specs: list[form.FieldSpec]) -> list[ParamField]:
        widgets = []
        for spec in specs:
            inherited = getattr(project.train, spec.key, None) if spec.override else None
            widget = ParamField(spec, form.current_value(project, spec), inherited=inherited)
            self.fields[spec.path] = widget
            widgets.append(widget)
        return widgets

    def on_collapsible_expanded(self, event: Collapsible.Expanded) -> None:
        section = (event.collapsible.id or "").removeprefix("section-")
        self.build_section(section)

    @while_open
    def build_section(self, section: str):
        """Mount a folded section's fields; returns the mount to await (None: built already)."""
        specs = self.unbuilt.pop(section, None)
        if specs is None or self.project is None:
            return None
        collapsible = self.query_one(f"#section-{section}", Collapsible)
        mounted = collapsible.query_one(Collapsible.Contents).mount_all(self._fields(self.project, specs))
        collapsible.collapsed = False
        self.call_after_refresh(self.show_project_problems, self.project_problems)
        return mounted

    # ------------------------------------------------------------------ drafts (core/drafts.py)

    def unsaved_edits(self) -> tuple[dict[str, str], int | None, tuple | None] | None:
        """What the form holds that the file does not: each such field's text as typed, the
        concept count where it differs, and the file's version they were made against. None
        without edits."""
        if self.project is None or not self.dirty:
            return None
        fields = {path: field.text for path, field in self.fields.items()
                  if not form.same_as_saved(field.text, form.current_value(self.project, field.spec), field.spec)}
        concepts = self.concept_count if self.project.reg is not None and self.concept_count != len(self.project.concepts) else None
        return fields, concepts, self.on_disk

    async def take_back_draft(self) -> None:
        """The edits a hangup left in a draft, put back in the form (unsaved) and said."""
        from copylora_tui.core.drafts import take_draft
        from engine.jobs.state_home import state_folder

        if self.project is None or not still_open(self):  # view-only too: its output_dir may be the edit
            return
        try:
            draft = take_draft(state_folder(self.app.home), self.folder)
        except OSError:
            return
        if draft is None:
            return
        if draft.concepts is not None and self.project.reg is not None:
            while self.concept_count < draft.concepts:
                await self.edit_concepts(add=True)
            while self.concept_count > max(draft.concepts, 0):
                await self.edit_concepts(remove=self.concept_count)  # the texts below say what each kept one holds
        known = {spec.path: section for section, _cls, _heading in form.SECTIONS for spec in form.section_fields(section)}
        for path in draft.fields:
            section = known.get(path)
            if section in self.unbuilt and (mounted := self.build_section(section)) is not None:
                await mounted
        await asyncio.sleep(0)  # the new fields composed (their editors mounted)
        taken = 0
        for path, text in draft.fields.items():
            field = self.fields.get(path)
            if field is not None and field.query("#editor"):
                field.set_text(text)
                taken += 1
        if taken or draft.concepts is not None:
            when = time.strftime("%H:%M", time.localtime(draft.written_at))
            # The file is not the one the edits were made against (another program wrote it, or
            # the project was made again at this path): saving them would undo what it holds.
            from engine.files import file_version

            newer = draft.against is None or file_version(self.project.toml_path) != draft.against
            since = "; copylora.toml has changed since (another program): read them before saving" if newer else ""
            self.notify(f"took back {taken} edit(s) not saved when the terminal went away at {when}: "
                        f"ctrl+s saves them, esc twice leaves them{since}", title="unsaved edits", timeout=12,
                        severity="warning" if newer else "information")

    @while_open
    def on_mount(self) -> None:
        self.sub_title = self.folder.name
        self.title = "Project"
        watch_snapshot(self, self.show_snapshot)
        self.load()
        self.set_interval(DISK_CHECK_S, self.check_disk)

    # The form said "✓ saved, valid" while another editor (or import-kohya) had changed the file
    # under it: found only at ctrl+s. A stat every DISK_CHECK_S while shown, in a thread.
    @while_open
    def check_disk(self) -> None:
        if self.loaded and self.project is not None and self.is_active and not self._checking_disk:
            self._checking_disk = True
            self._check_disk(self.project, self._saves)

    @work(thread=True, exclusive=True, group="project-disk-check", exit_on_error=False)
    def _check_disk(self, project: Project, saves: int) -> None:
        from engine.files import file_version

        try:
            version = file_version(project.toml_path)
        except OSError:
            version = None
        self.post_message(self.DiskVersion(version, saves, outputs_version(project), project.root.is_dir()))

    class DiskVersion(Message, bubble=False):
        """copylora.toml's version on disk now (engine.files.file_version), read after ``saves``
        saves here, the output folders' (:func:`outputs_version`), and whether the project
        folder is there at all."""

        def __init__(self, version: tuple | None, saves: int, outputs: tuple = (), folder_there: bool = True) -> None:
            super().__init__()
            self.version, self.saves, self.outputs, self.folder_there = version, saves, outputs, folder_there

    def on_project_screen_disk_version(self, message: DiskVersion) -> None:
        self._checking_disk = False
        if self.folder_gone != (not message.folder_there):
            # Moved or renamed (mv p1 p1-renamed) while open: the status said "✗ 2 problems: not
            # saved / a.folder: folder not found", and the outputs line kept "A✓ B✓ merged✓".
            self.folder_gone = not message.folder_there
            self.update_status()
            if self.folder_gone:
                self.query_one("#project-outputs", Static).update(Text("outputs: not known (the project folder is gone)", style="dim"))
                return
            self.check_project()  # back where it was: check it again
        # An output made, replaced or removed by another program (`copylora sample`, a job, rm):
        # the outputs line and the plan said "grid✓" for a grid that was gone, until reopened.
        # Read again at most every OUTPUTS_RECHECK_S (a training writes checkpoints every few
        # seconds; the check decodes the pictures): a change seen sooner waits for a later disk check.
        if self._outputs_seen is None:
            self._outputs_seen = message.outputs
        elif message.outputs != self._outputs_seen and time.monotonic() - self._outputs_checked_at >= OUTPUTS_RECHECK_S:
            self._outputs_seen, self._outputs_checked_at = message.outputs, time.monotonic()
            self.check_project()
        if message.saves != self._saves:  # read before a save here: the file it saw is gone, not another program's
            return
        changed = self.on_disk is not None and message.version != self.on_disk
        if changed != self.changed_on_disk:
            self.changed_on_disk = changed
            self.update_status()

    @work(thread=True, exclusive=True, group="project-load", exit_on_error=False)
    def load(self, refresh: bool = False) -> None:
        """Read, validate and plan the project, and read its pictures' sizes, off the UI thread;
        ``refresh``: after a save, keep the form and update the rest."""
        from engine.files import file_version
        from engine.project.folder import find_project_file

        on_disk = file_version(find_project_file(self.folder))  # before reading: a write meanwhile shows as a change
        try:
            project, problems = load_project(self.folder, writing=False), []  # a read-only project opens, to look at
        except ValidationError as exc:
            project, problems = None, exc.problems
        except Exception as exc:  # an unreadable folder, a bug: said on the screen, not lost in the thread
            project, problems = None, [Problem(str(self.folder), f"cannot read it ({type(exc).__name__}: {exc})")]
        plan = pictures = None
        if project is not None:
            from copylora_tui.core.projects import view_only_reason

            self.view_only = view_only_reason(project)  # (read in update_status, after the Loaded message below)
            plan = _plan_text(project)
            try:
                pictures = picture_list(project)
            except Exception:  # the list is a help, not the form: without it the form still opens
                pictures = []
        self.post_message(self.Loaded(project, problems, plan, pictures, refresh, on_disk))

    class Loaded(Message, bubble=False):
        """The project read, validated and planned in a thread; Textual drops it if the screen has closed."""

        def __init__(self, project: Project | None, problems: list[Problem], plan: PlanText | None, pictures: list | None, refresh: bool,
                     on_disk: tuple | None = None) -> None:
            super().__init__()
            self.project, self.problems, self.plan, self.pictures, self.refresh = project, problems, plan, pictures, refresh
            self.on_disk = on_disk

    def on_project_screen_loaded(self, message: Loaded) -> None:
        if not message.refresh:  # a refresh after a save: the save recorded what it wrote
            self.on_disk = message.on_disk
        self._loaded(message.project, message.problems, message.plan, message.pictures, message.refresh)

    def _loaded(self, project: Project | None, problems: list[Problem], plan: PlanText | None, pictures: list | None, refresh: bool) -> None:
        self.project, self.load_problems, self.loaded = project, problems, True
        self.checked = project
        if not refresh:
            box = self.query_one("#form", VerticalScroll)
            self.query_one("#form-loading").remove()
            if project is None:
                box.mount(Static(self._load_problem_text(), id="load-problems"))
            else:
                box.mount_all(list(self._form(project)))
            self.query_one("#project-preview", PreviewPane).retarget()
            if project is not None:
                self.call_after_refresh(lambda: self.run_worker(self.take_back_draft(), group="project-draft", exit_on_error=False))
        if project is None:
            self.query_one("#project-status", Static).update(Text(f"{len(problems)} problem(s): not loadable", style="bold red"))
            return
        if plan is not None:
            self._show_plan(plan)
        self.show_images(pictures or [])
        self.update_status()

    # ------------------------------------------------------------------ editing

    def _concept_title(self, number: int) -> str:
        return f"[[concept]] {number}: {self.values.get(f'{form.concept_section(number)}.folder') or 'no folder yet'}"

    def on_param_field_changed(self, event: ParamField.Changed) -> None:
        path = event.field.spec.path
        if event.error is None:
            self.field_errors.pop(path, None)
            self.values[path] = event.value
        else:
            self.field_errors[path] = event.error
        section, _, key = path.partition(".")
        self._one_length(section, key, event)
        if key == "folder" and (number := form.concept_number(section)) is not None:  # its title names its folder
            for box in self.query(f"#section-concept-{number}").results(Collapsible):
                box.title = Content(self._concept_title(number))
        self.edits_changed()
        self.update_status()
        if self._check_timer is not None:
            self._check_timer.stop()
        self._check_timer = self.set_timer(CHECK_DELAY_S, self.check_project)

    def _one_length(self, section: str, key: str, event: ParamField.Changed) -> None:
        """[train] counts its length in steps or in epochs: a value typed into one clears the
        other (it said "set max_train_epochs or max_train_steps, not both", to be cleared by hand)."""
        other = {"max_train_steps": "max_train_epochs", "max_train_epochs": "max_train_steps"}.get(key)
        if section != "train" or other is None or event.error is not None or event.value is None:
            return
        field = self.fields.get(f"train.{other}")
        if field is None or not field.text.strip():
            return
        field.query_one("#editor", Input).value = ""
        self.notify(f"{other} cleared: the length is in steps or in epochs, not both", timeout=4)

    def on_descendant_focus(self, event) -> None:
        field = next((n for n in event.widget.ancestors_with_self if isinstance(n, ParamField)), None)
        if field is not None:
            self.query_one("#field-help", Static).update(Text(f"{field.spec.path}: {field.spec.doc}", style="dim"))

    @property
    def dirty(self) -> bool:
        if self.project is not None and self.project.reg is not None and self.concept_count != len(self.project.concepts):
            return True
        return self.project is not None and any(
            not form.same_as_saved(field.text, form.current_value(self.project, field.spec), field.spec) for field in self.fields.values()
        )

    def edited_project(self) -> Project | None:
        if self.project is None:
            return None
        return form.apply_values(self.project, self.values, self.concept_count if self.project.reg is not None else None)

    def check_project(self) -> None:
        """Validate the whole edited project (and plan it) in a thread; late answers for an
        older edit state are dropped."""
        if self.field_errors or self.project is None:
            self.show_project_problems([])
            return
        self._generation += 1
        self._check(self.edited_project(), self._generation)

    @work(thread=True, exclusive=True, group="project-check", exit_on_error=False)
    def _check(self, candidate: Project, generation: int) -> None:
        try:
            checked, problems = form.validate(candidate, writing=False)  # a read-only project is looked at; run and save say why not
        except Exception as exc:  # an OS error no check foresaw, a bug: said in the status, or the form waits for good
            from engine.errors import os_error_text

            why = os_error_text(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            checked, problems = None, [Problem("", f"could not check the project: {why}")]
        plan_text = _plan_text(checked) if checked is not None else None
        self.post_message(self.Checked(generation, checked, problems, plan_text))

    class Checked(Message, bubble=False):
        """An edit state validated and planned in a thread (late answers are dropped by generation)."""

        def __init__(self, generation: int, checked: Project | None, problems: list[Problem], plan_text: PlanText | None) -> None:
            super().__init__()
            self.generation, self.checked, self.problems, self.plan_text = generation, checked, problems, plan_text

    def on_project_screen_checked(self, message: Checked) -> None:
        self._checked(message.generation, message.checked, message.problems, message.plan_text)

    def _checked(self, generation: int, checked: Project | None, problems: list[Problem], plan_text: PlanText | None) -> None:
        if generation != self._generation:
            return
        self.checked = checked
        self.show_project_problems(problems)
        if plan_text is not None:
            self._show_plan(plan_text)
        self.update_status()

    def _show_plan(self, plan: PlanText) -> None:
        renderable, outputs = plan
        self.query_one("#plan", Static).update(renderable)
        self.query_one("#project-outputs", Static).update(outputs)

    @while_open
    def show_project_problems(self, problems: list[Problem]) -> None:
        self.project_problems = problems
        placed: dict[str, str] = {}
        for problem in problems:
            path = form.field_for_problem(problem, list(self.fields))
            if path is not None:
                placed.setdefault(path, problem.message)
        for path, field in self.fields.items():
            field.show_error(self.field_errors.get(path) or placed.get(path))
        self.update_status()

    @while_open
    def update_status(self) -> None:
        status = self.query_one("#project-status", Static)
        if self.project is None:
            return
        if self.folder_gone:
            status.update(Text(self.gone_text() + ("\n(your edits are kept on this screen)" if self.dirty else ""), style="bold yellow"))
            return
        if self.field_errors or self.project_problems:
            count = len(self.field_errors) + len(self.project_problems)
            lines = [f"✗ {count} problem{'s' * (count != 1)}: not saved"]
            lines += [f"  {path}: {error}" for path, error in list(self.field_errors.items())[:3]]
            lines += [f"  {p}" for p in self.project_problems[:3] if form.field_for_problem(p, list(self.fields)) is None]
            status.update(Text("\n".join(lines), style="bold red"))
        else:
            text = Text("● unsaved changes (ctrl+s saves)", style="yellow") if self.dirty else Text("✓ saved, valid", style="green")
            if self.view_only:
                text = Text.assemble((f"⚠ {self.view_only}\n", "bold yellow"), text)
            if self.changed_on_disk:
                text = Text.assemble(("⚠ copylora.toml changed on disk since it was read here: esc, then o, shows it as it is "
                                      "now (ctrl+s asks before writing this form over it)\n", "bold yellow"), text)
            status.update(text)

    # ------------------------------------------------------------------ side panel

    @while_open
    def show_images(self, pictures: list[tuple[str, Path | None]]) -> None:
        """The teacher pictures' captions (read by :func:`picture_list` in the load thread)
        and, where the terminal draws pictures, the pictures."""
        box = self.query_one("#images", Vertical)
        box.remove_children()
        widgets = [Static("teacher pictures", classes="panel-title")]
        for caption, path in pictures:
            if path is None:
                widgets.append(Static(Text(caption, style="red")))
                continue
            widgets.append(Static(Text(caption), classes="image-caption"))  # a picture may be named "[Pony] x.png"
            picture = teacher_images.image_widget(path, classes="teacher-image")
            if picture is not None:
                widgets.append(picture)
        box.mount_all(widgets)

    def _preview_target(self):
        """Any preview of the project (called in the pane's thread); None until it is read."""
        from copylora_tui.core.previews import project_target

        if not self.loaded:
            return None
        if self.project is None:
            return "no preview: copylora.toml does not load"
        return project_target(self.project)

    def on_screen_resume(self) -> None:
        catch_up(self, self.show_snapshot)

    @while_open
    def show_snapshot(self, snapshot: QueueSnapshot) -> None:
        jobs = snapshot.for_project(self.project.root if self.project else self.folder.resolve())
        self.query_one("#history", JobTable).show_jobs(jobs)

    def selected_job_id(self) -> int | None:
        tables = self.query("#history")  # none yet while the screen is being built
        return tables.first(JobTable).selected_job_id() if tables else None

    # ------------------------------------------------------------------ actions

    def gone_text(self) -> str:
        return (f"⚠ the project folder {self.folder} is gone (moved, renamed or removed?): nothing here can be saved or run; "
                "esc goes back to the list, which shows where projects are now")

    def action_save(self) -> None:
        if not self.loaded:
            self.notify("still reading the project", severity="warning")
            return
        if self.folder_gone:  # a save would make a new folder of that name holding only copylora.toml
            self.notify(self.gone_text(), severity="error", timeout=10)
            return
        if self.project is None:
            self.notify(f"this project cannot be loaded; {load_fix(self.load_problems)}", severity="error")
            return
        if self.field_errors:
            first = next(iter(self.field_errors))
            self.notify(f"not saved: {len(self.field_errors)} invalid field(s), first {first}: {self.field_errors[first]}", severity="error")
            self.fields[first].query_one("#editor").focus()
            return
        from engine.files import file_version
        from engine.project.folder import save_project

        now = file_version(self.project.toml_path)
        if now != self.on_disk and now != self._overwrite_asked:
            # Another editor, `copylora import-kohya --into`, another copylora app wrote it since it was read here:
            # saving the form would silently undo that. Asked once per version; ctrl+s again overwrites.
            self._overwrite_asked = now
            changed = form.changed_on_disk(self.project, self.project.toml_path)  # what the overwrite would put back
            said = f" ({'; '.join(changed[:4])}{' …' if len(changed) > 4 else ''})" if changed else ""
            self.notify(f"copylora.toml changed on disk since it was read here (another editor? import-kohya?){said}: "
                        "ctrl+s again overwrites it with this form; leaving (esc) and opening it again (o) shows the file as it is now",
                        severity="warning", timeout=12)
            return
        try:
            save_project(self.edited_project())
        except ValidationError as exc:
            self.show_project_problems(exc.problems)
            self.notify(f"not saved: {exc.problems[0]}" + (f" (+{len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""), severity="error")
            return
        except OSError as exc:  # a read-only copylora.toml or folder, a full disk: the edits stay on the screen
            from engine.errors import os_error_text

            self.notify(f"not saved: {os_error_text(exc)}", severity="error", timeout=10)
            return
        self.on_disk, self._overwrite_asked = file_version(self.project.toml_path), None
        self.changed_on_disk = False
        self._saves += 1
        self.project = self.edited_project()  # what was saved (the reload below replaces it)
        self.show_project_problems([])
        self.load(refresh=True)  # the plan, the pictures, the checked project, in the load thread
        self.query_one("#project-preview", PreviewPane).retarget()  # output_dir may have changed
        self.notify(f"saved {self.folder.name}/copylora.toml")
        self.say_outdated_trainings(self.project, self.app.snapshot.for_project(self.project.root))

    @work(thread=True, group="project-outdated", exit_on_error=False)
    def say_outdated_trainings(self, project: Project, jobs: list) -> None:
        """A save while the project's training runs: it goes on with the settings it started with
        (`copylora run` says so; the app's save said only "saved"), and the merge and preview
        queued after it are made of those."""
        from engine.jobs.enqueue import outdated_trainings
        from engine.project.plan import make_plan

        try:
            old = outdated_trainings(make_plan(project), jobs)
        except Exception:  # a plan that cannot be made now: the load after the save says why
            return
        for job in old:
            self.app.call_from_thread(
                self.notify, f"#{job.id} {job.label} trains the settings from before this save, and what is made of it will be "
                             "stale: ctrl+r queues the new ones to train after it", severity="warning", timeout=12)

    def action_run(self) -> None:
        if self.folder_gone:
            self.notify(self.gone_text(), severity="error", timeout=10)
            return
        if self.project is None or self.field_errors or self.project_problems:
            self.notify("fix the problems first: only a valid, saved project runs", severity="error")
            return
        if self.view_only:
            self.notify(self.view_only, severity="error", timeout=10)
            return
        if self.dirty:
            self.notify("save first (ctrl+s): the worker runs what copylora.toml says", severity="warning")
            return
        from engine.files import file_version

        if file_version(self.project.toml_path) != self.on_disk:
            # Another editor wrote it since it was read here: run would train the file's settings,
            # not the ones on this screen (a rank of 4 trained where the form said 8, without a word).
            self.notify("copylora.toml changed on disk since it was read here: run queues what the file says, not what this "
                        "screen shows; esc, then o, shows the file as it is now", severity="warning", timeout=12)
            return
        from copylora_tui.core.actions import run_project

        folder = self.project.root
        self.app.queue_command(lambda queue: run_project(queue, folder))

    def action_stats(self) -> None:
        if self.project is None:
            return
        from engine.project.plan import output_paths

        stats = output_paths(self.project).stats
        if not stats.is_file():
            self.notify("no merge statistics yet: run the project and wait for the merge", severity="warning")
            return
        self.app.action_open_stats(stats)

    def action_open_preview(self) -> None:
        show_preview_path(self.query_one("#project-preview", PreviewPane))

    def action_back(self) -> None:
        if self.app.close_keys_panel():
            return
        if self.may_discard_edits("esc", "leaves"):
            self.app.close_screen(self)

    def has_unsaved_edits(self) -> bool:
        return self.dirty


def outputs_version(project: Project) -> tuple:
    """The output folder, its samples/ and each side's run folder, as their mtimes: a file made,
    replaced (our writes rename a new file over the old) or removed there changes its folder's."""
    from engine.project.plan import output_paths

    paths = output_paths(project)
    version = []
    for folder in (paths.folder, paths.samples, *(paths.run_dir(side) for side in ("a", "b", "pair"))):
        try:
            version.append(folder.stat().st_mtime_ns)
        except OSError:
            version.append(None)
    return tuple(version)


def _plan_text(project: Project) -> tuple[RenderableType, Text]:
    """The plan and the outputs' one-line state, or why there is none (an image vanished
    between the check and the plan, a file could not be read)."""
    try:
        return _plan_and_outputs(project)
    except (OSError, ValueError) as exc:
        return Text(f"no plan: {exc}", style="red"), Text("")
    except Exception as exc:  # odd metadata in an output, a bug: said here, or the screen waits for good
        return Text(f"no plan: {type(exc).__name__}: {exc}", style="red"), Text("")


def load_fix(problems: list[Problem]) -> str:
    """What to do about a project that does not load: a picture of a teacher or class folder that
    cannot be read ("a.folder photo.png: corrupt image") is fixed in that folder, not in
    copylora.toml (the app said to edit the file, whatever the problem)."""
    import re

    pictures = [p for p in problems if re.match(r"[\w\[\]]+\.\w*folder ", p.where)]  # "a.folder NAME", "concept[2].class_folder NAME"
    if not pictures:
        return "fix copylora.toml in an editor"
    fix = "replace or remove the pictures named below (a picture copylora cannot read is not trained)"
    return fix if len(pictures) == len(problems) else f"fix copylora.toml in an editor, and {fix}"


def picture_list(project: Project) -> list[tuple[str, Path | None]]:
    """(caption, path) of the first two teacher pictures of each side, sizes read from their
    headers, the second saying how many more the side has (a side of 40 showed two, as if it
    had two); (problem, None) for a side without pictures. Called in a thread."""
    from engine.project.images import image_files, read_image_info

    pictures: list[tuple[str, Path | None]] = []
    for side in ("a", "b"):
        folder = project.side_folder(side)
        files = image_files(folder) if folder.is_dir() else []
        if not files:
            pictures.append((f"{side.upper()}: no picture in {project.side(side).folder}/", None))
            continue
        for path in files[:2]:
            try:
                info = read_image_info(path, decode=False)
                size = f"{info.width}×{info.height}"
            except ValueError as exc:
                size = f"unreadable ({exc})"
            rel = path.relative_to(project.root) if path.is_relative_to(project.root) else path
            more = f"  (+{len(files) - 2} more)" if len(files) > 2 and path == files[1] else ""
            pictures.append((f"{side.upper()}: {rel}  {size}{more}", path))
    return pictures


def plan_summary(project: Project) -> RenderableType:
    """The plan as `copylora check` prints it (each output's state included), then its warnings."""
    return _plan_and_outputs(project)[0]


def _plan_and_outputs(project: Project) -> tuple[RenderableType, Text]:
    from copylora_tui.core.plan_view import output_statuses, outputs_line, plan_view
    from engine.project.plan import make_plan, plan_warnings

    plan = make_plan(project)
    statuses = output_statuses(plan)  # hashes files: this runs in a thread
    warnings = [Text(f"⚠ {warning}", style="yellow") for warning in plan_warnings(plan)]  # it will train, probably not as meant
    return Group(plan_view(plan, statuses, header=False), *warnings), outputs_line(plan, statuses)
