"""``copylora`` in a real terminal (tmux, 100x30): the projects screen, a navigation key, and
leaving cleanly when the terminal session is killed. Skipped where tmux is missing
(``.ci/run`` installs it)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.test_app_support import make_projects

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


SOCKET = f"copylora-test-{os.getpid()}"  # a private tmux server: never touch the user's sessions


def tmux(*args: str, check: bool = True) -> str:
    return subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True, check=check, timeout=30).stdout


def pane(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for(session: str, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = pane(session)
        if text in shown:
            return shown
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not on the screen:\n{pane(session)}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def session(tmp_path):
    name = f"copylora-test-{uuid.uuid4().hex[:8]}"
    make_projects(tmp_path)
    pidfile = tmp_path / "app.pid"
    env = {
        "COPYLORA_HOME": str(tmp_path / "state"), "PYTHONPATH": str(REPO), "TERM": "xterm-256color",
        "TEXTUAL_COLOR_SYSTEM": "256", "OMP_NUM_THREADS": "1", "COPYLORA_IMAGES": "0",
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # exec: the pane's process *is* the app, so its pid is the one to watch
    command = f"cd {shlex.quote(str(tmp_path))} && echo $$ > {pidfile} && exec env {exports} {shlex.quote(sys.executable)} -m copylora_tui"
    tmux("new-session", "-d", "-s", name, "-x", "100", "-y", "30", command)
    yield name, pidfile
    tmux("kill-server", check=False)


def test_projects_screen_navigation_and_exit_when_the_terminal_dies(session):
    name, pidfile = session
    wait_for(name, "n New")
    shown = wait_for(name, "example-monochrome")  # the rows come from a background scan, after the first frame
    assert "Projects" in shown and "example-monochrome" in shown and "worker not running" in shown
    assert tmux("display-message", "-p", "-t", name, "#{window_width}x#{window_height}").strip() == "100x30"
    pid = int(Path(pidfile).read_text())
    tmux("send-keys", "-t", name, "2")
    shown = wait_for(name, "w Worker")
    assert "Queue" in shown and "no jobs" in shown
    tmux("send-keys", "-t", name, "1")
    wait_for(name, "example-monochrome")
    tmux("kill-session", "-t", name)  # like a dropped SSH connection: the terminal is gone
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), "the app outlived its terminal"


def test_sighup_in_tmux_exits(session):
    name, pidfile = session
    wait_for(name, "example-monochrome")
    pid = int(Path(pidfile).read_text())
    os.kill(pid, 1)  # SIGHUP
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


def test_ctrl_z_without_a_shell_to_come_back_to_says_so(session):
    """The app as the pane's own command (exec): a stop would be discarded by the kernel (an
    orphaned process group) after the app left the screen; it says why it stays instead."""
    name, _pidfile = session
    wait_for(name, "example-monochrome")
    tmux("send-keys", "-t", name, "C-z")
    shown = wait_for(name, "no shell to stop to")
    assert "example-monochrome" in shown


def test_ctrl_z_stops_the_app_and_fg_brings_it_back(tmp_path):
    """Started from an interactive shell, ctrl+z stops the app as it stops any terminal
    program, the shell's prompt comes back, and fg redraws the app where it was."""
    name = f"copylora-test-{uuid.uuid4().hex[:8]}"
    make_projects(tmp_path)
    env = {"COPYLORA_HOME": str(tmp_path / "state"), "PYTHONPATH": str(REPO), "TERM": "xterm-256color",
           "OMP_NUM_THREADS": "1", "COPYLORA_IMAGES": "0", "PS1": "shell$ "}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    tmux("new-session", "-d", "-s", name, "-x", "100", "-y", "30", f"env {exports} bash --norc --noprofile -i")
    try:
        wait_for(name, "shell$")
        tmux("send-keys", "-t", name, f"cd {shlex.quote(str(tmp_path))} && {shlex.quote(sys.executable)} -m copylora_tui", "Enter")
        wait_for(name, "example-monochrome")
        tmux("send-keys", "-t", name, "C-z")
        shown = wait_for(name, "Stopped")
        assert "n New" not in shown
        tmux("send-keys", "-t", name, "fg", "Enter")
        wait_for(name, "n New")
        tmux("send-keys", "-t", name, "2")
        wait_for(name, "w Worker")  # it answers keys again
        tmux("send-keys", "-t", name, "q")
        wait_for(name, "shell$")
    finally:
        tmux("kill-server", check=False)


def test_edits_in_the_form_outlive_the_terminal(session, tmp_path):
    """A dropped SSH link with edits in the form: the app leaves (as above) and writes them to a
    draft; opened again, the project's form takes them back."""
    name, pidfile = session
    wait_for(name, "example-monochrome")
    pid = int(Path(pidfile).read_text())
    tmux("send-keys", "-t", name, "Down", "Up", "o")  # open the selected project
    wait_for(name, "saved, valid")
    tmux("send-keys", "-t", name, "Tab")  # to the first field, the name
    time.sleep(0.5)
    tmux("send-keys", "-t", name, "draftname")
    wait_for(name, "unsaved changes")
    tmux("kill-session", "-t", name)
    deadline = time.monotonic() + 15
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
    assert list((tmp_path / "state" / "drafts").glob("*.json"))
    env = f"COPYLORA_HOME={shlex.quote(str(tmp_path / 'state'))} PYTHONPATH={shlex.quote(str(REPO))} OMP_NUM_THREADS=1 COPYLORA_IMAGES=0"
    tmux("new-session", "-d", "-s", name, "-x", "100", "-y", "30",
         f"cd {shlex.quote(str(tmp_path))} && exec env {env} {shlex.quote(sys.executable)} -m copylora_tui")
    wait_for(name, "example-monochrome")
    tmux("send-keys", "-t", name, "Down", "Up", "o")
    shown = wait_for(name, "took back 1 edit(s)")
    assert "draftname" in shown and "unsaved changes" in shown and "changed since" not in shown
