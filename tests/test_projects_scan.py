"""The Projects list shows every project it can, whatever one of them holds: a broken project
is a row that says why, never a list that stays on "reading the projects …"."""

from __future__ import annotations

from pathlib import Path

from copylora_tui.core.projects import folder_bytes, scan_projects
from tests.test_app_support import make_projects


def test_a_project_the_reader_did_not_foresee_is_listed_as_invalid_beside_the_rest(tmp_path):
    projects = make_projects(tmp_path, ("good", "huge"))
    toml = projects / "huge" / "copylora.toml"
    toml.write_text(toml.read_text().replace("seed = 42", "seed = " + "9" * 5000))  # tomllib: ValueError (int limit)
    summaries = {s.folder.name: s for s in scan_projects(projects)}
    assert summaries["good"].valid
    assert not summaries["huge"].valid and "ValueError" in summaries["huge"].problems[0]


def test_folder_sizes_count_what_can_be_read(tmp_path, monkeypatch):
    (tmp_path / "out" / "runs").mkdir(parents=True)
    (tmp_path / "out" / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "out" / "runs" / "b.bin").write_bytes(b"x" * 5)
    real_is_file = Path.is_file

    def unreadable(self):
        if self.name == "b.bin":  # a folder of another user's, as a non-root user meets it
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", unreadable)
    assert folder_bytes(tmp_path / "out") == 10
