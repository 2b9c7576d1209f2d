"""engine.jobs.job_cache: the app's twice-a-second read of the queue gives what a fresh read
gives after every kind of change (another process's writes, this connection's own), and makes
again only the jobs whose rows changed."""

from __future__ import annotations

import sqlite3

from engine.jobs.job_cache import FINISHED_EVERY_S, JobCache
from engine.jobs.queue import JobStatus, Queue, mark_interrupted
from engine.train.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_kind_of_change_reads_as_a_fresh_read_does(tmp_path):
    writer, reader = Queue(tmp_path), Queue(tmp_path)  # the worker's connection, the app's
    cache, clock = JobCache(Clock()), None
    clock = cache.clock

    def same():
        got = cache.jobs(reader)
        assert got == Queue(tmp_path).jobs()
        return {j.id: j for j in got}

    a = writer.enqueue("train", "/p", side="a", label="train A", total=10)
    b = writer.enqueue("train", "/p", side="b", label="train B", total=10)
    m = writer.enqueue("merge", "/p", label="merge", depends_on=[a.id, b.id])
    first = same()
    assert first[m.id].depends_on == [a.id, b.id]
    writer.claim(None)
    writer.report_progress(a.id, Progress(3, 10, 0.5, 0.6, 1e-3, 2.0, 3.0, 2.0), point=True)
    after = same()
    assert after[a.id].step == 3 and after[b.id] is first[b.id]  # b's row did not change: the same Job
    writer.finish(a.id, "done", artifacts={"lora": "A.safetensors"})
    writer.move(m.id, "up")
    same()
    writer.cancel(b.id)  # its dependant fails with it
    fail = same()
    assert fail[m.id].status is JobStatus.FAILED
    writer.retry(b.id)  # both come back from the finished ones
    assert same()[m.id].status is JobStatus.QUEUED
    reader.enqueue("sample", "/p", label="preview")  # the reading connection's own write
    same()
    clock.now += 1
    assert cache.jobs(reader) is not cache.jobs(reader)  # a copy of the list each time: the caller may change it


def test_an_unchanged_queue_is_not_read_again_and_unchanged_finished_jobs_are_not_made_again(tmp_path, monkeypatch):
    writer, reader = Queue(tmp_path), Queue(tmp_path)
    cache = JobCache(Clock())
    for n in range(30):
        job = writer.enqueue("train", f"/p{n}", side="a", label="train A", total=10)
        writer.claim(None)
        writer.finish(job.id, "done")
    running = writer.enqueue("train", "/q", side="a", label="train A", total=10)
    writer.claim(None)
    before = cache.jobs(reader)
    reads = []
    real = reader.job_rows
    monkeypatch.setattr(reader, "job_rows", lambda statuses=None, project=None: reads.append(statuses) or real(statuses, project))
    assert cache.jobs(reader) == before and reads == []  # nothing written: nothing read
    writer.report_progress(running.id, Progress(5, 10, 0.5, 0.6, 1e-3, 2.0, 3.0, 2.0), point=False)
    after = cache.jobs(reader)
    assert len(reads) == 1 and set(reads[0]) == {"queued", "running", "paused"}  # progress reads the active jobs only
    assert after[0].step == 5 and all(x is y for x, y in zip(after[1:], before[1:]))
    writer.finish(running.id, "done")
    assert cache.jobs(reader) == Queue(tmp_path).jobs() and len(reads) == 3  # a job finished: the finished ones again


def test_a_finished_row_changed_in_place_is_seen_within_the_refresh_time(tmp_path):
    """No write of copylora changes a finished job without moving the active ones; another
    program may (sqlite3 by hand): it shows within FINISHED_EVERY_S."""
    writer, reader = Queue(tmp_path), Queue(tmp_path)
    cache = JobCache(Clock())
    done = writer.enqueue("train", "/p", side="a", label="train A", total=10)
    writer.claim(None)
    writer.finish(done.id, "failed", error="first")
    active = writer.enqueue("train", "/q", side="a", label="train A", total=10)
    cache.jobs(reader)
    other = sqlite3.connect(tmp_path / "queue.db")
    other.execute("UPDATE jobs SET error = 'second' WHERE id = ?", (done.id,))
    other.commit()
    writer.report_progress(active.id, Progress(1, 10, 0.5, 0.6, 1e-3, 2.0, 3.0, 2.0), point=False)
    assert [j.error for j in cache.jobs(reader) if j.id == done.id] == ["first"]
    other.execute("INSERT INTO deps (job_id, depends_on) VALUES (?, ?)", (active.id, done.id))  # its row as it was
    other.commit()
    assert [j.depends_on for j in cache.jobs(reader) if j.id == active.id] == [[done.id]]
    cache.clock.now += FINISHED_EVERY_S
    assert [j.error for j in cache.jobs(reader) if j.id == done.id] == ["second"]


def test_a_new_connection_starts_over(tmp_path):
    cache = JobCache(Clock())
    first = Queue(tmp_path / "one")
    first.enqueue("merge", "/p", label="merge")
    assert len(cache.jobs(first)) == 1
    assert cache.jobs(Queue(tmp_path / "two")) == []  # the same data_version, another file


def test_marking_interrupted_jobs_leaves_the_shared_jobs_as_they_were(tmp_path):
    queue = Queue(tmp_path)
    job = queue.enqueue("train", "/p", side="a", label="train A", total=10)
    queue.claim(None)
    queue.set_pid(job.id, 999_999_999, "nope")  # a process that is not there
    cache = JobCache(Clock())
    shared = cache.jobs(queue)
    marked = mark_interrupted(shared, worker_alive=False)
    assert marked[0].interrupted and not shared[0].interrupted
    assert not cache.jobs(queue)[0].interrupted  # the next read, when the worker is back, is not marked


def test_a_job_that_finishes_between_the_two_reads_is_seen_once(tmp_path, monkeypatch):
    """The active and the finished jobs are two queries: a job finishing between them was in
    both (the Queue screen's table then ended the app: a row key twice)."""
    writer, reader = Queue(tmp_path), Queue(tmp_path)
    first = writer.enqueue("merge", "/p", label="merge")
    writer.claim(None)
    cache = JobCache(Clock())
    real = reader.job_rows

    def finishing_between(statuses=None, project=None):
        rows = real(statuses, project)
        if "running" in statuses:
            writer.finish(first.id, "done")  # the worker, right between the two reads
        return rows

    monkeypatch.setattr(reader, "job_rows", finishing_between)
    ids = [j.id for j in cache.jobs(reader)]
    assert ids == [first.id]
    monkeypatch.setattr(reader, "job_rows", real)
    assert [(j.id, j.status) for j in cache.jobs(reader)] == [(first.id, JobStatus.DONE)]


def test_finished_jobs_cleaned_away_leave_the_next_read(tmp_path):
    writer, reader = Queue(tmp_path), Queue(tmp_path)
    cache = JobCache(Clock())
    for n in range(3):
        job = writer.enqueue("merge", f"/p{n}", label="merge")
        writer.claim(None)
        writer.finish(job.id, "done")
    waiting = writer.enqueue("merge", "/q", label="merge")
    assert len(cache.jobs(reader)) == 4
    writer.clean()  # `copylora clean` in another terminal: the active jobs do not move
    assert [j.id for j in cache.jobs(reader)] == [waiting.id]
