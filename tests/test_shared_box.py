"""A box with several users (a lab's GPU server): a group's shared projects folder, cache and
queue folder, and one user's files in another's way. Found by trying it with two users: a
project made by `new` lost its folder's setgid bit, a shared cache's weights were 0600, a side
lock held by another user's file was skipped (both trained one side at once), and the queue
folder was readable by everyone. Run as root here, so another user's refusal is simulated where
root would not meet it (root may write any file)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from engine.jobs.queue import Queue
from tests.helpers import REPO, write_png


@pytest.fixture
def group_umask():
    """The umask a group that shares files sets (002), put back after."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_a_project_made_in_a_setgid_folder_keeps_the_bit_and_the_group(tmp_path, group_umask):
    from copylora_tui.cli.main import main

    shared = tmp_path / "lab-projects"
    shared.mkdir()
    shared.chmod(0o2775)
    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(90, 90, 90))
    assert main(["new", "--projects", str(shared), "grp", "--a", str(a), "--b", str(b)]) == 0
    project = shared / "grp"
    assert stat.S_IMODE(project.stat().st_mode) == 0o2775  # drwxrwsr-x: what mkdir gives there
    assert stat.S_IMODE((project / "a").stat().st_mode) & stat.S_ISGID and project.stat().st_gid == shared.stat().st_gid


def test_a_cache_of_the_built_in_model_is_readable_as_the_umask_says(tmp_path, monkeypatch, group_umask):
    from engine.models import tiny

    monkeypatch.setenv("COPYLORA_CACHE", str(tmp_path / "cache"))
    folder = tiny.tiny_model_dir()
    weights = [p for p in folder.rglob("*.safetensors")]
    assert weights and all(stat.S_IMODE(p.stat().st_mode) == 0o664 for p in folder.rglob("*") if p.is_file()), \
        {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in weights}


def test_a_lock_file_this_user_cannot_write_still_locks(tmp_path, monkeypatch):
    """The lock file left by another user's worker (0644, theirs): opening it to write failed,
    and the side lock was skipped. flock needs no write access: it is taken read-only."""
    import builtins

    import engine.files

    path = tmp_path / "training.lock"
    path.write_text("queue job #16 of alice's queue\n")
    real_open = builtins.open

    def their_file(file, mode="r", *args, **kwargs):
        if str(file) == str(path) and mode != "r":
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", their_file)
    handle, held_by = engine.files.take_lock(path, "queue job #7 of bob's queue")
    assert handle is not None and held_by is None
    other = subprocess.run([sys.executable, "-c", f"from engine.files import take_lock; print(take_lock({str(path)!r}, 'x')[1])"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "queue job #16 of alice's queue"  # held: the other one is told by whom it was last
    handle.close()


def test_a_queue_made_under_a_group_umask_is_group_writable_and_the_default_one_private(tmp_path, monkeypatch, group_umask):
    from engine.jobs.state_home import state_home

    queue = Queue(tmp_path / "shared-home")
    queue.enqueue("merge", "/p", label="merge")
    for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
        assert stat.S_IMODE((tmp_path / "shared-home" / name).stat().st_mode) == 0o664, name
    monkeypatch.delenv("COPYLORA_HOME", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert stat.S_IMODE(state_home().stat().st_mode) == 0o700


def test_another_users_queue_and_worker_are_said_as_theirs(tmp_path, monkeypatch):
    import engine.jobs.queue as queue_module
    import engine.jobs.worker as worker_module
    from engine.errors import InputError

    home = tmp_path / "state"
    Queue(home)
    monkeypatch.setattr(queue_module.os, "geteuid", lambda: 4321)  # we are someone else than the files' owner
    monkeypatch.setattr(queue_module.os, "access", lambda path, mode: False)
    assert "queue.db is root's and not writable by this user: use your own COPYLORA_HOME" in queue_module._why_read_only(home / "queue.db")
    monkeypatch.undo()
    monkeypatch.setattr(worker_module, "worker_pid", lambda home: 4242)

    def refused(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(worker_module.os, "kill", refused)
    with pytest.raises(InputError, match=r"the worker on .* \(pid 4242\) is another user's .*: only they, or root, can stop it"):
        worker_module.stop_worker(home)
