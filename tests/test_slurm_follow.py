"""How the worker's Slurm executor (engine.jobs.slurm_jobs) reads what Slurm and the nodes say
when they say it badly: an audit on a one-node cluster (2026-12-07) found each of these losing
or duplicating work. Slurm's commands are stood in for here (the functions of engine.jobs.slurm
the executor calls), so each case is exact and takes no cluster; the cluster tests
(tests/test_slurm.py) run the real ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.jobs import slurm
from engine.jobs.channel import ingest, open_channel
from engine.jobs.queue import JobStatus, Queue
from engine.jobs.slurm_jobs import GONE_AFTER_POLLS, SILENT_ENDS, SlurmJobs


class StandIn:
    """sbatch, squeue, scancel and a name lookup, answering as told."""

    def __init__(self, monkeypatch) -> None:
        self.next_id = 100
        self.listed: dict[str, str] = {}  # Slurm id: state squeue lists
        self.submit_error: str | None = None
        self.cancel_error: str | None = None
        self.by_name: dict[int, str] = {}
        self.submits: list[int] = []
        self.cancels = 0
        monkeypatch.setattr(slurm, "submit", self.submit)
        monkeypatch.setattr(slurm, "squeue", self.squeue)
        monkeypatch.setattr(slurm, "cancel", self.cancel)
        self.lookup_error: str | None = None
        monkeypatch.setattr(slurm, "find_by_name", self.find_by_name)

    def submit(self, job_id, *_args) -> str:
        if self.submit_error:
            raise slurm.SlurmError(f"sbatch ... failed: {self.submit_error}", said=self.submit_error)
        self.submits.append(job_id)
        self.next_id += 1
        self.listed[str(self.next_id)] = "PENDING"
        return str(self.next_id)

    def find_by_name(self, home, job_id) -> str | None:
        if self.lookup_error:
            raise slurm.SlurmError(self.lookup_error, said=self.lookup_error)
        return self.by_name.get(job_id)

    def squeue(self, ids) -> dict:
        return {i: {"state": s, "reason": "", "node": ""} for i, s in self.listed.items() if i in ids}

    def cancel(self, slurm_id, state) -> None:
        self.cancels += 1
        if self.cancel_error:
            raise slurm.SlurmError(f"scancel ... failed: {self.cancel_error}", said=self.cancel_error)


def submit(jobs: SlurmJobs, queue: Queue) -> None:
    """The loop's turns until no sbatch is under way (each runs in the executor's submitter thread)."""
    jobs._submit(queue)
    while jobs.submitting is not None:
        jobs.submitting.outcome.result(timeout=10)
        jobs._submit(queue)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.jobs.slurm_jobs.GONE_AFTER_S", 0.0)  # the polls alone decide, unless a test says otherwise
    stand_in = StandIn(monkeypatch)
    queue = Queue(tmp_path / "state")
    said: list[str] = []
    jobs = SlurmJobs(queue.home, slurm.SlurmOptions(), said.append)
    yield stand_in, queue, jobs, said
    queue.close()


def test_a_job_squeue_does_not_list_once_is_not_submitted_again(cluster):
    """An empty squeue answer (a hiccup, SQUEUE_STATES=RUNNING) read as "ended without a word":
    the running job was submitted again beside itself, failed on its own side's lock, and took
    its merge and preview with it."""
    stand_in, queue, jobs, said = cluster
    job = queue.enqueue("train", "/p", side="a", label="train A", total=300)
    submit(jobs, queue)
    [slurm_id] = stand_in.listed
    stand_in.listed[slurm_id] = "RUNNING"
    del stand_in.listed[slurm_id]  # not listed, for GONE_AFTER_POLLS - 1 answers
    for _ in range(GONE_AFTER_POLLS - 1):
        jobs._follow(queue)
    stand_in.listed[slurm_id] = "RUNNING"  # there after all
    jobs._follow(queue)
    submit(jobs, queue)
    assert stand_in.submits == [job.id] and queue.get(job.id).status is JobStatus.RUNNING
    del stand_in.listed[slurm_id]  # gone for good (a node failure): submitted again, once sure
    for _ in range(GONE_AFTER_POLLS):
        jobs._follow(queue)
    submit(jobs, queue)
    assert stand_in.submits == [job.id, job.id] and any("ended without a word" in line for line in said)


def test_a_job_is_gone_only_after_a_quiet_minute_and_a_requeue_is_no_end(cluster, monkeypatch):
    """Empty squeue answers for 12 s (three polls) still had a running job submitted twice; a job
    Slurm requeued (its runner had said "exit 3") was resubmitted by us too on one missing answer."""
    import engine.jobs.slurm_jobs as slurm_jobs

    stand_in, queue, jobs, _said = cluster
    monkeypatch.setattr(slurm_jobs, "GONE_AFTER_S", 60.0)
    clock = [1000.0]
    monkeypatch.setattr(slurm_jobs.time, "monotonic", lambda: clock[0])
    job = queue.enqueue("train", "/p", side="a", label="train A", total=300)
    submit(jobs, queue)
    [slurm_id] = stand_in.listed
    events = jobs.tracked[job.id].channel / "events.jsonl"
    del stand_in.listed[slurm_id]
    for _ in range(6):  # six empty answers in 30 s: not a minute
        clock[0] += 5
        jobs._follow(queue)
    assert job.id in jobs.tracked
    for _ in range(10):  # its node still writes: alive, whatever squeue says
        clock[0] += 5
        with open(events, "a") as handle:
            handle.write(json.dumps({"event": "start_step", "step": 1, "total": 300}) + "\n")
        jobs._follow(queue)
    assert job.id in jobs.tracked and stand_in.submits == [job.id]
    with open(events, "a") as handle:  # TERM (preemption): a checkpoint, exit 3; then Slurm lists it PENDING again
        handle.write(json.dumps({"event": "exit", "code": 3}) + "\n")
    jobs._ingest(queue, jobs.tracked[job.id])
    stand_in.listed[slurm_id] = "PENDING"
    jobs._follow(queue)
    del stand_in.listed[slurm_id]  # one empty answer: its earlier exit is not this run's end
    clock[0] += 5
    jobs._follow(queue)
    assert job.id in jobs.tracked and stand_in.submits == [job.id]
    for _ in range(13):  # gone, and quiet, for a minute: ended, submitted again
        clock[0] += 5
        jobs._follow(queue)
    submit(jobs, queue)
    assert stand_in.submits == [job.id, job.id]


def test_a_job_claimed_when_the_last_worker_died_is_looked_for_before_it_is_submitted(cluster):
    """A worker killed during a slow sbatch: the next one submitted the job again, and both ran."""
    stand_in, queue, jobs, _said = cluster
    job = queue.enqueue("merge", "/p", label="merge")
    queue.claim("slurm")  # claimed, its sbatch under way, no Slurm id recorded: the worker died
    stand_in.by_name[job.id] = "900"
    jobs.recover(queue)
    submit(jobs, queue)
    assert not stand_in.submits and jobs.tracked[job.id].slurm_id == "900"


def test_a_job_slurm_calls_over_ends_when_its_runner_said_so(cluster):
    """squeue --states=all lists a finished job as COMPLETED: with the runner's exit in its
    channel, that is the end at once."""
    stand_in, queue, jobs, _said = cluster
    job = queue.enqueue("merge", "/p", label="merge")
    submit(jobs, queue)
    [slurm_id] = stand_in.listed
    channel = jobs.tracked[job.id].channel
    with open(channel / "events.jsonl", "a") as events:
        events.write(json.dumps({"event": "finish", "status": "done"}) + "\n" + json.dumps({"event": "exit", "code": 0}) + "\n")
    stand_in.listed[slurm_id] = "COMPLETED"
    jobs._follow(queue)
    assert not jobs.tracked and queue.get(job.id).status is JobStatus.DONE


@pytest.mark.parametrize("line", [b'{"event": "start_step"}', b'[1]', b'"x"', b'{"event": "progress", "progress": 5}',
                                  b'{"event": "exit", "code": "one"}', b'{"event": "finish", "status": "sideways"}',
                                  b'{"event": "finish", "status": "running"}', b'{"event": "start_step", "step": 1e999, "total": 9}',
                                  b'{"event": "start_step", "step": 100000000000000000000000, "total": 9}',
                                  b'{"event": "exit", "code": 1e999}', b'{"event": "finish", "status": "done", "error": {"a": 1}}'])
def test_a_channel_line_of_another_shape_is_skipped(tmp_path, line):
    """Valid JSON of the wrong shape in events.jsonl ended the worker (KeyError: 'step'), and
    every worker started after it, reading the line again."""
    queue = Queue(tmp_path / "state")
    job = queue.enqueue("train", str(tmp_path), side="a", label="train A", total=10)
    queue.claim("slurm")
    folder = open_channel(queue.home, queue.get(job.id))
    with open(folder / "events.jsonl", "ab") as events:
        events.write(line + b"\n" + json.dumps({"event": "start_step", "step": 4, "total": 10}).encode() + b"\n")
    offset, events_read = ingest(queue, job.id, folder, 0)
    assert [e["event"] for e in events_read] == ["start_step"] and offset == os.path.getsize(folder / "events.jsonl")
    assert queue.get(job.id).start_step == 4
    queue.close()


def test_a_cancel_slurm_cannot_pass_on_is_tried_again_later_and_one_it_forgot_is_over(cluster, monkeypatch):
    """scancel of a job Slurm had forgotten ("Invalid job id") was tried twice a second for good."""
    stand_in, queue, jobs, said = cluster
    job = queue.enqueue("merge", "/p", label="merge")
    submit(jobs, queue)
    queue.cancel(job.id)
    stand_in.cancel_error = "scancel: error: Unable to contact slurm controller (connect failure)"
    for _ in range(5):
        jobs._pass_orders(queue)
    assert stand_in.cancels == 1 and not jobs.tracked[job.id].signalled
    jobs.tracked[job.id].order_after = 0.0  # ORDER_RETRY_S later
    stand_in.cancel_error = "scancel: error: Kill job error on job id 101: Invalid job id specified"
    jobs._pass_orders(queue)
    assert stand_in.cancels == 2 and jobs.tracked[job.id].signalled
    stand_in.listed.clear()  # Slurm lists it no more: cancelled, once sure
    for _ in range(GONE_AFTER_POLLS):
        jobs._follow(queue)
    assert queue.get(job.id).status is JobStatus.CANCELLED


def test_a_submission_slurm_could_not_take_waits_and_one_it_refused_fails(cluster):
    """The controller away for seconds failed the job at once, and every job after it within a
    second; an sbatch past our timeout that had submitted the job left it training untracked."""
    stand_in, queue, jobs, _said = cluster
    first = queue.enqueue("merge", "/p1", label="merge")
    second = queue.enqueue("merge", "/p2", label="merge")
    stand_in.submit_error = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
    submit(jobs, queue)
    assert [queue.get(j.id).status for j in (first, second)] == [JobStatus.QUEUED, JobStatus.QUEUED]
    assert "tried again in 30 s" in queue.get(first.id).error and jobs.submit_after > 0
    submit(jobs, queue)  # within RETRY_S: nothing tried
    assert not stand_in.submits and queue.get(first.id).status is JobStatus.QUEUED
    jobs.submit_after = 0.0
    stand_in.submit_error = "sbatch did not answer within 60 s"
    stand_in.by_name[first.id] = "777"  # it had been submitted all the same: followed, not submitted twice
    submit(jobs, queue)
    assert jobs.tracked[first.id].slurm_id == "777" and queue.get(first.id).slurm["id"] == "777"
    stand_in.submit_error = "sbatch: error: Batch job submission failed: Invalid partition name specified"
    jobs.submit_after = 0.0
    submit(jobs, queue)
    assert queue.get(second.id).status is JobStatus.FAILED and "Invalid partition" in queue.get(second.id).error


def test_a_job_an_sbatch_may_have_submitted_is_never_submitted_again_before_slurm_says(cluster):
    """sbatch past our timeout (it had submitted the job) and Slurm too slow to look it up: 30 s
    later the job was submitted again, its live channel emptied first."""
    stand_in, queue, jobs, _said = cluster
    job = queue.enqueue("merge", "/p", label="merge")
    stand_in.submit_error = "did not answer"
    stand_in.lookup_error = "squeue: error: Socket timed out on send/recv operation"
    submit(jobs, queue)
    assert queue.get(job.id).status is JobStatus.QUEUED and job.id in jobs.maybe_submitted
    stand_in.submit_error = None
    jobs.submit_after = 0.0
    submit(jobs, queue)  # Slurm still cannot say: no sbatch
    assert not stand_in.submits and queue.get(job.id).status is JobStatus.QUEUED
    stand_in.lookup_error = None
    stand_in.by_name[job.id] = "555"  # it has it: followed, its channel as the node writes it
    channel = jobs.home / "channels" / str(job.id) / "events.jsonl"
    channel.write_text('{"event": "start_step", "step": 3, "total": 9}\n')
    jobs.submit_after = 0.0
    submit(jobs, queue)
    assert not stand_in.submits and jobs.tracked[job.id].slurm_id == "555" and channel.read_text()


def test_slurm_errors_are_told_apart_by_what_slurm_said_not_the_command_line():
    refused = slurm.SlurmError("sbatch --partition=socket-gpu x.sh failed: sbatch: error: Invalid partition name specified",
                               said="sbatch: error: Invalid partition name specified")
    assert not refused.temporary  # "socket" in the partition's name read as a socket time-out: retried for good
    assert slurm.SlurmError("x", said="sbatch: error: QOSMaxSubmitJobPerUserLimit").temporary  # a QOS's limit: wait
    assert slurm.job_name(Path("/a"), 1) != slurm.job_name(Path("/b"), 1)  # job #1 of another state folder is another job


def test_a_job_that_never_starts_on_its_node_fails_after_a_few_tries(cluster):
    """A node without this Python environment: each Slurm job ended at once without a word, and
    the job was submitted nine times in 40 s, the cause only in its log."""
    stand_in, queue, jobs, _said = cluster
    job = queue.enqueue("train", "/p", side="a", label="train A", total=300)
    for attempt in range(SILENT_ENDS):
        submit(jobs, queue)
        stand_in.listed.clear()
        for _ in range(GONE_AFTER_POLLS):
            jobs._follow(queue)
        if attempt < SILENT_ENDS - 1:
            assert queue.get(job.id).status is JobStatus.QUEUED
    failed = queue.get(job.id)
    assert failed.status is JobStatus.FAILED and f"copylora logs {job.id}" in failed.error and len(stand_in.submits) == SILENT_ENDS


def test_a_local_worker_leaves_a_job_running_on_slurm_alone(tmp_path):
    """A plain `copylora run` started a local worker, which took the Slurm job for its own: it ran
    here too, failed on the side's lock, and its dependants failed with it."""
    from engine.jobs.worker import Worker

    queue = Queue(tmp_path / "state")
    job = queue.enqueue("train", "/p", side="a", label="train A", total=300)
    queue.claim("slurm")
    queue.set_slurm(job.id, {"id": "42", "state": "RUNNING", "reason": "", "node": "gpu07"})
    said: list[str] = []
    worker = Worker(tmp_path / "state")
    worker.log = said.append
    worker.recover(queue)
    assert queue.get(job.id).status is JobStatus.RUNNING and "runs as Slurm job 42: left to it" in said[0]
    queue.close()


