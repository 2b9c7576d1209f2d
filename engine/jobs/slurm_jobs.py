"""The worker's side of the Slurm executor (:mod:`engine.jobs.slurm`): submit what is runnable,
ingest what the nodes report (:mod:`engine.jobs.channel`), follow Slurm's state, pass orders on,
and decide what a finished Slurm job means for the queue.

The worker's own loop calls :meth:`SlurmJobs.step` in place of its local reap/fill; everything
else (the lock, the heartbeat, the queue) is the local worker's. Slurm jobs do not depend on the
worker: a worker that stops leaves them running, and the next one picks them up again
(:meth:`SlurmJobs.recover`).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.jobs import slurm
from engine.jobs.channel import channel_dir, ingest, open_channel, send_requests
from engine.jobs.queue import Job, JobStatus, Queue

INGEST_EVERY_S = 0.5  # the channels read, the orders passed on: live enough for a progress bar
GONE_AFTER_POLLS = 3  # squeue answers in a row that a job is over (or not listed) before it is taken as ended,
# over this long at the least, its channel quiet meanwhile (unless its runner said it ended);
# COPYLORA_SLURM_GONE_AFTER_S in the worker's environment sets it (a private test cluster that never lists a live job as gone)
GONE_AFTER_S = slurm.seconds_from_env("COPYLORA_SLURM_GONE_AFTER_S", 60.0)
SILENT_ENDS = 3  # Slurm jobs in a row that end without a word and without a step trained: the job fails, said why
RETRY_S = 30.0  # after Slurm could not take a submission (its controller away): submissions wait this long
ORDER_RETRY_S = 10.0  # after an scancel that failed: the order is passed on again this much later
MAX_SUBMITTED = 64  # jobs in Slurm at once from one worker: the scheduler, not us, decides the order beyond that


@dataclass
class Tracked:
    job_id: int
    slurm_id: str
    channel: Path
    offset: int = 0
    state: str | None = None  # squeue's last word
    exit_code: int | None = None  # from the channel's last line
    signalled: bool = False
    info: dict | None = None
    gone: int = 0  # squeue answers in a row that said it is over, or did not list it
    gone_since: float | None = None  # since when (time.monotonic); its channel's offset then in gone_offset
    gone_offset: int = 0
    order_after: float = 0.0  # an scancel that failed is tried again from then (time.monotonic)


@dataclass
class Outcome:
    """What one submission came to: the Slurm job (and its channel), or Slurm's error."""

    slurm_id: str | None = None
    channel: Path | None = None
    error: slurm.SlurmError | None = None
    refused: bool = False  # Slurm said no: the job fails
    unknown: bool = False  # it may have been submitted, and Slurm could not say: looked up before any sbatch
    held: bool = False  # not submitted: the last worker left it a cancel or pause order, and Slurm has it not


@dataclass
class Submission:
    job: Job
    outcome: Future  # of an Outcome
    order: str | None = None  # a cancel or pause the last worker left it


