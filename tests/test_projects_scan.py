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


def test_a_project_file_that_is_a_broken_link_is_listed_saying_what_it_is(tmp_path):
    """A copylora.toml linked to a shared file that moved, or to itself: glob skipped it and the
    project left the list without a word. Folders without a project file stay out."""
    projects = make_projects(tmp_path, ("good",))
    for name, target in (("moved", "/nowhere/copylora.toml"), ("loop", "copylora.toml")):
        (projects / name).mkdir()
        (projects / name / "copylora.toml").symlink_to(target)
    (projects / "folder").mkdir()
    (projects / "folder" / "copylora.toml").mkdir()
    (projects / "notes").mkdir()
    (projects / "linked").symlink_to(projects / "good")  # a link to a project is that project
    scanned = scan_projects(projects)
    summaries = {s.folder.name: s for s in scanned}
    assert sorted(summaries) == ["folder", "good", "loop", "moved"] and len(scanned) == 4
    assert summaries["good"].valid
    assert summaries["moved"].problems == (f"{projects / 'moved' / 'copylora.toml'} is a link to /nowhere/copylora.toml, which does not exist",)
    assert summaries["loop"].problems == (f"{projects / 'loop' / 'copylora.toml'} is a link that leads back to itself (a loop of links)",)
    assert summaries["folder"].problems == (f"{projects / 'folder' / 'copylora.toml'} is a folder, not a file",)


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
