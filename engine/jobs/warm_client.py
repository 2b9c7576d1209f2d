"""The worker's side of warm job starts (engine/jobs/warm_start.py): start the preloaded process,
ask it for jobs, and hold the jobs it forks like the worker's own children.

Everything here degrades to the cold start the worker always had: warm starts switched off
(``COPYLORA_WARM_START=0``), no subreaper (not Linux), the preloaded process unable to load, slow
to load, or gone, a request it cannot serve. Each is said once in the worker's log.
"""

from __future__ import annotations

import json
import os
import queue as queues
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from engine.jobs.procs import alive, become_subreaper, children, process_state

SWITCH = "COPYLORA_WARM_START"
# A job waits this long for the preloaded process to finish importing before it starts cold:
# about what its own imports would take on a slow machine, so waiting is never much worse.
LOAD_WAIT_S = 60.0
REPLY_WAIT_S = 30.0  # a fork takes milliseconds; this is a machine swapping hard


def _cancel(ticket: Path) -> bool:
    """Take a job's ticket back: True if the job had not taken it (it never will now)."""
    try:
        os.rename(ticket, f"{ticket}.cancelled")
    except FileNotFoundError:
        return False
    Path(f"{ticket}.cancelled").unlink(missing_ok=True)
    return True


def _unknown_child(known, wait_s: float = 2.0) -> int | None:
    """The job that took its ticket before its pid was written there (the narrowest of races): the
    child of ours that is not a job we hold, the running one first (it may have ended already)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        found = [pid for pid in children() if pid not in known]
        if found:
            return sorted(found, key=lambda pid: process_state(pid) == b"Z")[0]
        time.sleep(0.05)
    return None


def wanted(environ=None) -> bool:
    value = (os.environ if environ is None else environ).get(SWITCH, "").strip().lower()
    return value not in ("0", "off", "no", "false")


class ForkedJob:
    """A job forked by the preloaded process and handed to the worker by the kernel (subreaper):
    what the worker does with a ``subprocess.Popen`` (``pid``, ``poll``, ``send_signal``,
    ``kill``), through the pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not handed to us (cannot happen with a subreaper): judge by life
                if not alive(self.pid):
                    self.returncode = 1
                return self.returncode
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class WarmStarter:
    """The preloaded process, seen from the worker. ``state``: "loading", "ready" or "off"."""

    def __init__(self, log: Callable[[str], None], *, also: tuple[str, ...] = ()) -> None:
        self.log = log
        self.state, self.why = "off", ""
        self.process: subprocess.Popen | None = None
        self.lines: queues.Queue = queues.Queue()
        self.started = time.monotonic()
        self.also = also
        self.subreaper = False  # orphans of our descendants come to us: the worker reaps them
        if not wanted():
            self.why = f"switched off by {SWITCH}={os.environ.get(SWITCH)}"
            self.log(f"warm start off ({self.why}): jobs start cold")
            return
        self.subreaper = become_subreaper()
        if not self.subreaper:
            self._off("this system cannot hand forked jobs to the worker (no child subreaper)")
            return
        self._launch()

    def _launch(self) -> None:
        """Start the preloaded process; its replies are read by a thread of their own."""
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "engine.jobs.warm_start", *[f"--also={name}" for name in self.also]],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,  # in the worker's folder (a removed one too)
            )
        except OSError as exc:
            self._off(f"the preloaded process could not start ({exc})")
            return
        self.state, self.started, self.lines = "loading", time.monotonic(), queues.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines), name="warm-start-replies", daemon=True).start()

    @staticmethod
    def _read(stream, lines: queues.Queue) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)  # gone

    def _off(self, why: str) -> None:
        if self.state != "off" or not self.why:
            self.log(f"warm start off: {why}; jobs start cold (each imports torch and the libraries itself)")
        self.state, self.why = "off", why
        self.close()

    def _next(self, timeout: float | None) -> dict | None:
        """The next reply, or None when the process is gone or says nothing in ``timeout``."""
        try:
            line = self.lines.get(timeout=timeout) if timeout else self.lines.get_nowait()
        except queues.Empty:
            return {}
        if line is None:
            return None
        try:
            return json.loads(line)
        except ValueError:
            return {"error": f"not a reply: {line[:200]!r}"}

    def waiting(self) -> bool:
        """True while a job should wait for the preloaded process (it is loading, and not for
        too long); reads its ready line when there is one."""
        if self.state != "loading":
            return False
        reply = self._next(None)
        if reply is None:
            self._off("the preloaded process ended while importing (see the lines above)")
            return False
        if reply.get("ready"):
            self.state = "ready"
            self.log(f"warm start: {', '.join(reply.get('modules', []))} preloaded in {reply.get('seconds')} s "
                     f"({reply.get('tier')} tier); jobs start from it")
            return False
        if "ready" in reply:
            self._off(str(reply.get("why")))
            return False
        if time.monotonic() - self.started > LOAD_WAIT_S:
            self._off(f"the preloaded process took over {LOAD_WAIT_S:.0f} s to import")
            return False
        return True

    def start(self, argv: list[str], env: dict[str, str], log_path, cwd: str, known: set[int] | frozenset = frozenset()) -> ForkedJob | None:
        """Fork a job from the preloaded process; None if it cannot (then the caller starts it cold).

        The job runs only if it can take its *ticket* (a file it renames away): when no reply comes
        in time the worker cancels the ticket before starting the job cold, so a fork that comes
        late can never run the job a second time beside the cold one. ``known``: the pids of the
        jobs the worker holds already."""
        if self.state != "ready" or self.process is None or self.process.stdin is None:
            return None
        ticket = Path(f"{log_path}.ticket")
        try:
            ticket.write_bytes(b"")
        except OSError:  # the logs folder is not writable: the cold start meets (and says) the same
            return None
        request = {"argv": argv, "env": env, "log": str(log_path), "cwd": cwd, "reaper": os.getpid(), "ticket": str(ticket)}
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            reply = self._next(REPLY_WAIT_S)
        except OSError:
            reply = None
        if reply and reply.get("pid"):
            return ForkedJob(int(reply["pid"]))
        if reply and reply.get("stale"):  # code changed under it (an update): load it again, this job cold
            _cancel(ticket)
            self.log(f"warm start: {reply['stale']} changed since it was preloaded; preloading again (this job starts cold)")
            self.close()
            self._launch()
            return None
        why = "the preloaded process is gone" if reply is None else \
            f"the preloaded process could not fork a job ({reply.get('error') or f'no reply in {REPLY_WAIT_S:.0f} s'})"
        try:
            marked = ticket.read_text().strip()  # the job's pid, written before the job can take it
        except OSError:
            marked = ""
        taken = not _cancel(ticket)
        self._off(why)
        if taken:  # too late to cancel: the job runs, forked; it is one of our children by now
            pid = int(marked) if marked.isdigit() else _unknown_child(known)
            if pid is not None:
                return ForkedJob(pid)
        return None

    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def close(self) -> None:
        """End the preloaded process. It holds nothing worth a graceful end (the jobs it forked
        are the worker's, not its own), and importing, hung or stopped it would not heed a polite one."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
        except OSError:
            pass
        process.kill()  # SIGKILL: a hung or stopped process ends too, at once
        process.wait()


def last_said(log_path, pid: int, tail_bytes: int = 256 * 1024) -> str | None:
    """What the worker ``pid`` last said of warm starts in its log (``worker.log``), without the
    time stamp: for ``copylora worker status``. None if it said nothing (yet)."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - tail_bytes))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    began = max((i for i, line in enumerate(lines) if f" worker {pid} on " in line), default=None)
    if began is None:
        return None
    said = [line.split(" ", 2)[-1] for line in lines[began:] if " warm start" in line]
    return said[-1] if said else None
