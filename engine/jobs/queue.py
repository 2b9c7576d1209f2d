"""The job queue: one SQLite database shared by the worker daemon, the CLI and any number of apps.

SQLite in WAL mode lets readers (the app polling twice a second, ``copylora queue``) run while
the worker writes; a busy timeout makes writers wait for each other instead of failing with
"database is locked". Every state change is one short ``BEGIN IMMEDIATE`` transaction, so two
processes can never claim the same job. The schema is versioned (``PRAGMA user_version``) and
migrated forward on open.

Job life: queued → running → done | failed | cancelled, with paused beside queued. A job
waits for its dependencies (a merge for both trainings); when one fails or is cancelled, its
dependants fail with the reason, and ``retry`` of the dependency brings them back.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.errors import CopyloraError
from engine.jobs.state_home import channel_dir, job_log, queue_db, state_home


class JobStatus(str, Enum):
    """Where a job is in its life: queued → running → done | failed | cancelled, with paused
    beside queued. A str, so it is stored, printed and sent as JSON as the plain word (the
    database's SQL speaks the same words)."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def active(self) -> bool:
        """Waiting or running: the job still has work to do."""
        return self in ACTIVE

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def waiting(self) -> bool:
        """Queued or paused: not started (or stopped to resume later)."""
        return self in WAITING


STATUSES = tuple(JobStatus)
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)
FINISHED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)
WAITING = (JobStatus.QUEUED, JobStatus.PAUSED)
KINDS = ("train", "merge", "sample", "reg")  # what the runner runs (engine/jobs/runner.py RUNNERS); bake and extract are CLI-only
MAX_POINTS = 1000  # progress points kept per job: enough for a smooth curve of any length
GPU_HISTORY_S = 600

MIGRATIONS: list[list[str]] = [
    [  # version 1
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL, project TEXT NOT NULL, side TEXT, label TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'queued', position REAL NOT NULL,
            gpu TEXT, pid INTEGER, pid_start TEXT, attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, started_at REAL, finished_at REAL, updated_at REAL,
            error TEXT, failed_by INTEGER, artifacts TEXT NOT NULL DEFAULT '{}',
            control TEXT, save_now INTEGER NOT NULL DEFAULT 0, sample_now INTEGER NOT NULL DEFAULT 0,
            step INTEGER, total INTEGER, loss REAL, smooth_loss REAL, lr REAL, it_per_s REAL,
            eta_s REAL, vram_mb REAL, start_step INTEGER
        )""",
        "CREATE INDEX jobs_status ON jobs(status, position)",
        "CREATE TABLE deps (job_id INTEGER NOT NULL, depends_on INTEGER NOT NULL, PRIMARY KEY (job_id, depends_on))",
        """CREATE TABLE points (
            job_id INTEGER NOT NULL, step INTEGER NOT NULL, t REAL NOT NULL,
            loss REAL, smooth_loss REAL, lr REAL, vram_mb REAL, PRIMARY KEY (job_id, step)
        )""",
        """CREATE TABLE gpu_stats (
            gpu INTEGER NOT NULL, t REAL NOT NULL, name TEXT, used_mb REAL, total_mb REAL,
            util REAL, temp REAL, power_w REAL, PRIMARY KEY (gpu, t)
        )""",
        """CREATE TABLE worker (
            id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER, started_at REAL,
            heartbeat REAL, gpus TEXT, slots INTEGER
        )""",
    ],
    [  # version 2: twin training (A and B as one job) reports B's loss beside A's
        "ALTER TABLE jobs ADD COLUMN loss_b REAL",
        "ALTER TABLE jobs ADD COLUMN smooth_loss_b REAL",
        "ALTER TABLE points ADD COLUMN loss_b REAL",
        "ALTER TABLE points ADD COLUMN smooth_loss_b REAL",
    ],
    [  # version 3: copy fidelity, live (engine.train.copy_check): each side's newest figure in dB
        "ALTER TABLE jobs ADD COLUMN copy_db REAL",
        "ALTER TABLE jobs ADD COLUMN copy_db_b REAL",
        "ALTER TABLE points ADD COLUMN copy_db REAL",
        "ALTER TABLE points ADD COLUMN copy_db_b REAL",
    ],
    [  # version 4: jobs run on Slurm (engine.jobs.slurm): Slurm's job id, state, reason and node, as JSON
        "ALTER TABLE jobs ADD COLUMN slurm TEXT",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
TWIN = "ab"  # the side of a job that trains A and B together


class QueueError(CopyloraError):
    pass


class QueueWriteError(QueueError):
    """The queue's file cannot be written now (its disk is full, an I/O error, a read-only
    filesystem). Nothing about the queue is wrong: freeing space and trying again helps. The
    worker waits it out and running jobs train on; the CLI and the app say it."""


# SQLite's primary result codes for a write the disk refused (sqlite3.OperationalError.sqlite_errorcode)
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL = 8, 10, 13


def _write_problem(path: Path, exc: sqlite3.Error) -> QueueWriteError | None:
    """``exc`` said as what to do, when the disk under the queue refused a write; else None."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    # Opening the queue with no other process on it makes its WAL index file (-shm): on a full disk
    # that fails as an I/O error (SQLITE_IOERR_SHMSIZE), not as SQLITE_FULL. Ask the disk.
    if primary == _SQLITE_FULL or "disk is full" in str(exc) or (primary == _SQLITE_IOERR and _nearly_full(path.parent)):
        return QueueWriteError(f"cannot write the job queue {path}: its disk is full; free space there (df -h {path.parent}) and try again")
    if primary == _SQLITE_IOERR:
        return QueueWriteError(f"cannot write the job queue {path}: the disk reported an I/O error ({exc}); check the disk")
    if primary == _SQLITE_READONLY:
        return QueueWriteError(f"cannot write the job queue {path}: {exc} ({_why_read_only(path)})")
    return None