class SlurmJobs:
    def __init__(self, home: Path, options: slurm.SlurmOptions, log: Callable[[str], None], max_submitted: int = MAX_SUBMITTED) -> None:
        self.home, self.options, self.log, self.max_submitted = home, options, log, max_submitted
        self.tracked: dict[int, Tracked] = {}
        self.last_squeue = self.last_ingest = 0.0
        self.submit_after = 0.0  # Slurm could not take the last submission: none before then (time.monotonic)
        self.silent: dict[int, tuple[int, int]] = {}  # job id: (Slurm jobs in a row that ended without a word, at step)
        self.maybe_submitted: set[int] = set()  # jobs an sbatch that failed may have submitted, Slurm not asked yet
        self._asker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="squeue")
        self.asking: tuple[list[str], Future] | None = None  # the squeue under way: the ids asked, its answer
        self._submitter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbatch")
        self.submitting: Submission | None = None  # the job being submitted, and what that came to
        self.orders: dict[int, str] = {}  # cancel/pause given to a job the last worker left unsubmitted (recover)

    def recover(self, queue: Queue) -> None:
        """A new worker: follow the Slurm jobs its predecessor submitted; requeue what never got there."""
        for job in queue.jobs((JobStatus.RUNNING,)):
            if job.slurm and job.slurm.get("id"):
                self.tracked[job.id] = Tracked(job.id, str(job.slurm["id"]), channel_dir(self.home, job.id), state=job.slurm.get("state"))
                self.log(f"job #{job.id}: following Slurm job {job.slurm['id']} again")
            else:  # claimed, no Slurm id recorded: an sbatch under way when the last worker died may have submitted it
                self.maybe_submitted.add(job.id)
                if job.control in ("cancel", "pause"):  # the requeue wipes it: kept here, carried out once Slurm says
                    self.orders[job.id] = job.control
                queue.requeue_at_head(job.id, None)
                self.log(f"job #{job.id} ({job.label}) was running when the last worker ended: queued first, it resumes from its checkpoint")

    def step(self, queue: Queue) -> None:
        """One turn of the worker's loop: the channels and the orders twice a second, squeue every
        few seconds for all jobs at once, then what became runnable is submitted."""
        if time.monotonic() - self.last_ingest >= INGEST_EVERY_S:
            self.last_ingest = time.monotonic()
            for tracked in self.tracked.values():
                self._ingest(queue, tracked)
            self._pass_orders(queue)
        if self.asking is None and self.tracked and time.monotonic() - self.last_squeue >= slurm.SQUEUE_EVERY_S:
            # asked in a thread: a squeue that hangs (a busy controller) held this loop, and with it
            # every job's progress, the heartbeat and `worker stop`, for its whole time-out
            self.last_squeue = time.monotonic()
            ids = [t.slurm_id for t in self.tracked.values()]
            self.asking = (ids, self._asker.submit(slurm.squeue, ids))
        if self.asking is not None and self.asking[1].done():
            (ids, answer), self.asking = self.asking, None
            try:
                self._follow(queue, answer.result(), set(ids))
            except slurm.SlurmError as exc:
                self.log(f"squeue: {exc}")
        self._submit(queue)

    def _ingest(self, queue: Queue, tracked: Tracked) -> None:
        tracked.offset, events = ingest(queue, tracked.job_id, tracked.channel, tracked.offset)
        for event in events:
            if event.get("event") == "exit":
                tracked.exit_code = event["code"]  # an int: ingest checked it

    def _submit(self, queue: Queue) -> None:
        """Take what the submission under way came to, then start the next one. ``sbatch`` (and
        the name lookups around it) run in a thread, one at a time: a controller slow to answer
        held this loop for up to a minute (sbatch's time-out), and with it every job's progress,
        the heartbeat and `worker stop`."""
        if self.submitting is not None:
            if not self.submitting.outcome.done():
                return
            # settled before it is let go: a queue write that fails (a full disk) has it settled again next turn
            go_on = self._settle(queue, self.submitting.job, self.submitting.outcome.result(), self.submitting.order)
            self.submitting = None
            if not go_on:
                return
        if len(self.tracked) >= self.max_submitted or time.monotonic() < self.submit_after:
            return
        job = queue.claim("slurm")
        if job is None:
            return
        maybe, order = job.id in self.maybe_submitted, self.orders.pop(job.id, None)
        self.submitting = Submission(job, self._submitter.submit(self._submission, job, maybe, queue.log_path(job.id), order), order)

    def stop(self, queue: Queue) -> None:
        """The worker is stopping: the sbatch under way is waited for (it ends within its time-out)
        and its job followed by the queue, so the next worker finds its Slurm id recorded."""
        if self.submitting is not None:
            if not self.submitting.outcome.done():
                self.log(f"job #{self.submitting.job.id}: waiting for its sbatch to answer before stopping")
            self._settle(queue, self.submitting.job, self.submitting.outcome.result(), self.submitting.order)
            self.submitting = None

    def _submission(self, job: Job, maybe: bool, log_path: Path, order: str | None = None) -> Outcome:
        """In the submitter thread (Slurm's commands and the channel's files; the queue is the loop's)."""
        if maybe:  # an sbatch that may have submitted it: Slurm is asked first
            try:
                found = slurm.find_by_name(self.home, job.id)
            except slurm.SlurmError as exc:
                return Outcome(error=exc, unknown=True)
            if found is not None:  # its channel is the live job's: not opened afresh (that removes its events)
                return Outcome(found, channel_dir(self.home, job.id))
        if order is not None:  # cancelled or paused, and not on Slurm: nothing to submit
            return Outcome(held=True)
        try:
            channel = open_channel(self.home, job)
        except OSError as exc:  # a full disk under the state folder: waited out, as Slurm's being away is
            return Outcome(error=slurm.SlurmError(f"cannot write its channel in {channel_dir(self.home, job.id)}: {exc}"))
        try:
            return Outcome(slurm.submit(job.id, self.home, channel, log_path, self.options), channel)
        except slurm.SlurmError as exc:
            if not exc.temporary:  # Slurm said no (a partition it has not, an option it refuses): the settings to fix
                return Outcome(error=exc, refused=True)
            # Slurm could not answer (its controller restarting, an sbatch past our timeout, which
            # may have submitted it all the same): such a job failed, and every job after it, in a second.
            try:
                found = slurm.find_by_name(self.home, job.id)
            except slurm.SlurmError:  # not known: never submitted again before Slurm says it has it not
                return Outcome(error=exc, unknown=True)
            return Outcome(found, channel) if found is not None else Outcome(error=exc)

    def _settle(self, queue: Queue, job: Job, outcome: Outcome, order: str | None = None) -> bool:
        """What a submission came to, for the queue; whether the next may be submitted now.
        ``order``: a cancel or pause the last worker left (recover), carried out now."""
        if outcome.unknown:
            self.maybe_submitted.add(job.id)
            if order is not None:
                self.orders[job.id] = order  # still to carry out, once Slurm can say
        else:
            self.maybe_submitted.discard(job.id)
        if outcome.slurm_id is not None and outcome.channel is not None:
            self._follow_new(queue, job, outcome.slurm_id, outcome.channel)
            if order is not None:  # on Slurm after all: scancel'd by the next pass of the orders
                getattr(queue, order)(job.id)
            return True
        if outcome.held:
            assert order is not None
            ended = queue.end_as_ordered(job.id, order)
            self.log(f"job #{job.id} ({job.label}) was left by the last worker with a {order} order and is not on Slurm: {ended}")
            return True
        assert outcome.error is not None
        control = queue.get(job.id).control
        if control in ("cancel", "pause") and not outcome.unknown:
            # cancelled or paused while its sbatch was under way, which did not submit it: what
            # the user asked, not a requeue (that wiped the order: it was submitted 30 s later)
            ended = queue.end_as_ordered(job.id, control, "cancelled by the user (before it started on Slurm)")
            self.log(f"job #{job.id} {ended} before Slurm took it ({outcome.error})")
            if not outcome.refused:  # Slurm away: the next submission waits as after any such answer
                self.submit_after = time.monotonic() + RETRY_S
            return outcome.refused
        if outcome.refused:
            queue.finish(job.id, JobStatus.FAILED, error=f"could not submit it to Slurm: {outcome.error}")
            self.log(f"job #{job.id}: {outcome.error}")
            return True
        self._wait(queue, job, outcome.error)
        return False

    def _follow_new(self, queue: Queue, job: Job, slurm_id: str, channel: Path) -> None:
        queue.set_slurm(job.id, {"id": slurm_id, "state": "PENDING", "reason": "", "node": ""})
        self.tracked[job.id] = Tracked(job.id, slurm_id, channel, state="PENDING")
        self.log(f"job #{job.id} ({job.label} of {job.project}) submitted: Slurm job {slurm_id}")

    def _wait(self, queue: Queue, job: Job, exc: slurm.SlurmError) -> None:
        queue.requeue_at_head(job.id, f"not submitted yet: {exc}; tried again in {RETRY_S:.0f} s")
        self.submit_after = time.monotonic() + RETRY_S
        self.log(f"job #{job.id}: {exc}; submissions wait {RETRY_S:.0f} s")

    def _pass_orders(self, queue: Queue) -> None:
        if not self.tracked:
            return
        running = {job.id: job for job in queue.jobs((JobStatus.RUNNING,))}  # one read for all (50 jobs: not 50 reads)
        for tracked in self.tracked.values():
            job = running.get(tracked.job_id)
            if job is None:
                continue
            if job.control in ("cancel", "pause") and not tracked.signalled and time.monotonic() >= tracked.order_after:
                try:
                    slurm.cancel(tracked.slurm_id, tracked.state)
                except slurm.SlurmError as exc:
                    if not exc.no_such_job:  # (a job Slurm has forgotten has nothing left to stop: squeue ends it)
                        # tried again later, not twice a second for good
                        tracked.order_after = time.monotonic() + ORDER_RETRY_S
                        self.log(f"job #{job.id}: {exc}; tried again in {ORDER_RETRY_S:.0f} s")
                        continue
                tracked.signalled = True
                self.log(f"job #{job.id}: {job.control} → scancel {tracked.slurm_id}")
            requests = {k: bool(getattr(job, k)) for k in ("save_now", "sample_now") if getattr(job, k)}
            if requests:
                queue.take_requests(job.id)  # cleared here, carried to the node by the channel
                send_requests(tracked.channel, requests)

    def _follow(self, queue: Queue, seen: dict | None = None, asked: set[str] | None = None) -> None:
        """What squeue said of the tracked jobs (``seen``, asked about ``asked``; None: ask now)."""
        if not self.tracked:
            return
        if seen is None:
            try:
                seen = slurm.squeue([t.slurm_id for t in self.tracked.values()])
            except slurm.SlurmError as exc:
                self.log(f"squeue: {exc}")
                return
        for job_id, tracked in list(self.tracked.items()):
            if asked is not None and tracked.slurm_id not in asked:
                continue  # submitted after the question: not in its answer
            info = seen.get(tracked.slurm_id)
            if info is not None and info["state"] not in slurm.ENDED_STATES:
                tracked.gone, tracked.gone_since = 0, None
                if info["state"] == "PENDING":  # (again: requeued) an exit its last run said is not this run's end
                    tracked.exit_code = None
                if info != tracked.info:  # written when Slurm's word changes, not every poll
                    tracked.state, tracked.info = info["state"], info
                    queue.set_slurm(job_id, {"id": tracked.slurm_id, **info})
                continue
            # Over, or not listed: the channel's last lines, then the verdict, once sure. One
            # answer was taken at its word: a squeue that listed nothing for a moment had a
            # running job submitted again beside itself.
            # Twelve seconds of empty answers still had one submitted twice: it takes a minute as
            # well, with nothing new from its node meanwhile (a runner that still writes is alive).
            self._ingest(queue, tracked)
            now = time.monotonic()
            if tracked.gone_since is None or tracked.offset != tracked.gone_offset:
                tracked.gone, tracked.gone_since, tracked.gone_offset = 0, now, tracked.offset
            tracked.gone += 1
            if tracked.exit_code is None and (tracked.gone < GONE_AFTER_POLLS or now - tracked.gone_since < GONE_AFTER_S):
                continue
            del self.tracked[job_id]
            self._ended(queue, queue.get(job_id), tracked)

    def _ended(self, queue: Queue, job: Job, tracked: Tracked) -> None:
        """A Slurm job left squeue: what its run means for the queue."""
        queue.set_slurm(job.id, {"id": tracked.slurm_id, "state": "ENDED", "reason": "", "node": ""})
        if job.status is not JobStatus.RUNNING:  # the runner recorded done or failed itself
            self.log(f"job #{job.id} {job.status} (Slurm job {tracked.slurm_id})")
            return
        if job.control == "cancel":
            kept = "checkpoint kept: `copylora retry` resumes it" if job.step else "before it started on Slurm"
            queue.finish(job.id, JobStatus.CANCELLED, error=f"cancelled by the user ({kept})")
        elif job.control == "pause":
            queue.finish(job.id, JobStatus.PAUSED)
        else:  # time limit, preemption (TERM: a checkpoint, exit 3), or gone without a word (node failure, SIGKILL)
            if tracked.exit_code is None and self._silent_again(queue, job):
                return
            how = "stopped with a checkpoint" if tracked.exit_code == 3 else "ended without a word (node failure or killed)"
            queue.requeue_at_head(job.id, f"interrupted on Slurm (job {tracked.slurm_id} {how}): submitted again, resumes from its checkpoint")
            self.log(f"job #{job.id}: Slurm job {tracked.slurm_id} {how}; queued first, submitted again")
            return
        self.log(f"job #{job.id} {'cancelled' if job.control == 'cancel' else 'paused'} (Slurm job {tracked.slurm_id})")

    def _silent_again(self, queue: Queue, job: Job) -> bool:
        """Whether this job's Slurm jobs have ended without a word SILENT_ENDS times in a row with
        no step trained between (the runner never started on the node: its Python environment or
        the state folder not there); then the job fails, said why (it was submitted nine times in
        40 s, its cause only in its log)."""
        count, step = self.silent.get(job.id, (0, -1))
        count = count + 1 if (job.step or 0) == step else 1
        self.silent[job.id] = (count, job.step or 0)
        if count < SILENT_ENDS:
            return False
        del self.silent[job.id]
        queue.finish(job.id, JobStatus.FAILED, error=(
            f"its Slurm jobs ended {count} times in a row without a word and without a step trained: the node's output is in "
            f"`copylora logs {job.id}` (this Python environment, the projects or the state folder not found there?)"))
        self.log(f"job #{job.id}: {count} Slurm jobs in a row ended without a word: failed")
        return True
