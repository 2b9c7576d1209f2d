"""Where the queue, the worker's lock and logs, and the job logs live.

One state folder per user (``~/.local/state/copylora``, following XDG_STATE_HOME), or
``COPYLORA_HOME`` to keep several independent queues (tests use it). Everything that the
daemon and its clients share is under it, like pueue's state directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_folder(override: str | os.PathLike | None = None) -> Path:
    """Where the state folder is, without making it (for readers such as a log tail). Always
    absolute: a relative COPYLORA_HOME is read against the current folder here, so the worker
    (given this path), its jobs (which may run in another folder) and the messages all name one place.
    A relative XDG_STATE_HOME is ignored, as the XDG spec says."""
    if override:
        home = Path(override)
    elif os.environ.get("COPYLORA_HOME"):
        home = Path(os.environ["COPYLORA_HOME"])
    else:
        xdg = os.environ.get("XDG_STATE_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
        home = base / "copylora"
    return Path(os.path.abspath(home.expanduser()))


def state_home(override: str | os.PathLike | None = None) -> Path:
    home = state_folder(override)
    try:
        if not override and not os.environ.get("COPYLORA_HOME") and not home.exists():
            # The default one is the user's alone (XDG: made 0700): its queue and logs name every
            # project and picture, and were readable by everyone on a shared box. A COPYLORA_HOME
            # of one's choosing (a group's shared one) keeps the umask's mode.
            home.parent.mkdir(parents=True, exist_ok=True)
            home.mkdir(mode=0o700, exist_ok=True)
        (home / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file there, a read-only disk, another user's folder
        from engine.errors import CopyloraError

        where = "COPYLORA_HOME" if not override and os.environ.get("COPYLORA_HOME") else "the state folder"
        raise CopyloraError(f"cannot use {home} ({where}) for the job queue and logs: {exc.strerror or exc}"
                            + ("; set COPYLORA_HOME to a writable folder" if where != "COPYLORA_HOME" else "")) from exc
    return home


def working_folder(home: Path, log=None, *, move: bool = True) -> str:
    """The folder jobs start in: the current one (where the worker was started, so a relative
    path a user set in the environment means what it meant there), or, once that folder has been
    removed (a project folder the worker was started in, deleted since), the state folder:
    ``os.getcwd()`` raised FileNotFoundError there and the worker stopped at its next job, every
    running job marked interrupted. ``move``: go there for good (the worker; a client that only
    starts one stays where it is). ``log`` hears of the move."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        if move:
            os.chdir(home)
            if log is not None:
                log(f"the folder this process was started in was removed; jobs start in {home} from now on")
        return str(home)


def queue_db(home: Path) -> Path:
    return home / "queue.db"


def job_log(home: Path, job_id: int) -> Path:
    return home / "logs" / f"job-{job_id}.log"


def channel_dir(home: Path, job_id: int) -> Path:
    """Where a job run on another host and its worker trade files (engine.jobs.channel)."""
    return Path(home) / "channels" / str(job_id)


def worker_log(home: Path) -> Path:
    return home / "worker.log"


def worker_lock(home: Path) -> Path:
    return home / "worker.lock"