def _why_read_only(path: Path) -> str:
    """Whose the queue's files are, where one this user cannot write is another user's (a
    COPYLORA_HOME shared by a group, made by one of them); else the disk or the file's mode."""
    import pwd

    for name in (str(path), f"{path}-wal", f"{path}-shm", str(path.parent)):
        try:
            owner = os.stat(name).st_uid
        except OSError:
            continue
        if owner != os.geteuid() and not os.access(name, os.W_OK):
            try:
                who = pwd.getpwuid(owner).pw_name
            except KeyError:
                who = f"uid {owner}"
            return (f"{name} is {who}'s and not writable by this user: use your own COPYLORA_HOME, or have them make the "
                    "queue's files group-writable (chmod g+w)")
    return "a read-only disk or file?"


def _make_with_umask_mode(path: Path) -> None:
    """Make a new queue file as the umask says (0664 under a group's umask 002): SQLite makes its
    database 0644 whatever the umask, and its -wal and -shm files copy that, so a COPYLORA_HOME
    shared by a group could be written by the first user only."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError:  # there already (or the folder refuses it: connect says so, as before)
        pass


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _nearly_full(folder: Path) -> bool:
    """Whether the disk under ``folder`` has less room than a queue write needs (SQLite's WAL
    index alone takes 32 KiB)."""
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def advisory(default: Callable[[], Any] = lambda: None):
    """A write the work does not need (live progress, GPU samples, the heartbeat, save-now
    requests): when the disk refuses it, ``default()`` instead, and the queue's
    ``on_skipped_write`` hears of it once a minute at most. A full disk must not stop a training
    that writes its outputs elsewhere; what decides a job (claim, finish) still raises."""
    def wrap(method):
        @functools.wraps(method)
        def write(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except QueueWriteError as exc:
                self._skipped(exc)
                return default()
        return write
    return wrap


@dataclass
class Job:
    id: int
    kind: str
    project: str
    side: str | None
    label: str
    params: dict
    status: JobStatus
    position: float
    gpu: str | None
    pid: int | None
    pid_start: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float | None
    error: str | None
    failed_by: int | None
    artifacts: dict
    control: str | None
    save_now: int
    sample_now: int
    step: int | None
    total: int | None
    loss: float | None
    smooth_loss: float | None
    lr: float | None
    it_per_s: float | None
    eta_s: float | None
    vram_mb: float | None
    start_step: int | None
    loss_b: float | None = None  # twin training: B's loss (``loss`` is A's)
    smooth_loss_b: float | None = None
    copy_db: float | None = None  # how well the LoRA copies its teacher, dB (twin: A's; B's in copy_db_b)
    copy_db_b: float | None = None
    slurm: dict | None = None  # on Slurm: {"id", "state", "reason", "node"} as squeue last said (engine.jobs.slurm)
    depends_on: list[int] = field(default_factory=list)
    # Not stored: set by mark_interrupted() for a "running" job whose worker and process are
    # gone (reboot, kill -9), until a worker starts and requeues it.
    interrupted: bool = False

    @property
    def live(self) -> bool:
        """Running, and something runs it (so its speed and ETA mean something)."""
        return self.status is JobStatus.RUNNING and not self.interrupted

    @property
    def shown_status(self) -> str:
        """The status to show people: "interrupted" is a running job nobody runs."""
        return "interrupted" if self.interrupted else self.status.value

    def trains(self, side: str) -> bool:
        """Whether this is a training of ``side`` ("a" or "b"), alone, as half of a twin job, or in a
        one-LoRA route's job (side "pair": both pictures at once)."""
        return self.kind == "train" and self.side in (side, TWIN, "pair")

    @property
    def fraction(self) -> float:
        if self.status is JobStatus.DONE:
            return 1.0
        return (self.step or 0) / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["status"] = self.status.value
        return data


CANCELLED_RESUMABLE = "cancelled by the user (`copylora retry` resumes it from its newest checkpoint, if it wrote one)"