def test_slurm_commands_run_without_the_users_squeue_settings(monkeypatch):
    monkeypatch.setenv("SQUEUE_STATES", "RUNNING")
    monkeypatch.setenv("SQUEUE_PARTITION", "other")
    seen = slurm._run(["env"])
    assert "SQUEUE_" not in seen and "PATH=" in seen


def test_worker_start_asks_slurm_about_its_settings_first(tmp_path, monkeypatch, capsys):
    """`worker start --executor slurm --partition nope` said "started"; then every queued job
    failed, one by one. sbatch --test-only asks Slurm first (nothing is submitted)."""
    from copylora_tui.cli.main import EXIT_USAGE, main

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "$@" >> "$0.args"\n'
                                    'case "$*" in *--partition=nope*) echo "sbatch: error: Batch job submission failed: '
                                    'Invalid partition name specified" >&2; exit 1;; esac\necho "sbatch: Job 5 to start at now"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    assert main(["worker", "start", "--executor", "slurm", "--partition", "nope"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Slurm refuses these settings" in err and "Invalid partition name specified" in err
    assert "--test-only" in (bin_dir / "sbatch.args").read_text()
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no Slurm here at all
    assert main(["worker", "start", "--executor", "slurm"]) == EXIT_USAGE
    assert "sbatch not found" in capsys.readouterr().err


