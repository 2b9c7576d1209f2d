"""The worker's Slurm executor: each runnable job becomes one Slurm job (``sbatch``), running the
same job runner on a compute node.

What must be shared between the submit host and the nodes (as on any cluster): the state folder
($COPYLORA_HOME: job logs and channels), the project folders and this Python environment. The
runner on a node never opens the queue database (SQLite's locking is unsafe on NFS): it reports
through its job's channel (:mod:`engine.jobs.channel`), which the worker ingests.

Dependencies stay the queue's: a job is submitted when what it needs is done (Slurm's
``--dependency=afterok`` would not know of a job that failed in our sense but exited 0, nor of a
re-submitted one). Steering:

- cancel or pause: ``scancel --batch --signal=TERM`` (the runner checkpoints and exits 3), or a
  plain ``scancel`` while Slurm still has it pending;
- the time limit and preemption: submitted with ``--signal=B:TERM@120``, so the runner gets TERM
  two minutes before and checkpoints; the job shows ``interrupted``, goes back to the head of the
  queue and is submitted again, resuming from its checkpoint;
- a job that vanished without a word (node failure, ``scancel`` with SIGKILL): the same.

``squeue`` is polled at most every :data:`SQUEUE_EVERY_S`, for all of the worker's jobs at once.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import CopyloraError
from engine.jobs.state_home import working_folder


def seconds_from_env(name: str, default: float) -> float:
    """``$name`` as seconds (0 or more), else ``default``: a value that is no number of seconds is
    the default, not a worker that fails to start."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if 0 <= value < float("inf") else default


# COPYLORA_SLURM_SQUEUE_EVERY_S in the worker's environment sets it (a private test cluster
# answers at once; a shared controller wants it left at its default).
SQUEUE_EVERY_S = seconds_from_env("COPYLORA_SLURM_SQUEUE_EVERY_S", 5.0)
SIGNAL_LEAD_S = 120  # the runner's warning before Slurm's time limit: time to write a checkpoint
COMMAND_TIMEOUT_S = 60
SQUEUE_TIMEOUT_S = 20  # a hung squeue held the worker's loop (progress, heartbeat, stop) for the whole minute


@dataclass
class SlurmOptions:
    """What every sbatch of this worker asks for."""

    partition: str | None = None
    gres: str | None = "gpu:1"  # "" = none (a CPU partition)
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_args: list[str] = field(default_factory=list)
    signal_lead_s: int = SIGNAL_LEAD_S

    def arguments(self) -> list[str]:
        args = [f"--signal=B:TERM@{self.signal_lead_s}"]
        for name in ("partition", "gres", "time", "account", "qos"):
            value = getattr(self, name)
            if value:
                args.append(f"--{name}={value}")
        return args + list(self.sbatch_args)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# What Slurm says when it cannot answer now (the controller restarting, a busy one, our own
# timeout): the request may be tried again. Anything else (a partition that does not exist, an
# option sbatch refuses) is the settings' to fix.
_TEMPORARY = re.compile(r"Unable to contact|temporarily|timed out|did not answer|Connection refused|Zero Bytes|try again|"
                        r"Resource temporarily unavailable|Socket|submit limit|MaxSubmit", re.I)  # (a QOS's job limit: wait)
_NO_SUCH_JOB = re.compile(r"Invalid job id", re.I)
# squeue's states of a job that is over (with --states=all a finished job stays listed for
# Slurm's MinJobAge, 300 s by default); every other state (PENDING, RUNNING, COMPLETING,
# REQUEUED, SUSPENDED, …) is a job Slurm still has.
ENDED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY",
                "REVOKED"}


class SlurmError(CopyloraError):
    def __init__(self, message: str, said: str = "") -> None:
        super().__init__(message)
        self.said = said  # what the command itself said (its stderr), apart from our words and its command line

    @property
    def temporary(self) -> bool:
        """Whether Slurm could not answer now (worth asking again), rather than said no. Read in
        what Slurm said only: a partition named "socket-gpu" in the command line read as "Socket"."""
        return bool(_TEMPORARY.search(self.said))

    @property
    def no_such_job(self) -> bool:
        return bool(_NO_SUCH_JOB.search(self.said))