def mark_interrupted(jobs: list[Job], worker_alive: bool) -> list[Job]:
    """Flag the "running" jobs that nothing runs any more: no worker, and their process is
    gone. (With a live worker, a job between its claim and its process start has no pid yet;
    the worker itself reaps a child that died.)"""
    if worker_alive:
        return jobs
    from engine.jobs.procs import alive

    # A copy, never the job itself: engine.jobs.job_cache hands the same Job to the next read
    # while its row is unchanged, and that read may find the worker back.
    # A Slurm job runs on the cluster whatever happens to the worker (the next one follows it).
    return [replace(job, interrupted=True) if job.status is JobStatus.RUNNING and not job.slurm and not alive(job.pid, job.pid_start)
            else job for job in jobs]


def artifacts_text(artifacts: dict) -> str:
    """What a finished job made, in one line for people: file names (not whole paths),
    numbers as they are, lists counted. The runners store any JSON value here (``steps`` is
    an int, ``reg_images`` a list), so nothing may assume a path."""
    parts = []
    for key, value in artifacts.items():
        if isinstance(value, str):
            shown = value.rstrip("/").rsplit("/", 1)[-1] or value
        elif isinstance(value, (list, tuple)):
            shown = f"{len(value)} file{'s' * (len(value) != 1)}"
        elif isinstance(value, dict):
            shown = f"{len(value)} item{'s' * (len(value) != 1)}"
        else:
            shown = str(value)
        parts.append(f"{key}: {shown}")
    return ", ".join(parts)


def row_to_job(row: sqlite3.Row, deps: list[int]) -> Job:
    """A job of a row; columns a later copylora added are left out (a newer copylora that
    updated the queue under this one's worker crashed it: "unexpected keyword argument")."""
    data = {key: value for key, value in dict(row).items() if key in _JOB_FIELDS}
    data["params"] = json.loads(data["params"] or "{}")
    data["artifacts"] = json.loads(data["artifacts"] or "{}")
    data["slurm"] = json.loads(data["slurm"]) if data.get("slurm") else None
    data["status"] = JobStatus(data["status"])
    return Job(**data, depends_on=deps)


_JOB_FIELDS = {f.name for f in fields(Job)} - {"depends_on", "interrupted"}  # the stored ones


