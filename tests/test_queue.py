"""The queue database on its own (no worker, no torch): order, dependencies, user commands,
and concurrent readers while a writer writes."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time

import pytest

from engine.jobs.queue import SCHEMA_VERSION, Queue, QueueError
from engine.train.progress import Progress


@pytest.fixture
def queue(tmp_path):
    q = Queue(tmp_path / "home")
    yield q
    q.close()


def chain(queue, project="p"):
    a = queue.enqueue("train", project, side="a", label="train A", total=10)
    b = queue.enqueue("train", project, side="b", label="train B", total=10)
    m = queue.enqueue("merge", project, label="merge", depends_on=[a.id, b.id])
    return a, b, m


def test_a_new_attempt_does_not_show_the_last_attempts_speed_eta_or_loss(queue):
    job = queue.enqueue("train", "p", side="a", label="train A", total=10)
    assert queue.claim(None).id == job.id
    queue.report_progress(job.id, Progress(4, 10, 0.5, 0.6, 1e-3, 2.0, 3.0, 2.0), point=True)
    queue.finish(job.id, "paused")
    queue.resume(job.id)
    again = queue.claim(None)
    assert again.id == job.id and again.attempts == 2
    assert (again.it_per_s, again.eta_s, again.loss, again.smooth_loss) == (None, None, None, None)
    assert again.step == 4  # roughly where it resumes, until it says


def test_schema_is_versioned(queue, tmp_path):
    assert queue.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert queue.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = Queue(tmp_path / "home")  # reopening migrates nothing and loses nothing
    assert again.jobs() == queue.jobs()
    queue.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(QueueError, match="newer copylora"):
        Queue(tmp_path / "home")


def test_claim_order_and_dependencies(queue):
    a, b, m = chain(queue)
    assert queue.claim(None).id == a.id
    assert queue.claim(None).id == b.id
    assert queue.claim(None) is None  # the merge waits for both trainings
    queue.finish(a.id, "done")
    assert queue.claim(None) is None
    queue.finish(b.id, "done", artifacts={"lora": "B.safetensors"})
    claimed = queue.claim("0")
    assert claimed.id == m.id and claimed.gpu == "0" and claimed.attempts == 1
    assert queue.get(b.id).artifacts == {"lora": "B.safetensors"}


def test_failure_fails_dependants_and_retry_brings_them_back(queue):
    a, b, m = chain(queue)
    queue.claim(None)
    queue.finish(a.id, "failed", error="cannot read teacher image")
    merge = queue.get(m.id)
    assert merge.status == "failed" and merge.failed_by == a.id
    assert "dependency #%d (train A) failed" % a.id in merge.error
    assert queue.get(b.id).status == "queued"  # a sibling is not a dependant
    queue.retry(a.id)
    assert queue.get(a.id).status == "queued" and queue.get(m.id).status == "queued"
    with pytest.raises(QueueError, match="only failed or cancelled"):
        queue.retry(b.id)


def test_cancel_pause_resume_move(queue):
    a, b, m = chain(queue)
    c = queue.enqueue("train", "q", side="a", label="train A")
    assert queue.pause(b.id) == "paused"
    assert queue.claim(None).id == a.id  # paused jobs are skipped
    assert queue.claim(None).id == c.id
    queue.resume(b.id)
    queue.move(m.id, "top")
    assert [j.id for j in queue.jobs(("queued",))] == [m.id, b.id]
    from engine.jobs.procs import process_start

    queue.set_pid(a.id, os.getpid(), process_start(os.getpid()))  # a live process runs it (else it is interrupted)
    assert "cancelling" in queue.cancel(a.id)  # running: an order for the worker
    assert queue.get(a.id).control == "cancel"
    assert queue.cancel(b.id) == "cancelled"
    assert queue.get(m.id).status == "failed"  # its dependency was cancelled
    with pytest.raises(QueueError, match="nothing to cancel"):
        queue.cancel(b.id)
    with pytest.raises(QueueError, match="no job #999"):
        queue.get(999)


def test_requests_reach_a_running_training_once(queue):
    a, _, _ = chain(queue)
    with pytest.raises(QueueError, match="only running trainings"):
        queue.request(a.id, "save-now")
    queue.claim(None)
    queue.request(a.id, "save-now")
    assert queue.take_requests(a.id)["save_now"] is True
    assert queue.take_requests(a.id)["save_now"] is False


def test_progress_and_bounded_history(queue):
    a, _, _ = chain(queue)
    queue.claim(None)
    for step in range(1, 11):
        queue.report_progress(a.id, Progress(step, 10, 1.0 / step, 0.5, 1e-4, 5.0, (10 - step) / 5.0, step / 5.0, None), point=step % 2 == 0)
    job = queue.get(a.id)
    assert (job.step, job.total, job.it_per_s) == (10, 10, 5.0)
    assert [p["step"] for p in queue.points(a.id)] == [2, 4, 6, 8, 10]


def test_requeue_at_head(queue):
    a, b, _ = chain(queue)
    queue.claim(None)
    queue.claim(None)
    queue.requeue_at_head(b.id, "process gone")
    assert queue.claim(None).id == b.id


def _writer(home: str, job_id: int, seconds: float) -> None:
    q = Queue(home)
    end = time.time() + seconds
    step = 0
    while time.time() < end:
        step += 1
        q.report_progress(job_id, Progress(step, 10**6, 1.0, 1.0, 1e-4, 100.0, 1.0, 1.0, None), point=True)


def _reader(home: str, seconds: float, errors) -> None:
    q = Queue(home)
    end = time.time() + seconds
    while time.time() < end:
        try:
            for job in q.jobs():
                q.points(job.id)
        except sqlite3.OperationalError as exc:  # "database is locked" would land here
            errors.put(str(exc))
            return


def test_concurrent_readers_while_the_worker_writes(tmp_path):
    home = str(tmp_path / "home")
    queue = Queue(home)
    job = queue.enqueue("train", "p", side="a", total=10**6)
    queue.claim(None)
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(home, job.id, 3.0))] + [ctx.Process(target=_reader, args=(home, 3.0, errors)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert errors.empty(), errors.get()
    assert queue.get(job.id).step > 100  # the writer really wrote while the readers read


def test_job_status_is_a_type_with_its_sets(tmp_path):
    import json

    from engine.jobs.queue import ACTIVE, FINISHED, JobStatus, QueueError

    queue = Queue(tmp_path / "state")
    job = queue.enqueue("train", "/p", side="a")
    assert job.status is JobStatus.QUEUED and job.status.waiting and job.status.active and not job.status.finished
    assert queue.jobs((JobStatus.QUEUED,)) == queue.jobs(("queued",)) == [job]
    queue.claim(None)
    queue.finish(job.id, JobStatus.DONE)
    done = queue.get(job.id)
    assert done.status is JobStatus.DONE and done.status.finished and done.shown_status == "done"
    assert json.loads(json.dumps(done.as_dict(), default=str))["status"] == "done"
    assert set(ACTIVE) | set(FINISHED) == set(JobStatus)
    with pytest.raises(QueueError, match="cannot finish a job as 'sleeping'"):
        queue.finish(job.id, "sleeping")


def test_a_version_1_queue_is_migrated_with_its_jobs_kept(tmp_path):
    """A queue written before twin training (schema 1) opens with B's loss columns added."""
    import sqlite3

    from engine.jobs.queue import MIGRATIONS
    from engine.jobs.state_home import queue_db

    home = tmp_path / "old"
    home.mkdir()
    db = sqlite3.connect(queue_db(home))
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO jobs (kind, project, side, label, position, created_at, step, total, smooth_loss)"
               " VALUES ('train', '/p', 'a', 'train A', 1, 0, 200, 200, 0.74)")
    db.commit()
    db.close()
    queue = Queue(home)
    assert queue.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    (job,) = queue.jobs()
    assert (job.label, job.smooth_loss, job.smooth_loss_b) == ("train A", 0.74, None)
    assert queue.points(job.id) == []
    queue.close()


