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