def test_run_asks_slurm_about_worker_toml_before_it_starts_a_worker(tmp_path, monkeypatch, capsys):
    """worker.toml with a partition Slurm has not: `copylora run` said "worker started", then
    every job failed, one by one (only `worker start` asked Slurm first)."""
    from copylora_tui.cli.main import EXIT_USAGE, main
    from tests.helpers import copy_example

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2\n'
                                    "exit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    home = tmp_path / "state"
    home.mkdir()
    monkeypatch.setenv("COPYLORA_HOME", str(home))
    (home / "worker.toml").write_text('[worker]\nexecutor = "slurm"\npartition = "nosuch"\ngres = ""\n')
    root = copy_example(tmp_path)
    assert main(["run", str(root), "--max_steps", "2"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "the worker was not started: Slurm refuses the settings of" in err and "Invalid partition name specified" in err
    from engine.jobs.worker import worker_pid

    assert not worker_pid(home)


def test_a_squeue_that_hangs_does_not_hold_the_worker(cluster, monkeypatch):
    """squeue waiting on a busy controller held the worker's loop for its whole time-out: no
    progress read, a heartbeat 30 s old, `worker stop` slow. It is asked in a thread now."""
    import threading
    import time

    stand_in, queue, jobs, _said = cluster
    job = queue.enqueue("merge", "/p", label="merge")
    submit(jobs, queue)
    [slurm_id] = stand_in.listed
    stand_in.listed[slurm_id] = "RUNNING"
    answer = threading.Event()
    real = stand_in.squeue

    def hanging(ids):
        answer.wait(timeout=30)
        return real(ids)

    monkeypatch.setattr(slurm, "squeue", hanging)
    jobs.last_squeue = 0.0
    started = time.monotonic()
    for _ in range(5):
        jobs.step(queue)
    assert time.monotonic() - started < 2.0 and jobs.asking is not None
    answer.set()
    deadline = time.monotonic() + 10
    while queue.get(job.id).slurm.get("state") != "RUNNING" and time.monotonic() < deadline:
        jobs.step(queue)
        time.sleep(0.05)
    assert queue.get(job.id).slurm["state"] == "RUNNING"


def test_an_sbatch_that_hangs_does_not_hold_the_worker(cluster, monkeypatch):
    """sbatch waiting on a busy controller held the worker's loop for up to its minute's
    time-out (no progress read, no heartbeat, `worker stop` slow). It runs in a thread now, one
    at a time; its job is followed once it answers, and a worker told to stop meanwhile waits
    for that answer, so the job's Slurm id is recorded for the next worker."""
    import threading
    import time

    stand_in, queue, jobs, said = cluster
    first = queue.enqueue("merge", "/p", label="merge")
    second = queue.enqueue("merge", "/q", label="merge")
    answer = threading.Event()
    real = stand_in.submit

    def hanging(job_id, *args):
        answer.wait(timeout=30)
        return real(job_id, *args)

    monkeypatch.setattr(slurm, "submit", hanging)
    started = time.monotonic()
    for _ in range(5):
        jobs.step(queue)
    assert time.monotonic() - started < 2.0
    assert jobs.submitting is not None and jobs.submitting.job.id == first.id
    assert queue.get(second.id).status is JobStatus.QUEUED  # one sbatch at a time
    answer.set()
    deadline = time.monotonic() + 10
    while len(stand_in.submits) < 2 and time.monotonic() < deadline:
        jobs.step(queue)
        time.sleep(0.01)
    assert stand_in.submits == [first.id, second.id]
    jobs.stop(queue)  # the second's sbatch may still be settling: stop waits for it
    assert jobs.submitting is None
    assert {queue.get(j.id).slurm["id"] for j in (first, second)} == set(stand_in.listed)
    assert set(jobs.tracked) == {first.id, second.id}


@pytest.mark.parametrize("order", ["cancel", "pause"])
def test_a_cancel_or_pause_while_its_sbatch_is_under_way_is_kept(cluster, monkeypatch, order):
    """A cancel given while the job's sbatch was under way, an sbatch Slurm could not take (its
    controller away): the requeue wiped the order, and the job was submitted 30 s later."""
    import os

    stand_in, queue, jobs, said = cluster
    monkeypatch.setattr("engine.jobs.worker.worker_pid", lambda home: os.getpid())  # a worker holds the queue
    job = queue.enqueue("merge", "/p", label="merge")
    stand_in.submit_error = "Socket timed out on send/recv operation"
    jobs._submit(queue)  # claimed, its sbatch under way
    assert jobs.submitting is not None
    answer = getattr(queue, order)(job.id)
    assert answer.startswith("cancelling" if order == "cancel" else "pausing"), answer
    jobs.submitting.outcome.result(timeout=10)
    submit(jobs, queue)
    assert queue.get(job.id).status is (JobStatus.CANCELLED if order == "cancel" else JobStatus.PAUSED)
    assert stand_in.submits == [] and not jobs.tracked


def test_a_channel_that_cannot_be_written_waits_as_slurm_away_does(cluster, monkeypatch):
    """A full disk under the state folder: open_channel's OSError ended the worker's loop."""
    stand_in, queue, jobs, said = cluster
    job = queue.enqueue("merge", "/p", label="merge")

    def full(home, job):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("engine.jobs.slurm_jobs.open_channel", full)
    submit(jobs, queue)
    again = queue.get(job.id)
    assert again.status is JobStatus.QUEUED and "No space left on device" in again.error and stand_in.submits == []
    assert jobs.submit_after > 0


@pytest.mark.parametrize("on_slurm", [False, True])
def test_an_order_the_last_worker_left_a_job_it_had_not_submitted_is_carried_out(cluster, monkeypatch, on_slurm):
    """A cancel given while the dying worker's sbatch was under way: its recovery requeued the
    job (the requeue wipes the order), which was then submitted, or followed, and trained on."""
    import os

    stand_in, queue, jobs, said = cluster
    monkeypatch.setattr("engine.jobs.worker.worker_pid", lambda home: os.getpid())  # the order lands while a worker lives
    job = queue.enqueue("merge", "/p", label="merge")
    queue.claim("slurm")
    assert queue.cancel(job.id).startswith("cancelling")
    if on_slurm:  # its sbatch had got there
        stand_in.by_name[job.id] = "77"
        stand_in.listed["77"] = "RUNNING"
    jobs.recover(queue)
    submit(jobs, queue)
    assert stand_in.submits == []
    if on_slurm:
        jobs._pass_orders(queue)
        assert stand_in.cancels == 1 and queue.get(job.id).slurm["id"] == "77"
    else:
        assert queue.get(job.id).status is JobStatus.CANCELLED and "cancel order" in said[-1]