def test_the_queue_takes_only_the_kinds_the_runner_runs(tmp_path):
    """A job kind without a runner would sit in the queue and fail when its turn came: refused
    when it is added (bake and extract are commands, not queue jobs)."""
    from engine.jobs.queue import KINDS
    from engine.jobs.runner import RUNNERS

    assert set(KINDS) == set(RUNNERS)
    queue = Queue(tmp_path)
    for kind in ("bake", "extract", "nonsense"):
        with pytest.raises(QueueError, match=f"unknown job kind '{kind}'"):
            queue.enqueue(kind, str(tmp_path))
    queue.close()


def test_a_picture_jobs_speed_is_timed_from_its_first_picture_done(queue):
    """A preview or class-image job's progress: at 1 of 2 it showed 56 420 it/s (one picture
    over the microseconds since the meter was made), with an ETA of 0."""
    from engine.jobs.runner import _images_progress

    job = queue.enqueue("sample", "p", label="preview")
    queue.claim(None)
    progress = _images_progress(queue, job, {"asked": False})
    progress(1, 3)
    first = queue.get(job.id)
    assert first.step == 1 and not first.it_per_s and (first.eta_s is None or first.eta_s == float("inf"))  # not known yet
    time.sleep(0.05)
    progress(2, 3)
    second = queue.get(job.id)
    assert 0 < second.it_per_s < 40 and 0 < second.eta_s < 1  # one picture in ≥ 50 ms


