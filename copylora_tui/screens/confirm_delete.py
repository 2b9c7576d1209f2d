"""Confirm deleting a project. Its output folder (the trained LoRAs) is kept unless the user
makes a second, explicit choice for it; the default action never deletes an output."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from copylora_tui.core.formatting import size_text
from copylora_tui.core.projects import ProjectSummary, delete_project, folder_bytes, output_inside
from copylora_tui.widgets.guard import ActsWhileOpen, while_open


class ConfirmDeleteScreen(ActsWhileOpen, ModalScreen[str | None]):
    BINDINGS = [
        Binding("escape,n", "cancel", "Keep it", id="delete.keep"),
        Binding("y", "delete", "Delete", id="delete.delete"),
        Binding("o", "toggle_outputs", "Also output/", id="delete.outputs"),
    ]

    def __init__(self, summary: ProjectSummary) -> None:
        super().__init__()  # no id: the last one may still be closing when the next opens
        self.summary = summary
        self.output = output_inside(summary)
        self.output_bytes = folder_bytes(self.output)
        self.also_outputs = False

    def compose(self) -> ComposeResult:
        name = self.summary.name
        with Vertical(id="dialog", classes="dialog"):
            # Text, not markup: the name and folders are the user's ("[Pony] style" is a fine name)
            yield Static(Text(f"Delete project {name}?", style="bold"), classes="dialog-title")
            yield Static(Text(f"Its settings and teacher pictures are removed (folder {self.summary.folder.name}/)."))
            has_output = self.output is not None and self.output.exists()
            if has_output:
                yield Static(f"Its output folder ({size_text(self.output_bytes)}: LoRAs, checkpoints) is kept unless you choose:")
                yield Static(self._toggle_text(), id="also-outputs", classes="toggle")
            elif self.summary.output_dir is not None and self.output is None:
                yield Static(Text(f"Its output folder {self.summary.output_dir} lies outside the project and is not touched."))
            # o only where there is an output folder it would delete (offered without one, it did nothing)
            yield Static("y: delete  ·  " + ("o: also output/  ·  " if has_output else "") + "n or esc: keep it", classes="dim")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Keep it", id="cancel", compact=True)
                yield Button("Delete", id="delete", variant="error", compact=True)

    @while_open
    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()  # enter on the dialog keeps the project

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_delete() if event.button.id == "delete" else self.action_cancel()

    def _toggle_text(self) -> Text:
        # Spelled out rather than a checkbox glyph: on a 256-colour terminal a ticked and an
        # unticked checkbox can look alike, and this is the choice that deletes LoRAs. Text, not
        # markup: as markup "[x]" was a tag, and the ticked line lost its tick.
        name = self.output.name if self.output is not None else "output"
        return Text(f"[x] ALSO DELETE {name}/" if self.also_outputs else f"[ ] also delete {name}/ (o)")

    @while_open
    def action_toggle_outputs(self) -> None:
        if self.output is None or not self.output.exists():
            return
        self.also_outputs = not self.also_outputs
        self.query_one("#also-outputs", Static).update(self._toggle_text())

    def on_click(self, event) -> None:
        if getattr(event.widget, "id", None) == "also-outputs":
            self.action_toggle_outputs()

    def action_cancel(self) -> None:
        self.app.close_screen(self, None)

    def _drop_draft(self) -> None:
        """Unsaved edits a hangup kept for it (core/drafts.py) go with it: a project made again
        at this path took them back."""
        from copylora_tui.core.drafts import drop_draft
        from engine.jobs.state_home import state_folder

        drop_draft(state_folder(self.app.home), self.summary.folder)

    def action_delete(self) -> None:
        if not self.is_active:  # a second "y" while the dialog closes: it was deleted once
            return
        also = self.also_outputs
        try:
            delete_project(self.summary, also_outputs=also)
            self._drop_draft()
        except OSError as exc:
            self.notify(f"could not delete {self.summary.folder}: {exc}", severity="error")
            self.app.close_screen(self, None)
            return
        kept = "" if also or self.output is None or not self.output.exists() else f" (kept {self.summary.folder.name}/{self.output.name}/)"
        self.app.close_screen(self, f"deleted {self.summary.name}{kept}")
