"""What the app's keys do to the queue, as plain functions (run in a thread by the app).

They call :mod:`engine.jobs.worker` through the module so that tests can replace
``engine.jobs.worker.ensure_running`` and never start a daemon by accident.
"""

from __future__ import annotations

from pathlib import Path

from engine.jobs import worker as engine_worker
from engine.jobs.enqueue import enqueue_project
from engine.jobs.queue import Queue


def run_project(queue: Queue, folder: Path) -> str:
    """What ``copylora run`` does: queue the missing steps (A, B, merge), start the worker."""
    steps = enqueue_project(queue, folder)
    parts = []
    for step in steps:
        text = f"{step.what} {step.action}"
        if step.job is not None and step.action == "queued":
            text += f" #{step.job.id}"
        parts.append(text)
    name = Path(folder).name
    if not any(step.action == "queued" for step in steps):
        return f"{name}: nothing to do ({'; '.join(parts)})"
    return f"{name}: {', '.join(parts)}. {start_worker(queue.home)}"


def start_worker(home: Path | str | None) -> str:
    pid, started = engine_worker.ensure_running(home)
    return f"worker started (pid {pid})" if started else f"worker running (pid {pid})"