class Queue:
    """A handle on the queue database. Cheap to create; each process makes its own."""

    def __init__(self, home: str | Path | None = None, *, reading: bool = False) -> None:
        """``reading``: where the disk refuses the writes that opening needs (full, read-only),
        open the queue as it was last written, for reads alone (``read_only`` says why; a
        write raises that): `copylora queue` and the app showed no job at all on a full disk."""
        self.home = state_home(home)
        self.path = queue_db(self.home)
        self.read_only: str | None = None
        self._unrecorded: dict[int, tuple[Any, bool]] = {}  # job → the newest progress a full disk refused
        _make_with_umask_mode(self.path)
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout = 30000")
            self._depth = 0  # open transaction() blocks on this connection
            # told of a progress write the disk refused (@advisory: the work goes on without it)
            self.on_skipped_write: Callable[[str], None] | None = None
            self._skipped_said = -60.0
            self._open()
        except sqlite3.DatabaseError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise
            if problem := _write_problem(self.path, exc):  # a full disk: not a damaged queue to move aside
                if reading and self._open_read_only(problem):
                    return
                raise problem from exc
            # A damaged or foreign file where the queue should be: say which file and what to do,
            # rather than SQLite's "file is not a database" with no path.
            raise QueueError(f"cannot open the job queue {self.path}: {exc}. Move it aside (the queue starts empty; "
                             f"the projects and their outputs are not in it), or point COPYLORA_HOME elsewhere") from exc

    def _open(self) -> None:
        """WAL mode and the schema. Switching a new database to WAL takes a lock that SQLite
        does not wait for (no busy handler there): two processes opening a fresh queue at once
        (two `copylora run`, the app and the worker) got "database is locked". So retry."""
        deadline = time.monotonic() + 30.0
        delay = 0.01
        while True:
            try:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across app crashes
                self._migrate()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _open_read_only(self, problem: QueueWriteError) -> bool:
        """The queue read-only, if it is one this copylora reads: with its write-ahead log where
        SQLite can read it so, else the file alone (immutable: no WAL index to make, nothing
        locked; changes still in the log, which a process on it or a crash leaves, are not
        shown, and the reason says so)."""
        from urllib.parse import quote

        if not self.path.is_file():
            return False
        reason = str(problem)
        for how in ("mode=ro", "mode=ro&immutable=1"):  # read-only, WAL and all, where its index can be had; else the file alone
            try:
                db = sqlite3.connect(f"file:{quote(str(self.path))}?{how}", uri=True, isolation_level=None, check_same_thread=False)
                db.row_factory = sqlite3.Row
                if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    db.close()
                    return False
                db.execute("SELECT count(*) FROM jobs").fetchone()
                break
            except sqlite3.DatabaseError:
                continue
        else:
            return False
        if "immutable" in how and _file_size(Path(f"{self.path}-wal")):
            reason += "; its newest changes (in queue.db-wal) are not shown"
        if hasattr(self, "db"):
            self.db.close()
        self.db, self.read_only = db, reason
        return True

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        with self.transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise QueueError(f"{self.path} was made by a newer copylora (schema {version} > {SCHEMA_VERSION}); upgrade copylora")
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front (IMMEDIATE), so check-then-update is atomic.

        Nested blocks join the outer transaction, so a caller can make several of these
        methods one atomic step (``enqueue_project`` reads what is queued and inserts what is
        missing in one transaction: two ``copylora run`` at once cannot both insert)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        if self.read_only is not None:
            raise QueueWriteError(self.read_only)
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if problem := _write_problem(self.path, exc):
                raise problem from exc
            raise
        self._depth = 1
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as exc:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.OperationalError:  # SQLite rolled back itself (a COMMIT the full disk refused)
                pass
            if isinstance(exc, sqlite3.OperationalError) and (problem := _write_problem(self.path, exc)):
                raise problem from exc
            raise
        finally:
            self._depth = 0

    def _skipped(self, exc: QueueWriteError) -> None:
        if self.on_skipped_write is not None and time.monotonic() - self._skipped_said >= 60.0:
            self._skipped_said = time.monotonic()
            self.on_skipped_write(f"progress not recorded: {exc} (the work goes on)")

    # ------------------------------------------------------------------ reading

    def get(self, job_id: int) -> Job:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise QueueError(f"no job #{job_id} (see `copylora queue`)")
        deps = [r[0] for r in self.db.execute("SELECT depends_on FROM deps WHERE job_id = ? ORDER BY depends_on", (job_id,))]
        return row_to_job(row, deps)

    def jobs(self, statuses: tuple[str, ...] | None = None, project: str | None = None, limit: int | None = None) -> list[Job]:
        rows, deps = self.job_rows(statuses, project, limit)
        return [row_to_job(r, deps.get(r["id"], [])) for r in rows]

    def job_rows(self, statuses: tuple[str, ...] | None = None, project: str | None = None,
                 limit: int | None = None) -> tuple[list[sqlite3.Row], dict[int, list[int]]]:
        """The rows :meth:`jobs` makes its jobs of (running first, then waiting in order, then
        finished newest first; the first ``limit``), and the dependencies of those jobs."""
        where, args = [], []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += [JobStatus(s).value for s in statuses]
        if project:
            where.append("project = ?")
            args.append(project)
        chosen = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(
            f"SELECT * FROM jobs{chosen} ORDER BY CASE status WHEN 'running' THEN 0 WHEN 'queued' THEN 1 WHEN 'paused' THEN 1 ELSE 2 END, "
            "CASE WHEN status IN ('done','failed','cancelled') THEN -COALESCE(finished_at, 0) ELSE position END, id"
            + (f" LIMIT {int(limit)}" if limit is not None else ""), args).fetchall()
        deps: dict[int, list[int]] = {}
        for job_id, dep in self.db.execute(f"SELECT job_id, depends_on FROM deps WHERE job_id IN (SELECT id FROM jobs{chosen}) "
                                           "ORDER BY depends_on", args):
            deps.setdefault(job_id, []).append(dep)
        return rows, deps

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Several reads as one view of the queue (a read transaction: WAL keeps its version for
        it), so that a job that finishes between two of them is not seen in both."""
        if self._depth:  # inside a write transaction: already one view
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def version(self) -> tuple[int, int]:
        """Changes since this connection opened: another connection's commits move SQLite's
        data_version, this connection's own its total_changes."""
        return self.db.execute("PRAGMA data_version").fetchone()[0], self.db.total_changes

    def points(self, job_id: int) -> list[dict]:
        rows = self.db.execute("SELECT step, t, loss, smooth_loss, lr, vram_mb, loss_b, smooth_loss_b, copy_db, copy_db_b FROM points"
                               " WHERE job_id = ? ORDER BY step", (job_id,))
        return [dict(r) for r in rows]

    def clean(self, *, finished_before: float | None = None, statuses: tuple[JobStatus, ...] = FINISHED) -> tuple[list[int], int]:
        """Remove finished jobs (of ``statuses``; finished before ``finished_before`` when given)
        with their progress points and logs: the queue of months grows without end otherwise
        (9 300 jobs, 200 MB). A job that a running or waiting job depends on stays. Returns the
        removed ids, and how many stayed for that reason."""
        wanted = [JobStatus(s).value for s in statuses if JobStatus(s) in FINISHED]
        if not wanted:
            return [], 0
        chosen = f"status IN ({','.join('?' * len(wanted))})" + (" AND COALESCE(finished_at, created_at) < ?" if finished_before is not None else "")
        args: list[Any] = [*wanted, *([finished_before] if finished_before is not None else [])]
        needed = "SELECT d.depends_on FROM deps d JOIN jobs w ON w.id = d.job_id WHERE w.status IN ('queued', 'running', 'paused')"

        def remove() -> tuple[list[int], int]:
            with self.transaction() as db:
                ids = [r[0] for r in db.execute(f"SELECT id FROM jobs WHERE {chosen} AND id NOT IN ({needed}) ORDER BY id", args)]
                kept = db.execute(f"SELECT COUNT(*) FROM jobs WHERE {chosen} AND id IN ({needed})", args).fetchone()[0]
                for start in range(0, len(ids), 500):  # SQLite's limit on the number of ? in one statement
                    some = ids[start:start + 500]
                    marks = ",".join("?" * len(some))
                    db.execute(f"DELETE FROM points WHERE job_id IN ({marks})", some)
                    db.execute(f"DELETE FROM deps WHERE job_id IN ({marks})", some)
                    db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", some)
            return ids, kept

        try:
            ids, kept = remove()
        except QueueWriteError as exc:
            if not _nearly_full(self.home):
                raise
            # A full disk refuses even the deletion (SQLite writes its log first): `clean`, the
            # command that frees space, said "free space there". The logs of the jobs it removes
            # go first, making the room; a row whose log is gone just shows no log.
            with self.reading():
                doomed = [r[0] for r in self.db.execute(f"SELECT id FROM jobs WHERE {chosen} AND id NOT IN ({needed})", args)]
            self._remove_files(doomed)
            try:
                ids, kept = remove()
            except QueueWriteError:
                raise QueueWriteError(f"{exc} (the logs of the {len(doomed)} finished jobs were removed to make room, and that "
                                      "was not enough)") from None
        self._remove_files(ids)  # after the commit: a log left by a failed removal is harmless, a row without its log is not
        return ids, kept

    def _remove_files(self, ids: list[int]) -> None:
        """The logs and Slurm channel folders of these jobs."""
        import shutil

        for job_id in ids:
            try:
                self.log_path(job_id).unlink()
            except OSError:  # already gone, or not ours to remove
                pass
            shutil.rmtree(channel_dir(self.home, job_id), ignore_errors=True)  # a Slurm job's files (engine.jobs.channel)

    def compact(self) -> bool:
        """Give the space of removed rows back to the disk (SQLite keeps a file's size otherwise:
        214 MB after the 9 300 jobs of a queue of months were removed). Its cost is a copy of
        what is left. Not waited for: busy (the worker writing, the app reading) means False,
        and the next clean tries again."""
        self.db.execute("PRAGMA busy_timeout = 2000")
        try:
            self.db.execute("VACUUM")  # into the WAL: a reader in the middle of a read keeps the old pages
            busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            return not busy
        except sqlite3.OperationalError:
            return False
        finally:
            self.db.execute("PRAGMA busy_timeout = 30000")

    def log_path(self, job_id: int) -> Path:
        return job_log(self.home, job_id)

    # ------------------------------------------------------------------ enqueueing

    def enqueue(self, kind: str, project: str, *, side: str | None = None, label: str | None = None,
                params: dict | None = None, depends_on: list[int] | None = None, total: int | None = None) -> Job:
        if kind not in KINDS:
            raise QueueError(f"unknown job kind {kind!r}")
        now = time.time()
        with self.transaction() as db:
            position = (db.execute("SELECT COALESCE(MAX(position), 0) FROM jobs").fetchone()[0] or 0) + 1
            cursor = db.execute(
                "INSERT INTO jobs (kind, project, side, label, params, status, position, created_at, updated_at, total, step)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, 0)",
                (kind, project, side, label or f"{kind} {side or ''}".strip(), json.dumps(params or {}), position, now, now, total),
            )
            job_id = cursor.lastrowid
            assert job_id is not None  # an INSERT's row
            for dep in depends_on or []:
                db.execute("INSERT INTO deps (job_id, depends_on) VALUES (?, ?)", (job_id, dep))
        return self.get(job_id)

    # ------------------------------------------------------------------ the worker's side

    def claim(self, gpu: str | None) -> Job | None:
        """Atomically take the first queued job whose dependencies are all done."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs j WHERE status = 'queued' AND NOT EXISTS ("
                " SELECT 1 FROM deps d JOIN jobs p ON p.id = d.depends_on WHERE d.job_id = j.id AND p.status != 'done')"
                # Never two of one output at once (a second training of a side failed on its lock):
                # a job queued again by `copylora run` while an outdated one of its kind runs waits for it.
                " AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.status = 'running' AND r.project = j.project AND r.kind = j.kind"
                "  AND (r.side IS j.side OR r.side = 'ab' OR j.side = 'ab'))"
                " ORDER BY position, id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                # The last attempt's speed, ETA and loss describe a run that is over: a new attempt
                # shows none until it reports (its model may take a while to load); the step stays,
                # as roughly where it resumes.
                "UPDATE jobs SET status = 'running', gpu = ?, started_at = ?, updated_at = ?, attempts = attempts + 1,"
                " error = NULL, failed_by = NULL, finished_at = NULL, control = NULL, pid = NULL, pid_start = NULL,"
                " it_per_s = NULL, eta_s = NULL, loss = NULL, smooth_loss = NULL, loss_b = NULL, smooth_loss_b = NULL,"
                " copy_db = NULL, copy_db_b = NULL WHERE id = ?",
                (gpu, now, now, row[0]),
            )
        return self.get(row[0])

    def set_pid(self, job_id: int, pid: int, pid_start: str | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET pid = ?, pid_start = ?, updated_at = ? WHERE id = ?", (pid, pid_start, time.time(), job_id))

    def full_disk_note(self, jobs: list[Job] | None = None) -> str | None:
        """What to say where the state folder's disk is full but the queue still reads: its
        jobs train on, and the progress shown stopped when the disk filled (`queue` and
        `worker status` showed a running 77/300 for minutes, and a heartbeat minutes old)."""
        if self.read_only or not _nearly_full(self.home):
            return None
        running = [j for j in (jobs if jobs is not None else self.jobs((JobStatus.RUNNING,))) if j.status is JobStatus.RUNNING]
        where = f"the disk of the state folder {self.home} is full (df -h {self.home})"
        if not running:
            return f"{where}: nothing can be queued or started until there is room"
        since = time.strftime("%H:%M:%S", time.localtime(min(j.updated_at or time.time() for j in running)))
        return f"{where}: running jobs train on, their progress shown is as of {since}, recorded again once there is room"

    @advisory()
    def report_progress(self, job_id: int, p: Any, *, point: bool) -> None:
        """Live progress of a running job; ``point`` also stores it in the curve history. One a
        full disk refused is kept, and written with the job's end (:meth:`finish`): a job that
        trained on under a full state folder ended "done" at the step last recorded (77/300)."""
        self._unrecorded[job_id] = (p, point)
        with self.transaction() as db:
            self._write_progress(db, job_id, p, point)
        self._unrecorded.pop(job_id, None)

    def _write_progress(self, db: sqlite3.Connection, job_id: int, p: Any, point: bool) -> None:
        now = time.time()
        eta = p.eta_s if p.eta_s == p.eta_s and p.eta_s != float("inf") else None
        loss = p.loss if p.loss == p.loss else None  # NaN is not stored
        loss_b = getattr(p, "loss_b", None)
        smooth_b = getattr(p, "smooth_loss_b", None)
        copy_a, copy_b = getattr(p, "copy_db", None), getattr(p, "copy_db_b", None)
        db.execute(
            "UPDATE jobs SET step = ?, total = ?, loss = ?, smooth_loss = ?, lr = ?, it_per_s = ?, eta_s = ?,"
            " vram_mb = ?, loss_b = ?, smooth_loss_b = ?, copy_db = ?, copy_db_b = ?, updated_at = ? WHERE id = ?",
            (p.step, p.total, loss, p.smooth_loss, p.lr, p.it_per_s, eta, p.vram_peak_mb, loss_b, smooth_b, copy_a, copy_b, now,
             job_id),
        )
        if point:
            db.execute(
                "INSERT OR REPLACE INTO points (job_id, step, t, loss, smooth_loss, lr, vram_mb, loss_b, smooth_loss_b, copy_db,"
                " copy_db_b) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, p.step, now, loss, p.smooth_loss, p.lr, p.vram_peak_mb, loss_b, smooth_b, copy_a, copy_b),
            )

    def set_slurm(self, job_id: int, info: dict | None) -> None:
        """Where Slurm has the job (None: not on Slurm, or no more)."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET slurm = ?, updated_at = ? WHERE id = ?", (json.dumps(info) if info else None, time.time(), job_id))

    @advisory()
    def note_params(self, job_id: int, **more: Any) -> None:
        """Add to a job's params what its run found at its start (a training's fingerprints:
        the settings it trains with, which `copylora run` compares with the project's now)."""
        with self.transaction() as db:
            row = db.execute("SELECT params FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return
            params = {**json.loads(row[0] or "{}"), **more}
            db.execute("UPDATE jobs SET params = ?, updated_at = ? WHERE id = ?", (json.dumps(params), time.time(), job_id))

    @advisory()
    def set_start_step(self, job_id: int, step: int, total: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET start_step = ?, step = ?, total = ?, updated_at = ? WHERE id = ?", (step, step, total, time.time(), job_id))

    def end_as_ordered(self, job_id: int, order: str, why: str = CANCELLED_RESUMABLE) -> str:
        """End a running job as its pending order said, where no process is left to carry it
        out (a worker that died before it did, an sbatch that never submitted it): "cancelled"
        (``why``: the error it shows) or "paused"; what it came to."""
        if order == "cancel":
            self.finish(job_id, JobStatus.CANCELLED, error=why)
            return "cancelled"
        self.finish(job_id, JobStatus.PAUSED)
        return "paused"

    def finish(self, job_id: int, status: JobStatus | str, *, error: str | None = None, artifacts: dict | None = None) -> None:
        """End a running job. A failed or cancelled job takes its waiting dependants with it."""
        try:
            status = JobStatus(status)
        except ValueError:
            raise QueueError(f"cannot finish a job as {status!r}") from None
        if status is JobStatus.RUNNING:
            raise QueueError(f"cannot finish a job as {status}")
        now = time.time()
        with self.transaction() as db:
            if job_id in self._unrecorded:  # the progress a full disk kept out, recorded with the end
                self._write_progress(db, job_id, *self._unrecorded[job_id])
            row = db.execute("SELECT artifacts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            merged = {**json.loads(row[0] if row else "{}"), **(artifacts or {})}
            ended = now if status.finished else None
            db.execute(
                "UPDATE jobs SET status = ?, error = ?, artifacts = ?, finished_at = ?, updated_at = ?, control = NULL,"
                " save_now = 0, sample_now = 0, pid = NULL, pid_start = NULL WHERE id = ?",
                (status.value, error, json.dumps(merged), ended, now, job_id),
            )
            if status in (JobStatus.FAILED, JobStatus.CANCELLED):
                self._fail_dependants(db, job_id, status)
        self._unrecorded.pop(job_id, None)

    def _fail_dependants(self, db: sqlite3.Connection, job_id: int, why: str) -> None:
        now = time.time()
        label = db.execute("SELECT label FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        waiting = db.execute(
            "SELECT j.id FROM deps d JOIN jobs j ON j.id = d.job_id WHERE d.depends_on = ? AND j.status IN ('queued', 'paused')",
            (job_id,),
        ).fetchall()
        for (dependant,) in waiting:
            db.execute(
                "UPDATE jobs SET status = 'failed', error = ?, failed_by = ?, finished_at = ?, updated_at = ? WHERE id = ?",
                (f"dependency #{job_id} ({label}) {why}", job_id, now, now, dependant),
            )
            self._fail_dependants(db, dependant, JobStatus.FAILED.value)

    @advisory(default=dict)
    def take_requests(self, job_id: int) -> dict[str, bool]:
        """Read and clear save-now/sample-now requests, and see any cancel/pause order."""
        with self.transaction() as db:
            row = db.execute("SELECT save_now, sample_now, control FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return {}
            if row["save_now"] or row["sample_now"]:
                db.execute("UPDATE jobs SET save_now = 0, sample_now = 0 WHERE id = ?", (job_id,))
        return {"save_now": bool(row["save_now"]), "sample_now": bool(row["sample_now"]), "control": row["control"]}

    def requeue_at_head(self, job_id: int, reason: str | None) -> None:
        """A job whose process vanished (reboot, kill -9): first in line again, to resume."""
        with self.transaction() as db:
            head = db.execute("SELECT COALESCE(MIN(position), 1) FROM jobs").fetchone()[0]
            db.execute(
                "UPDATE jobs SET status = 'queued', position = ?, pid = NULL, pid_start = NULL, control = NULL,"
                " error = ?, updated_at = ? WHERE id = ?",
                (head - 1, reason, time.time(), job_id),
            )

    # ------------------------------------------------------------------ user commands

    def cancel(self, job_id: int) -> str:
        job = self.get(job_id)
        if job.status.waiting:
            self.finish(job_id, JobStatus.CANCELLED, error="cancelled by the user")
            return "cancelled"
        if job.status is JobStatus.RUNNING:
            # (whether it wrote a checkpoint before it was cut off, the queue cannot tell: "if any")
            if self._end_interrupted(job, "status = 'cancelled', error = ?, finished_at = ?", (CANCELLED_RESUMABLE, time.time())):
                return "cancelled (it was interrupted: `copylora retry` resumes it from its newest checkpoint, if it wrote one)"
            if self.get(job_id).status.waiting:  # a worker queued it again meanwhile: an order would be wiped at its claim
                return self.cancel(job_id)
            self._control(job_id, "cancel")
            return "cancelling (the job saves a checkpoint and stops)"
        raise QueueError(f"job #{job_id} is {job.status}: nothing to cancel")

    def pause(self, job_id: int) -> str:
        job = self.get(job_id)
        if job.status is JobStatus.QUEUED:
            with self.transaction() as db:
                db.execute("UPDATE jobs SET status = 'paused', updated_at = ? WHERE id = ?", (time.time(), job_id))
            return "paused"
        if job.status is JobStatus.RUNNING:
            if self._end_interrupted(job, "status = 'paused'", ()):
                return "paused (it was interrupted: `copylora resume` queues it again, from its checkpoint)"
            if self.get(job_id).status is JobStatus.QUEUED:  # a worker queued it again meanwhile (as for cancel)
                return self.pause(job_id)
            self._control(job_id, "pause")
            return "pausing (the job saves a checkpoint and stops)"
        raise QueueError(f"job #{job_id} is {job.status}: only queued or running jobs can be paused")

    def resume(self, job_id: int) -> str:
        job = self.get(job_id)
        if job.status is not JobStatus.PAUSED:
            raise QueueError(f"job #{job_id} is {job.status}, not paused")
        with self.transaction() as db:
            db.execute("UPDATE jobs SET status = 'queued', updated_at = ? WHERE id = ?", (time.time(), job_id))
        return "queued (continues from its checkpoint)"

    def retry(self, job_id: int) -> str:
        """Queue a failed or cancelled job again (it resumes from its newest checkpoint), with
        the dependants that failed because of it."""
        job = self.get(job_id)
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise QueueError(f"job #{job_id} is {job.status}: only failed or cancelled jobs can be retried")
        for dep in job.depends_on:
            if self.get(dep).status in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise QueueError(f"job #{job_id} waits for #{dep}, which is {self.get(dep).status}: retry #{dep} (it brings #{job_id} back)")
        with self.transaction() as db:
            self._requeue_chain(db, job_id)
        return "queued again"

    def _requeue_chain(self, db: sqlite3.Connection, job_id: int) -> None:
        db.execute(
            "UPDATE jobs SET status = 'queued', error = NULL, failed_by = NULL, finished_at = NULL, updated_at = ? WHERE id = ?",
            (time.time(), job_id),
        )
        for (dependant,) in db.execute("SELECT id FROM jobs WHERE failed_by = ?", (job_id,)).fetchall():
            self._requeue_chain(db, dependant)

    def move(self, job_id: int, where: str) -> str:
        """Reorder waiting jobs: up, down, top or bottom among queued/paused ones."""
        job = self.get(job_id)
        if not job.status.waiting:
            raise QueueError(f"job #{job_id} is {job.status}: only waiting jobs can be moved")
        with self.transaction() as db:
            waiting = db.execute("SELECT id, position FROM jobs WHERE status IN ('queued','paused') ORDER BY position, id").fetchall()
            ids = [r[0] for r in waiting]
            index = ids.index(job_id)
            target = {"up": max(index - 1, 0), "down": min(index + 1, len(ids) - 1), "top": 0, "bottom": len(ids) - 1}[where]
            ids.insert(target, ids.pop(index))
            base = min(r[1] for r in waiting)
            for offset, moved in enumerate(ids):
                db.execute("UPDATE jobs SET position = ? WHERE id = ?", (base + offset, moved))
        return f"moved to place {target + 1} of {len(ids)} waiting"

    def request(self, job_id: int, what: str) -> str:
        job = self.get(job_id)
        if job.status is not JobStatus.RUNNING or job.kind != "train":
            raise QueueError(f"job #{job_id} is a {job.status} {job.kind} job: only running trainings take {what} requests")
        column = {"save-now": "save_now", "sample-now": "sample_now"}[what]
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {column} = 1 WHERE id = ?", (job_id,))
        return f"asked job #{job_id} to {what.replace('-now', '')} at its next step"

    def _end_interrupted(self, job: Job, assignments: str, values: tuple) -> bool:
        """Set ``assignments`` on a "running" job that nothing runs (no worker, its process gone:
        :func:`mark_interrupted`), as for a waiting one, and True. An order left for it in the
        control column was wiped when the next worker queued it again, and it trained on. False
        (the order is left for the process) when something runs it, or a worker took it meanwhile."""
        from engine.jobs.worker import worker_pid

        if not mark_interrupted([job], worker_pid(self.home) is not None)[0].interrupted:
            return False
        with self.transaction() as db:
            changed = db.execute(
                f"UPDATE jobs SET {assignments}, pid = NULL, pid_start = NULL, control = NULL, updated_at = ?"
                # the row as it was read: a worker that took it since has claimed it again (attempts)
                " WHERE id = ? AND status = 'running' AND pid IS ? AND pid_start IS ? AND attempts = ?",
                (*values, time.time(), job.id, job.pid, job.pid_start, job.attempts),
            ).rowcount
            if changed and "'cancelled'" in assignments:
                self._fail_dependants(db, job.id, JobStatus.CANCELLED)
        return bool(changed)

    def _control(self, job_id: int, order: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET control = ?, updated_at = ? WHERE id = ?", (order, time.time(), job_id))

    # ------------------------------------------------------------------ worker and GPUs

    def worker_started(self, pid: int, gpus: list[str], slots: int) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO worker (id, pid, started_at, heartbeat, gpus, slots) VALUES (1, ?, ?, ?, ?, ?)",
                (pid, now, now, json.dumps(gpus), slots),
            )

    @advisory()
    def heartbeat(self) -> None:
        with self.transaction() as db:
            db.execute("UPDATE worker SET heartbeat = ? WHERE id = 1", (time.time(),))

    def worker_stopped(self, pid: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM worker WHERE id = 1 AND pid = ?", (pid,))

    def worker_row(self) -> dict | None:
        row = self.db.execute("SELECT * FROM worker WHERE id = 1").fetchone()
        return dict(row) if row else None

    @advisory()
    def record_gpus(self, samples: list[dict]) -> None:
        now = time.time()
        with self.transaction() as db:
            for s in samples:
                db.execute(
                    "INSERT OR REPLACE INTO gpu_stats (gpu, t, name, used_mb, total_mb, util, temp, power_w) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (s["index"], now, s.get("name"), s.get("used_mb"), s.get("total_mb"), s.get("util"), s.get("temp"), s.get("power_w")),
                )
            db.execute("DELETE FROM gpu_stats WHERE t < ?", (now - GPU_HISTORY_S,))

    def gpu_history(self, gpu: int = 0, since_s: float = GPU_HISTORY_S) -> list[dict]:
        rows = self.db.execute("SELECT * FROM gpu_stats WHERE gpu = ? AND t >= ? ORDER BY t", (gpu, time.time() - since_s))
        return [dict(r) for r in rows]

    def latest_gpus(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT g.* FROM gpu_stats g JOIN (SELECT gpu, MAX(t) t FROM gpu_stats GROUP BY gpu) m ON g.gpu = m.gpu AND g.t = m.t ORDER BY g.gpu"
        )
        return [dict(r) for r in rows]
