"""The files between a job that runs on another host (a Slurm compute node) and the worker
that submitted it.

SQLite's locking is not safe on a network filesystem, and a cluster's shared folder is one. So
a job run elsewhere never opens the queue database: the worker writes the job's record into the
job's own folder (``HOME/channels/N/job.json``), the runner appends what it would have written
to the queue to ``events.jsonl`` there (progress a few times a second, the start step, the end,
GPU samples of its node), and reads save-now/preview-now requests from ``requests.json``. The
worker, on the submit host, reads the new lines and writes them into the queue
(:func:`ingest`): the app, ``copylora queue`` and ``logs -f`` see a remote job as a local one.
Each line is one JSON object written by one ``write`` to an ``O_APPEND`` file, so a reader
never sees half of one (it skips an unfinished last line until it is complete).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from engine.errors import CopyloraError
from engine.jobs.queue import Job, JobStatus, Queue, QueueWriteError
from engine.jobs.state_home import channel_dir

EVENTS, JOB, REQUESTS = "events.jsonl", "job.json", "requests.json"


def open_channel(home: Path, job: Job) -> Path:
    """A fresh channel for one run of ``job`` (an earlier run's events are gone: they were ingested)."""
    folder = channel_dir(home, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (EVENTS, REQUESTS):
        (folder / name).unlink(missing_ok=True)
    temporary = folder / f".{JOB}.tmp"
    temporary.write_text(json.dumps(job.as_dict()), encoding="utf-8")
    os.replace(temporary, folder / JOB)
    (folder / EVENTS).touch()
    return folder


def send_requests(folder: Path, requests: dict[str, bool]) -> None:
    """Save-now / preview-now for the remote runner (it reads and removes the file)."""
    temporary = folder / f".{REQUESTS}.tmp"
    temporary.write_text(json.dumps(requests), encoding="utf-8")
    os.replace(temporary, folder / REQUESTS)


class ChannelQueue:
    """What the runner calls on the queue, written to its job's channel instead."""

    remote = True  # the runner samples its node's GPUs into the channel (the worker's NVML sees another host)

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _append(self, event: dict[str, Any]) -> None:
        line = (json.dumps({**event, "t": time.time()}) + "\n").encode()
        fd = os.open(self.folder / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def get(self, job_id: int) -> Job:
        data = json.loads((self.folder / JOB).read_text(encoding="utf-8"))
        data["status"] = JobStatus(data["status"])
        known = {f.name for f in fields(Job)} - {"interrupted"}  # a key a later copylora wrote is left out
        return Job(**{key: value for key, value in data.items() if key in known})

    def report_progress(self, job_id: int, p: Any, *, point: bool) -> None:
        self._append({"event": "progress", "point": point, "progress": asdict(p)})

    def take_requests(self, job_id: int) -> dict[str, bool]:
        path = self.folder / REQUESTS
        try:
            requests = json.loads(path.read_text(encoding="utf-8"))
            path.unlink()
        except (OSError, ValueError):
            return {}
        return requests if isinstance(requests, dict) else {}

    def set_start_step(self, job_id: int, step: int, total: int) -> None:
        self._append({"event": "start_step", "step": step, "total": total})

    def note_params(self, job_id: int, **more: Any) -> None:
        self._append({"event": "params", "params": more})

    def finish(self, job_id: int, status: JobStatus | str, *, error: str | None = None, artifacts: dict | None = None) -> None:
        self._append({"event": "finish", "status": JobStatus(status).value, "error": error, "artifacts": artifacts})

    def record_gpus(self, samples: list[dict]) -> None:
        self._append({"event": "gpus", "samples": samples})

    def exited(self, code: int) -> None:
        """The runner's exit code, as the last line (3: stopped on request, with a checkpoint)."""
        self._append({"event": "exit", "code": code})


def ingest(queue: Queue, job_id: int, folder: Path, offset: int) -> tuple[int, list[dict]]:
    """Write the channel's new complete lines from byte ``offset`` into the queue; (the new
    offset, the events read)."""
    from engine.train.progress import Progress

    try:
        with open(folder / EVENTS, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return offset, []
    end = data.rfind(b"\n") + 1  # an unfinished last line waits for its end
    events = []
    for line in data[:end].splitlines():
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("not an event")
            kind = event.get("event")
            if kind == "progress":
                fields = Progress.__dataclass_fields__
                progress = Progress(**{k: v for k, v in event["progress"].items() if k in fields})
                queue.report_progress(job_id, progress, point=bool(event.get("point")))
            elif kind == "start_step":
                queue.set_start_step(job_id, int(event["step"]), int(event["total"]))
            elif kind == "finish":
                queue.finish(job_id, JobStatus(event["status"]), error=event.get("error"), artifacts=event.get("artifacts"))
            elif kind == "params" and isinstance(event.get("params"), dict):
                queue.note_params(job_id, **event["params"])
            elif kind == "gpus" and event.get("samples"):
                queue.record_gpus(event["samples"])
            elif kind == "exit":
                event["code"] = int(event.get("code", 1))
        except QueueWriteError:  # the queue's disk is full: the worker waits, and reads these lines again
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, CopyloraError, sqlite3.InterfaceError,
                sqlite3.ProgrammingError):
            # A line of another shape (a damaged disk, a hand's edit, another version's runner;
            # a step of 1e999, a finish "running" the queue refuses): skipped. It ended the
            # worker, and every worker after it, reading it again.
            continue
        events.append(event)
    return offset + end, events
