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

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import CopyloraError
from engine.jobs.state_home import working_folder

SQUEUE_EVERY_S = 5.0
SIGNAL_LEAD_S = 120  # the runner's warning before Slurm's time limit: time to write a checkpoint
COMMAND_TIMEOUT_S = 60


class SlurmError(CopyloraError):
    pass


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


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]} not found: the Slurm executor needs Slurm's commands on this host") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command[0]} did not answer within {COMMAND_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise SlurmError(f"{shlex.join(command)} failed: {(done.stderr or done.stdout).strip()[:500]}")
    return done.stdout


def submit(job_id: int, home: Path, channel: Path, log_path: Path, options: SlurmOptions) -> str:
    """sbatch the runner for ``job_id``; Slurm's job id."""
    script = channel / "run.sh"
    runner = [sys.executable, "-m", "engine.jobs.runner", "--home", str(home), "--job", str(job_id), "--channel", str(channel)]
    # exec: the runner is the batch shell itself, so --signal=B:TERM and scancel --batch reach it
    script.write_text(f"#!/bin/sh\ncd {shlex.quote(working_folder(home))}\nexec {shlex.join(runner)}\n", encoding="utf-8")
    command = ["sbatch", "--parsable", f"--job-name=copylora-{job_id}", f"--output={log_path}", "--open-mode=append",
               *options.arguments(), str(script)]
    out = _run(command).strip()
    slurm_id = out.split(";")[0].strip()
    if not slurm_id.isdigit():
        raise SlurmError(f"sbatch answered {out!r}, not a job id")
    return slurm_id


def squeue(slurm_ids: list[str]) -> dict[str, dict]:
    """Slurm's view of these jobs: {id: {"state", "reason", "node"}}; a finished job is absent."""
    if not slurm_ids:
        return {}
    out = _run(["squeue", "-h", "-j", ",".join(slurm_ids), "-o", "%i|%T|%r|%N"])
    found = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0] in slurm_ids:
            state, reason, node = parts[1], parts[2], parts[3]
            found[parts[0]] = {"state": state, "reason": "" if reason in ("None", "(null)") else reason, "node": node}
    return found


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