def _run(command: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    # The user's SQUEUE_* settings (SQUEUE_STATES=RUNNING, a partition filter) hid our pending
    # jobs from squeue, which read as "ended without a word": each was submitted again, and again.
    env = {name: value for name, value in os.environ.items() if not name.startswith("SQUEUE_")}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]} not found: the Slurm executor needs Slurm's commands on this host", said="not found") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command[0]} did not answer within {timeout:.0f} s", said="did not answer") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()[:500]
        raise SlurmError(f"{shlex.join(command)} failed: {said}", said=said)
    return done.stdout


def submit(job_id: int, home: Path, channel: Path, log_path: Path, options: SlurmOptions) -> str:
    """sbatch the runner for ``job_id``; Slurm's job id."""
    script = channel / "run.sh"
    runner = [sys.executable, "-m", "engine.jobs.runner", "--home", str(home), "--job", str(job_id), "--channel", str(channel)]
    # exec: the runner is the batch shell itself, so --signal=B:TERM and scancel --batch reach it
    script.write_text(f"#!/bin/sh\ncd {shlex.quote(working_folder(home))}\nexec {shlex.join(runner)}\n", encoding="utf-8")
    # --no-requeue: a job Slurm itself put back (a node failure) ran beside the one we submitted
    # again; we resubmit, from its checkpoint, what ends before its time
    command = ["sbatch", "--parsable", "--no-requeue", f"--job-name={job_name(home, job_id)}", f"--output={log_path}", "--open-mode=append",
               *options.arguments(), str(script)]
    out = _run(command).strip()
    slurm_id = out.split(";")[0].strip()
    if not slurm_id.isdigit():
        raise SlurmError(f"sbatch answered {out!r}, not a job id")
    return slurm_id


def test_options(options: SlurmOptions) -> None:
    """Ask Slurm whether it would take a job of these settings (``sbatch --test-only``: nothing
    is submitted); SlurmError where it would not, or cannot answer."""
    _run(["sbatch", "--test-only", "--job-name=copylora-test", *options.arguments(), "--wrap=true"], timeout=SQUEUE_TIMEOUT_S)


def squeue(slurm_ids: list[str]) -> dict[str, dict]:
    """Slurm's view of these jobs: {id: {"state", "reason", "node"}}; a job Slurm no longer
    lists (finished longer ago than its MinJobAge) is absent. Asked of all this user's jobs in
    every state, not by id: one id Slurm has forgotten made ``squeue -j`` fail for all of them
    ("Invalid job id specified"), every poll, for good."""
    if not slurm_ids:
        return {}
    out = _run(["squeue", "-h", "--states=all", "-u", str(os.getuid()), "-o", "%i|%T|%r|%N"], timeout=SQUEUE_TIMEOUT_S)
    found = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0] in slurm_ids:
            state, reason, node = parts[1], parts[2], parts[3]
            found[parts[0]] = {"state": state, "reason": "" if reason in ("None", "(null)") else reason, "node": node}
    return found


def job_name(home: Path, job_id: int) -> str:
    """The Slurm job name of queue job ``job_id`` of the state folder ``home``: job #1 of
    another state folder of the same user is another job."""
    import hashlib

    return f"copylora-{job_id}-{hashlib.sha256(str(home).encode()).hexdigest()[:6]}"


def find_by_name(home: Path, job_id: int) -> str | None:
    """The Slurm id of this queue job's Slurm job, if Slurm has one (an sbatch that timed out
    may have submitted it all the same). Asked by user id (``$USER`` may name someone else)."""
    out = _run(["squeue", "-h", "--states=all", "-u", str(os.getuid()), "-n", job_name(home, job_id), "-o", "%i|%T"],
               timeout=SQUEUE_TIMEOUT_S)
    alive = [line.split("|")[0].strip() for line in out.splitlines() if "|" in line and line.split("|")[1].strip() not in ENDED_STATES]
    return alive[-1] if alive else None


def cancel(slurm_id: str, state: str | None) -> None:
    """Stop a job: TERM to the runner (it checkpoints), or drop it if it never started."""
    if state == "PENDING":
        _run(["scancel", slurm_id])
    else:
        _run(["scancel", "--batch", "--signal=TERM", slurm_id])


def status_text(info: dict | None) -> str:
    """Slurm's words for a job, as the queue shows them: ``PENDING (Resources)``, ``RUNNING on gpu07``."""
    if not info:
        return ""
    state = info.get("state") or "SUBMITTED"
    text = f"{state} ({info['reason']})" if info.get("reason") and state == "PENDING" else state
    if info.get("node") and state == "RUNNING":
        text += f" on {info['node']}"
    return f"Slurm {info.get('id', '?')} {text}"
