"""The New project dialog: a name, picture A, picture B and the base model.

It calls the same :func:`engine.project.scaffold.create_project` as ``copylora new``, which checks
everything before it writes anything; each problem is shown under the field it is about and
nothing is created until all are fixed. Dismisses with the new folder (or None).
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from copylora_tui.screens.focus_at_once import FOCUS_AT_ONCE, MovesFocusAtOnce
from copylora_tui.screens.unsaved import AsksBeforeLosingEdits
from copylora_tui.widgets.guard import ActsWhileOpen, while_open
from copylora_tui.widgets.ordered_input import OrderedInput
from engine.errors import Problem, ValidationError

# create_project's problem locations (its parameters) -> our fields
WHERE = {"dest": "name", "a_image": "a", "b_image": "b", "base_model": "base"}
# (key, label, placeholder: short enough for an 80-column dialog, help: shown under the dialog
# while the field has the focus, wrapped)
FIELDS = (
    ("name", "name", "e.g. mono", "The project's folder (under the projects folder) and its LoRA's name."),
    ("a", "picture A", "e.g. ~/pics/colour.png", "Path of the original picture."),
    ("b", "picture B", "e.g. ~/pics/gray.png", "Path of the same picture, changed only in the wanted way."),
    ("base", "base model", "tiny, a .safetensors or a folder",
     "tiny (built in, for a try on any machine), an SD1.5/SD2/SDXL .safetensors checkpoint, or a diffusers folder."),
)


def default(key: str) -> str:
    return "tiny" if key == "base" else ""


class NewProjectScreen(MovesFocusAtOnce, ActsWhileOpen, AsksBeforeLosingEdits, ModalScreen[Path | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="new.cancel"),
        Binding("ctrl+s", "create", "Create", id="new.create"),
        # enter moves on at once too (focus_at_once.py): the next field, Create after the last
        Binding("enter", "enter_now", "Next field", show=False, priority=True),
        *FOCUS_AT_ONCE,
    ]
    SAVE_HINT = "ctrl+s creates the project"

    def __init__(self, projects_dir: Path) -> None:
        super().__init__()  # no id: the last one may still be closing when the next opens
        self.projects_dir = Path(projects_dir)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Static("[b]New concept project[/b]  enter: next field · ctrl+s: create · esc: cancel", classes="dialog-title")
            for key, label, hint, _help in FIELDS:
                with Horizontal(classes="dialog-row"):
                    yield Label(label, classes="dialog-label")
                    yield OrderedInput(default(key), placeholder=hint, id=f"new-{key}", compact=True)
                # plain text: a problem repeats the path typed, and "a[/]b.png" as markup ended the app
                yield Static("", id=f"error-{key}", classes="param-error", markup=False)
            yield Static("", id="new-general", classes="param-error", markup=False)
            yield Static("", id="new-help", classes="dialog-help", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Create", id="create", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    @while_open
    def on_descendant_focus(self, event) -> None:
        key = (event.widget.id or "").removeprefix("new-")
        help_text = next((h for k, _, _, h in FIELDS if k == key), "")
        self.query_one("#new-help", Static).update(help_text)

    @while_open
    def on_input_changed(self, event: Input.Changed) -> None:
        """An edited field's old error goes: it was about the old text."""
        key = (event.input.id or "").removeprefix("new-")
        self.edits_changed()
        errors = self.query(f"#error-{key}")
        if errors:
            errors.first(Static).display = False

    @while_open
    def action_enter_now(self) -> None:
        """enter: the next field, or after the last one, create; on a button, press it."""
        focused = self.focused
        if isinstance(focused, Button):
            focused.press()
        elif isinstance(focused, Input):
            keys = [k for k, _, _, _ in FIELDS]
            index = keys.index((focused.id or "").removeprefix("new-"))
            if index + 1 < len(keys):
                self.set_focus(self.query_one(f"#new-{keys[index + 1]}", Input))
            else:
                self.action_create()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_create() if event.button.id == "create" else self.action_cancel()

    def action_cancel(self) -> None:
        self.app.close_screen(self, None)

    def has_unsaved_edits(self) -> bool:
        """Something typed that ctrl+q would lose (esc is this dialog's Cancel: it cancels)."""
        return any(self.value(key) != default(key) for key, _, _, _ in FIELDS if self.query(f"#new-{key}"))

    def value(self, key: str) -> str:
        return self.query_one(f"#new-{key}", Input).value.strip()

    def action_create(self) -> None:
        from engine.models.toy import new_project_caption
        from engine.project.scaffold import create_project

        if not self.is_active:  # a second ctrl+s while the dialog closes
            return

        name = self.value("name")
        problems: list[Problem] = []
        if not name:
            problems.append(Problem("dest", "give the project a name"))
        elif "/" in name or name in (".", "..") or name.startswith("."):
            problems.append(Problem("dest", "a plain folder name, without / (it is made in the projects folder)"))
        for key, flag in (("a", "a_image"), ("b", "b_image")):
            if not self.value(key):
                problems.append(Problem(flag, "give the path of the picture"))
        if not problems:
            try:
                base = self.value("base") or "tiny"
                create_project(self.projects_dir / name, self.value("a"), self.value("b"), name=name, base_model=base,
                               caption=new_project_caption(base, self.value("a")))  # toy: A's description, as `copylora new` writes
            except ValidationError as exc:
                problems = exc.problems
            except OSError as exc:
                problems = [Problem("", f"could not write the project: {exc}")]
        self.show_problems(problems)
        if not problems:
            self.app.close_screen(self, (self.projects_dir / name).resolve())

    @while_open
    def show_problems(self, problems: list[Problem]) -> None:
        by_field: dict[str, list[str]] = {}
        for problem in problems:
            by_field.setdefault(WHERE.get(problem.where, "general"), []).append(problem.message if problem.where in WHERE else str(problem))
        for key, _, _, _ in FIELDS:
            label = self.query_one(f"#error-{key}", Static)
            label.update("\n".join(f"↳ {m}" for m in by_field.get(key, [])))
            label.display = key in by_field
        general = self.query_one("#new-general", Static)
        general.update("\n".join(by_field.get("general", [])))
        general.display = "general" in by_field
        first = next((k for k, _, _, _ in FIELDS if k in by_field), None)
        if first is not None:
            self.query_one(f"#new-{first}", Input).focus()
