"""Start-up and shutdown of the real program in a pseudo-terminal: the first frame comes
fast, nothing heavy is imported, and a hang-up (SIGHUP, or a terminal that just vanishes)
ends the app cleanly instead of leaving it spinning on a dead terminal."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from copylora_tui.hangup import HANGUP_EXIT, terminal_alive
from tests.helpers import REPO
from tests.test_app_support import make_projects

HEAVY = ("torch", "diffusers", "transformers", "bitsandbytes", "safetensors.torch", "numpy")


def test_app_mounts_its_first_screen_without_heavy_imports(tmp_path):
    projects = make_projects(tmp_path)
    probe = f"""
import asyncio, json, os, sys
os.environ["COPYLORA_HOME"] = {str(tmp_path / "state")!r}
from copylora_tui.app import CopyloraApp

async def main():
    app = CopyloraApp({str(projects)!r})
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(200):
            await pilot.pause(0.05)
            if app.screen.summaries and app.snapshot.home is not None:
                break
        assert app.screen.summaries[0].name == "example-monochrome"
asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert [m for m in HEAVY if m in loaded] == []


def spawn(tmp_path: Path, *, controlling: bool = True, extra_env: dict | None = None):
    """``python -m copylora_tui`` on a 100x30 pseudo-terminal; returns (process, master fd)."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", COPYLORA_HOME=str(tmp_path / "state"), COPYLORA_IMAGES="0", **(extra_env or {}))
    env["PYTHONPATH"] = str(REPO)

    def make_controlling():  # a session of its own with the pty as its terminal, like a login
        os.setsid()
        if controlling:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [sys.executable, "-m", "copylora_tui", "--projects", str(make_projects(tmp_path))],
        stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, env=env, preexec_fn=make_controlling,
    )
    os.close(slave)
    return process, master


def read_until(master: int, marker: bytes, timeout: float) -> tuple[bytes, float]:
    start = time.perf_counter()
    seen = b""
    while time.perf_counter() - start < timeout:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
            if marker in seen:
                return seen, time.perf_counter() - start
    raise AssertionError(f"{marker!r} not shown within {timeout} s; got {seen[-400:]!r}")


def drain_until_exit(process, master: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                os.read(master, 65536)
            except OSError:
                pass
        if process.poll() is not None:
            return process.returncode
    process.kill()
    raise AssertionError("the app did not exit")


def test_first_frame_is_fast_and_sighup_exits(tmp_path):
    process, master = spawn(tmp_path)
    try:
        _, first_frame = read_until(master, b"Projects", timeout=20)
        read_until(master, b"example-monochrome", timeout=20)
        print(f"time to first frame: {first_frame:.2f} s")
        assert first_frame < 5.0  # about 0.3-0.7 s on an idle 2-core box; generous for a loaded CI
        process.send_signal(signal.SIGHUP)
        assert drain_until_exit(process, master, timeout=10) == HANGUP_EXIT
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()


def test_vanished_terminal_without_sighup_exits(tmp_path):
    """The pty is not the app's controlling terminal, so closing it sends no SIGHUP: the
    once-a-second terminal check must notice and end the app (reads return EOF forever)."""
    process, master = spawn(tmp_path, controlling=False)
    try:
        read_until(master, b"Projects", timeout=20)
    finally:
        os.close(master)  # the terminal goes away
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the app kept running on a dead terminal")
    assert process.returncode == HANGUP_EXIT


def test_sigcont_on_a_dead_terminal_ends_the_app_at_once(tmp_path):
    """What a hangup sends a session leader, SIGHUP aside: SIGCONT. Before the guard, Textual
    resumed application mode onto the dead terminal and the exit then blocked (until the exit
    deadline, 10 s, ended it; without that, for good). Now it leaves within a moment."""
    from copylora_tui.hangup import EXIT_GRACE_S

    process, master = spawn(tmp_path, controlling=False)  # no SIGHUP when the terminal goes
    try:
        read_until(master, b"example-monochrome", timeout=20)
        process.send_signal(signal.SIGCONT)  # `fg` onto a live terminal: the app goes on
        time.sleep(1.0)
        assert process.poll() is None, "SIGCONT on a live terminal ended the app"
    finally:
        os.close(master)
    started = time.monotonic()
    process.send_signal(signal.SIGCONT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the app kept running on a dead terminal")
    took = time.monotonic() - started
    assert process.returncode == HANGUP_EXIT and took < EXIT_GRACE_S / 2, f"left after {took:.1f} s"


def test_terminal_alive_sees_a_hangup():
    master, slave = os.openpty()
    assert terminal_alive(slave)
    os.close(master)
    assert not terminal_alive(slave)
    os.close(slave)
    assert not terminal_alive(slave)


def test_sigcont_resumes_only_onto_a_live_terminal():
    """The kernel follows a hangup's SIGHUP with SIGCONT, and Textual's SIGCONT handler (for `fg`
    after Ctrl-Z) started application mode again on the dead terminal: a second output thread
    that died on its first write, whose full queue then blocked the exit for good (an app left
    running for minutes after its tmux session was killed, 2026-12-04)."""
    from copylora_tui.hangup import guard_resume

    resumed, left = [], []
    original = signal.signal(signal.SIGCONT, lambda *_: resumed.append(True))  # the driver's handler
    master, slave = os.openpty()
    try:
        guard_resume(slave, lambda: left.append(True))
        os.kill(os.getpid(), signal.SIGCONT)  # `fg`: the terminal answers
        assert (resumed, left) == ([True], [])
        os.close(master)  # the terminal goes away
        os.kill(os.getpid(), signal.SIGCONT)
        assert (resumed, left) == ([True], [True])
    finally:
        signal.signal(signal.SIGCONT, original)
        os.close(slave)


def test_an_exit_that_blocks_after_a_hangup_is_ended_after_its_grace():
    from copylora_tui.hangup import ExitDeadline

    ended = []
    deadline = ExitDeadline(0.2, end=ended.append)
    started = time.monotonic()
    deadline.start()
    deadline.start()  # SIGHUP, SIGCONT and the terminal check may all ask: one deadline
    while not ended and time.monotonic() - started < 5:
        time.sleep(0.01)
    time.sleep(0.3)
    assert ended == [HANGUP_EXIT] and time.monotonic() - started >= 0.2


def test_pictures_are_loaded_only_where_wanted():
    from copylora_tui.teacher_images import wanted

    assert not wanted({"TERM": "xterm-256color"})
    assert wanted({"TERM": "xterm-kitty"}) and wanted({"TERM_PROGRAM": "WezTerm"})
    assert not wanted({"TERM": "xterm-kitty", "TMUX": "/tmp/tmux-0/default,1,0"})
    assert wanted({"COPYLORA_IMAGES": "1", "TERM": "screen"}) and not wanted({"COPYLORA_IMAGES": "0", "TERM": "xterm-kitty"})
