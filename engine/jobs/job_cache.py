"""The queue's jobs read again and again (the app, twice a second) at the cost of what changed.

Months of use leave thousands of finished jobs in the queue. Made afresh on every read, their
Job objects (two JSON fields each) took 0.3 s of a core twice a second with 9 300 jobs: the
app idling on the Queue screen used 60 % of a CPU that the training it watches needs. Here

- a read that finds the database unchanged (SQLite's data_version) returns the last list;
- the finished jobs are read again only when the running and waiting ones changed (a job that
  finishes, is retried or fails with its dependency leaves or joins them), when their number
  changed (`copylora clean`), or every FINISHED_EVERY_S; a running job's progress, many writes
  a second, reads only the few active;
- a row that is unchanged gives back the same Job object, so the screens skip it by identity.

Jobs handed out are shared between reads: treat them as read-only (mark_interrupted copies).
"""

from __future__ import annotations

import sqlite3
import time

from engine.jobs.queue import ACTIVE, FINISHED, Job, Queue, row_to_job

FINISHED_EVERY_S = 10.0  # a finished job's row changed in place (none known): seen within this

Made = dict[int, tuple[tuple, tuple[int, ...], Job]]  # job id: (its row, its dependencies, the Job)


class JobCache:
    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._queue: Queue | None = None
        self._version: tuple[int, int] | None = None
        self._jobs: list[Job] = []
        self._active_ids: tuple[int, ...] | None = None
        self._finished: list[Job] = []
        self._finished_read = float("-inf")
        self._finished_version: tuple[int, int] | None = None  # the version the finished jobs were read at
        self._finished_count = -1
        self._made: Made = {}

    def jobs(self, queue: Queue) -> list[Job]:
        """``queue.jobs()`` (the same jobs, in its order), made only where a row changed."""
        if queue is not self._queue:  # another connection (the file was replaced): start over
            self._queue, self._version, self._active_ids, self._finished_version, self._made = queue, None, None, None, {}
        with queue.reading():  # the active and the finished jobs of one moment: a job finishing between is in one of them
            return self._read(queue)

    def _read(self, queue: Queue) -> list[Job]:
        version = queue.version()
        due = self._finished_version != version and self.clock() - self._finished_read >= FINISHED_EVERY_S
        if version == self._version and not due:
            return list(self._jobs)
        made: Made = {}
        active = self._make(*queue.job_rows(tuple(ACTIVE)), made)
        active_ids = tuple(j.id for j in active)
        # How many finished jobs there are (an index count, no rows): `copylora clean` removes
        # finished jobs without moving the active ones.
        finished_count = queue.db.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN ({','.join('?' * len(FINISHED))})",
                                          [s.value for s in FINISHED]).fetchone()[0]
        if active_ids != self._active_ids or finished_count != self._finished_count or due:
            self._finished = self._make(*queue.job_rows(tuple(FINISHED)), made)
            self._finished_read, self._finished_version, self._finished_count = self.clock(), version, len(self._finished)
        else:
            made.update((j.id, self._made[j.id]) for j in self._finished)
        self._jobs, self._active_ids, self._made, self._version = active + self._finished, active_ids, made, version
        return list(self._jobs)

    def _make(self, rows: list[sqlite3.Row], deps: dict[int, list[int]], made: Made) -> list[Job]:
        jobs = []
        for row in rows:
            key, needs = tuple(row), tuple(deps.get(row["id"], ()))
            old = self._made.get(row["id"])
            job = old[2] if old is not None and old[0] == key and old[1] == needs else row_to_job(row, list(needs))
            made[row["id"]] = (key, needs, job)
            jobs.append(job)
        return jobs
