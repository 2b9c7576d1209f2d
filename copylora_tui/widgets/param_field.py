"""One parameter of the project form: its key, an editor, and its error right beside it.

The editor fits the key's type: a checkbox for true/false, a text input (with completion
where the key has fixed choices) for the rest. Every change is checked at once with the CLI's
validator (:func:`copylora_tui.core.form.parse_text`) and reported upwards in a
:class:`ParamField.Changed` message, valid or not.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Checkbox, Input, Label, Static

from copylora_tui.core.form import INHERIT, FieldSpec, parse_text, value_text
from copylora_tui.widgets.ordered_input import OrderedInput


class TickBox(Checkbox):
    """A checkbox whose tick is a character, not only a colour: in 256 or 16 colours (SSH)
    Textual's ticked and unticked boxes both read ``▐X▌``, which beside the word "false" looked
    like a contradiction. Here an unticked box is empty."""

    @property
    def BUTTON_INNER(self) -> str:  # type: ignore[override]  (a class constant in Textual)
        return "X" if self.value else " "


class ParamField(Vertical):
    class Changed(Message):
        """The field's text changed; ``error`` is None when the value is valid."""

        def __init__(self, field: ParamField, value: Any, error: str | None) -> None:
            super().__init__()
            self.field = field
            self.value = value
            self.error = error

        @property
        def control(self) -> ParamField:
            return self.field

    def __init__(self, spec: FieldSpec, value: Any, *, inherited: Any = None) -> None:
        super().__init__(id=f"field-{spec.dom_section}-{spec.key}", classes="param-field")
        self.spec = spec
        self.text = value_text(value, spec)
        self.inherited = inherited
        self.error: str | None = None
        self.shown_error: str | None = None  # what the error line shows (own or project-wide)
        self.tooltip = spec.doc

    def compose(self) -> ComposeResult:
        spec = self.spec
        # Three children on a two-column grid (key | editor, the error under both): every
        # container less per field is felt when a screen of forty fields opens.
        yield Label(spec.key, classes="param-key")
        yield self._editor()
        yield Static("", classes="param-error", markup=False)  # a problem repeats the value typed: "[/]" is text

    def _editor(self):
        """A checkbox for a true/false key, else a one-line input (keys with fixed choices get
        completion from them: a Select per key would make the form several times slower to
        open, and typing a prefix is quicker over SSH anyway)."""
        spec = self.spec
        if spec.kind is bool and not spec.override:
            return TickBox(self.text or "false", value=self.text == "true", compact=True, id="editor")
        choices = spec.choices or (("true", "false") if spec.kind is bool else None)
        placeholder = "unset" if spec.optional else ""
        if spec.override:
            shown = value_text(self.inherited, spec) if self.inherited is not None else "unset"
            placeholder = f"inherits {shown}"
        if choices:
            # An empty choice ("" = off, as log_with's) reads as "" in the hint, not as a blank before a bar.
            shown = " | ".join(c if c else '""' for c in choices)
            placeholder = f"{placeholder + ' · ' if placeholder else ''}{shown}"
        suggester = SuggestFromList([c for c in choices if c], case_sensitive=False) if choices else None
        return OrderedInput(self.text, placeholder=placeholder, suggester=suggester, compact=True, id="editor")

    def _changed(self, text: str) -> None:
        self.text = text
        value, self.error = parse_text(text, self.spec)
        self.show_error(self.error)
        self.post_message(self.Changed(self, value, self.error))

    def on_mount(self) -> None:
        self._show_shown_error()

    def show_error(self, error: str | None) -> None:
        """Show (or clear) a problem next to the field: its own or the whole project's.

        A field of a section that was just unfolded may be asked before it has composed its
        children (mounting is asynchronous): the error is kept and shown once it has."""
        self.shown_error = error
        self.set_class(bool(error), "-invalid")
        self._show_shown_error()

    def _show_shown_error(self) -> None:
        labels = self.query(".param-error")
        if not labels:
            return  # not composed yet: on_mount shows it
        label = labels.first(Static)
        label.update(f"↳ {self.shown_error}" if self.shown_error else "")
        label.display = bool(self.shown_error)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.value == self.text:
            return  # an input says "changed" when it mounts with its value: nothing was edited
        self._changed(event.value)

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        text = "true" if event.value else "false"
        event.checkbox.label = text  # the word, not only the tick: ticks can look alike in 256 colours
        self._changed(text)

    def set_text(self, text: str) -> None:
        """Put ``text`` in the editor, as if typed (a draft taken back: see core/drafts.py)."""
        editor = self.query_one("#editor")
        if isinstance(editor, TickBox):
            editor.value = text.strip() == "true"
        else:
            editor.value = text

    @property
    def is_inherit(self) -> bool:
        return self.spec.override and parse_text(self.text, self.spec)[0] is INHERIT