def test_the_progress_writer_writes_what_it_held_back_when_asked():
    """A training stopped at step 86 showed 85 in the queue (the last step the throttle let by)."""
    from engine.jobs.runner import ProgressWriter

    written = []

    class Queue:
        def report_progress(self, job_id, p, *, point):
            written.append(p.step)

        def take_requests(self, job_id):
            return {}

    writer = ProgressWriter(Queue(), 1, 1000)
    for step in (85, 86):
        writer(Progress(step, 1000, 0.1, 0.1, 1e-4, 10.0, 91.4, 8.6))
    assert written == [85]  # 86 came within the write interval
    writer.flush()
    writer.flush()
    assert written == [85, 86]


def test_a_twin_job_trained_side_after_side_counts_on_over_both(tmp_path, monkeypatch):
    """A twin job whose sides cannot train together trains A, then B: B's steps showed as the
    job's (the bar went back to 0, the ETA said 00:00 at A's end with all of B left)."""
    pytest.importorskip("torch")
    import torch

    from engine.jobs.queue import TWIN
    from engine.jobs.runner import run_train
    from tests.helpers import copy_example

    torch.set_num_threads(1)
    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("# Any [train] key set here overrides it for this side only.\n\n[merge]",
                                              "learning_rate = 0.0005\n\n[merge]"))  # [b] apart from [a]: no twin batch
    queue = Queue(tmp_path / "state")
    job = queue.enqueue("train", str(root), side=TWIN, label="train A+B", total=3, params={"max_steps": 3})
    queue.claim(None)
    seen = []
    real = queue.report_progress

    def report(job_id, p, *, point):
        seen.append((p.step, p.total))
        return real(job_id, p, point=point)

    monkeypatch.setattr(queue, "report_progress", report)
    monkeypatch.setattr("engine.jobs.runner.MAX_POINTS", 2)  # the curve's points: as many over both sides as over one
    run_train(queue, queue.get(job.id), {"asked": False})
    assert len(queue.points(job.id)) <= 3, queue.points(job.id)  # a stride of 6 // 2 (one side's 3 // 2 stored all 6)
    assert [total for _, total in seen] == [6] * len(seen)
    steps = [step for step, _ in seen]
    assert steps == sorted(steps) and steps[-1] == 6 and 3 in steps  # on from A's 3 steps, never back
    assert queue.get(job.id).step == 6
    assert set(queue.get(job.id).params["fingerprints"]) == {"a", "b"}  # the settings it trained with, for `run` to compare
    assert not queue.get(job.id).start_step  # B's first step is no resume ("resumed at step 3" it said)


