"""The Textual app. (The full screens arrive with the app issue; this is the projects list.)

Imports nothing heavy at module level: the app must open without torch.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from textual.widgets import DataTable, Footer, Header, Static


class CopyloraApp(App):
    TITLE = "copylora"
    SUB_TITLE = "copy-machine LoRAs"
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, projects_dir: str | Path = "projects") -> None:
        super().__init__()
        self.projects_dir = Path(projects_dir)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="empty")
        yield DataTable(id="projects", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        from engine.errors import ValidationError
        from engine.project import PROJECT_FILE, load_project

        table = self.query_one(DataTable)
        table.add_columns("project", "base model", "state")
        folders = sorted(p.parent for p in self.projects_dir.glob(f"*/{PROJECT_FILE}")) if self.projects_dir.is_dir() else []
        for folder in folders:
            try:
                project = load_project(folder)
                table.add_row(project.name, project.info.base_model, "valid")
            except ValidationError as exc:
                table.add_row(folder.name, "?", f"{len(exc.problems)} problem(s)")
        empty = self.query_one("#empty", Static)
        if folders:
            empty.display = False
        else:
            empty.update(
                f"No projects in {self.projects_dir}/.\n"
                "Make one with: copylora new NAME --a A.png --b B.png"
            )
            table.display = False


def run_app(projects_dir: str | Path = "projects") -> int:
    CopyloraApp(projects_dir).run()
    return 0
