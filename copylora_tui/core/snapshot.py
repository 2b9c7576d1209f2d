"""One read of the queue database: every job, the worker's state and the latest GPU samples.

The app takes a snapshot twice a second in a thread and hands it to whichever screen shows
it; screens never query the database from the UI thread, so a busy database (the worker
writing progress) can never freeze the interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.jobs.queue import Job, JobStatus, Queue, mark_interrupted
from engine.jobs.worker import worker_pid


@dataclass(frozen=True)
class QueueSnapshot:
    jobs: tuple[Job, ...] = ()
    worker_pid: int | None = None
    home: Path | None = None
    gpus: tuple[dict, ...] = ()
    error: str | None = None  # the database could not be read (shown, not raised)
    by_id: dict[int, Job] = field(default_factory=dict, compare=False)

    def job(self, job_id: int) -> Job | None:
        return self.by_id.get(job_id)

    def for_project(self, root: Path | str) -> list[Job]:
        key = str(root)
        return [j for j in self.jobs if j.project == key]

    @property
    def worker_running(self) -> bool:
        return bool(self.worker_pid)

    def worker_text(self) -> str:
        if self.error:
            return f"queue unreadable: {self.error}"
        if self.worker_pid:
            return f"worker running (pid {self.worker_pid})"
        waiting = sum(1 for j in self.jobs if j.status is JobStatus.QUEUED)
        return f"worker not running{f' — {waiting} job(s) wait for it' if waiting else ''}"


def read_snapshot(queue: Queue) -> QueueSnapshot:
    try:
        pid = worker_pid(queue.home)
        jobs = tuple(mark_interrupted(queue.jobs(), bool(pid)))
        gpus = tuple(queue.latest_gpus())
    except Exception as exc:  # locked beyond the timeout, disk gone: say so on screen
        return QueueSnapshot(home=queue.home, error=str(exc))
    return QueueSnapshot(jobs=jobs, worker_pid=pid, home=queue.home, gpus=gpus, by_id={j.id: j for j in jobs})
