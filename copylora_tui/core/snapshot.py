"""One read of the queue database: every job, the worker's state and the latest GPU samples.

The app takes a snapshot twice a second in a thread and hands it to whichever screen shows
it; screens never query the database from the UI thread, so a busy database (the worker
writing progress) can never freeze the interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.jobs.job_cache import JobCache
from engine.jobs.queue import Job, JobStatus, Queue, mark_interrupted
from engine.jobs.worker import last_worker_error, worker_code_change, worker_pid


@dataclass(frozen=True)
class QueueSnapshot:
    jobs: tuple[Job, ...] = ()
    worker_pid: int | None = None
    home: Path | None = None
    gpus: tuple[dict, ...] = ()
    error: str | None = None  # the database could not be read (shown, not raised)
    read_only: str | None = None  # read as last written: why it cannot be written (a full disk)
    worker_error: str | None = None  # no worker runs, and the last one stopped on this error (its log's)
    worker_outdated: str | None = None  # the running worker's own file changed since it started (an update)
    disk_full: str | None = None  # the state folder's disk is full: progress shown is as of then (Queue.full_disk_note)
    room_waits: dict = field(default_factory=dict)  # running job → the folder whose disk it waits on (engine.jobs.room_wait)
    # Indexes made once per read: the Projects screen asked for_project of each project, each a
    # scan of every job (100 projects × 9 300 jobs on every change).
    by_id: dict[int, Job] = field(init=False, compare=False, repr=False)
    by_project: dict[str, list[Job]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_project: dict[str, list[Job]] = {}
        for job in self.jobs:
            by_project.setdefault(job.project, []).append(job)
        object.__setattr__(self, "by_id", {j.id: j for j in self.jobs})
        object.__setattr__(self, "by_project", by_project)

    def job(self, job_id: int) -> Job | None:
        return self.by_id.get(job_id)

    def for_project(self, root: Path | str) -> list[Job]:
        return list(self.by_project.get(str(root), ()))

    @property
    def worker_running(self) -> bool:
        return bool(self.worker_pid)

    def worker_text(self) -> str:
        if self.error:
            return f"queue unreadable: {self.error}"
        if self.read_only:
            return f"queue shown as last written: {self.read_only}"
        if self.disk_full:
            return f"{self.disk_full} · {self._worker_text()}"
        return self._worker_text()

    def _worker_text(self) -> str:
        if self.worker_pid and self.worker_outdated:
            return (f"worker running (pid {self.worker_pid}) on the code of before an update ({self.worker_outdated} changed): "
                    "restart it (copylora worker stop, then w)")
        if self.worker_pid:
            return f"worker running (pid {self.worker_pid})"
        waiting = sum(1 for j in self.jobs if j.status is JobStatus.QUEUED or j.interrupted)  # an interrupted one resumes first
        died = f" (it stopped on an error: {self.worker_error}; worker.log)" if self.worker_error else ""
        return f"worker not running{died}{f' — {waiting} job(s) wait for it' if waiting else ''}"


def read_snapshot(queue: Queue, cache: JobCache | None = None) -> QueueSnapshot:
    """``cache``: the reading connection's JobCache (engine.jobs.job_cache), so that a read of
    an unchanged queue costs next to nothing."""
    try:
        pid = worker_pid(queue.home)
        jobs = tuple(mark_interrupted(cache.jobs(queue) if cache is not None else queue.jobs(), bool(pid)))
        gpus = tuple(queue.latest_gpus())
    except Exception as exc:  # locked beyond the timeout, disk gone: say so on screen
        return QueueSnapshot(home=queue.home, error=str(exc))
    error = None if pid else last_worker_error(queue.home, (queue.worker_row() or {}).get("started_at"))
    from engine.jobs.room_wait import room_wait

    waits = {job.id: folder for job in jobs if job.status is JobStatus.RUNNING and not job.slurm and not job.interrupted
             and (folder := room_wait(queue.log_path(job.id)))}  # a few KB of each running job's log
    return QueueSnapshot(jobs=jobs, worker_pid=pid, home=queue.home, gpus=gpus, read_only=queue.read_only, worker_error=error,
                         worker_outdated=worker_code_change(queue.home, pid), disk_full=queue.full_disk_note(list(jobs)),
                         room_waits=waits)


def retry_hint(job: Job, snapshot: QueueSnapshot) -> str:
    """How to run a failed job again: r on it, or, when it failed because a job it waits for did
    (r on it is refused: "retry #N"), r on the job that failed first, which brings it back."""
    first = job
    seen = {job.id}
    while first.failed_by is not None and (cause := snapshot.job(first.failed_by)) is not None and cause.id not in seen:
        seen.add(cause.id)
        first = cause
    return "r retries" if first is job else f"r on #{first.id} retries it, and this one with it"