def test_a_restart_holds_until_the_side_has_started_afresh(tmp_path, monkeypatch):
    """`copylora run --force`, its worker killed while the base model loaded (before the old
    checkpoints were dropped): the second attempt resumed the old checkpoint at its last step,
    said done, and nothing was trained afresh. The restart now holds until the side starts."""
    pytest.importorskip("torch")
    import torch

    from engine.jobs.queue import JobStatus
    from engine.jobs.runner import run_train
    from tests.helpers import copy_example

    torch.set_num_threads(1)
    root = copy_example(tmp_path)
    queue = Queue(tmp_path / "state")
    first = queue.enqueue("train", str(root), side="a", label="train A", total=3, params={"max_steps": 3})
    queue.claim(None)
    run_train(queue, queue.get(first.id), {"asked": False})  # a trained side: its checkpoint at step 3 of 3
    queue.finish(first.id, JobStatus.DONE)

    from engine.jobs.enqueue import enqueue_project

    (step,) = [s for s in enqueue_project(queue, root, force=True, max_steps=3) if s.what.startswith("train")]
    again = step.job
    assert again.params["restart"] is True and again.params["restarted"] == []  # a restart of this copylora's
    queue.claim(None)
    import engine.train.trainer as trainer

    real = trainer.prepare_model

    def killed(*args, **kwargs):
        raise RuntimeError("the worker was killed while the model loaded")

    monkeypatch.setattr(trainer, "prepare_model", killed)
    with pytest.raises(RuntimeError):
        run_train(queue, queue.get(again.id), {"asked": False})
    assert queue.get(again.id).params["restarted"] == []
    monkeypatch.setattr(trainer, "prepare_model", real)
    queue.requeue_at_head(again.id, None)  # what the next worker's recovery does
    queue.claim(None)
    assert queue.get(again.id).attempts == 2
    run_train(queue, queue.get(again.id), {"asked": False})
    assert queue.get(again.id).start_step == 0  # afresh, not "resumed at step 3"
    assert queue.get(again.id).params["restarted"] == ["a", "b"]  # a twin job: A and B as one
    queue.requeue_at_head(again.id, None)  # killed after it started afresh: a third attempt resumes what it trained
    queue.claim(None)
    run_train(queue, queue.get(again.id), {"asked": False})
    assert queue.get(again.id).start_step == 3


def test_a_restart_queued_by_an_earlier_copylora_keeps_its_rule_after_an_update(tmp_path):
    """A paused `run --force` job of a copylora before "restarted" existed (the first attempt
    alone restarted), resumed after the update: it started again from 0 and dropped the
    checkpoints `check` and `resume` said it would continue from."""
    pytest.importorskip("torch")
    import torch

    from engine.jobs.queue import JobStatus
    from engine.jobs.runner import run_train
    from tests.helpers import copy_example

    torch.set_num_threads(1)
    root = copy_example(tmp_path)
    queue = Queue(tmp_path / "state")
    old = queue.enqueue("train", str(root), side="a", label="train A", total=3, params={"max_steps": 3, "restart": True})
    queue.claim(None)
    run_train(queue, queue.get(old.id), {"asked": False})  # its first attempt: afresh, to step 3
    # what the earlier copylora's first attempt left: the params it was queued with, nothing more
    queue.db.execute("UPDATE jobs SET params = ? WHERE id = ?", ('{"max_steps": 3, "restart": true}', old.id))
    queue.finish(old.id, JobStatus.PAUSED)
    queue.resume(old.id)
    queue.claim(None)
    assert queue.get(old.id).attempts == 2
    run_train(queue, queue.get(old.id), {"asked": False})
    assert queue.get(old.id).start_step == 3  # continued: its training had started
    queue.finish(old.id, JobStatus.DONE)
    # one killed while its model loaded, before training started (no start_step): it restarts
    killed = queue.enqueue("train", str(root), side="a", label="train A", total=3, params={"max_steps": 3, "restart": True})
    queue.claim(None)
    queue.requeue_at_head(killed.id, None)
    queue.claim(None)
    assert queue.get(killed.id).attempts == 2 and queue.get(killed.id).start_step is None
    run_train(queue, queue.get(killed.id), {"asked": False})
    assert queue.get(killed.id).start_step == 0
