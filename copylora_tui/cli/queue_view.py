"""Rich table for ``copylora queue``."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from copylora_tui.cli.console import output_console
from copylora_tui.core.formatting import STATUS_STYLE, bar, job_copy_text, job_loss_text, project_label, slurm_pending
from engine.jobs.queue import JobStatus
from engine.jobs.slurm import status_text as slurm_status

PROJECT_LEAST = 8  # the project column's least width: the names are cut before any other column goes


def _table(jobs, *, width: int, copies: bool, speed: bool, live: bool, on_slurm: bool, project_cut: int | None = None,
           project_room: int | None = None) -> Table:
    from copylora_tui.core.formatting import rate_text
    from engine.train.progress import format_duration

    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = [("job", "right"), ("project", "left"), ("task", "left"), ("status", "left"), ("progress", "left")]
    columns += ([("speed", "right")] if speed else []) + ([("ETA", "right")] if live else [])
    columns += [("loss", "right")]
    columns += [("copy", "right")] if copies else []
    columns += [("slurm", "left")] if on_slurm else []
    for column, justify in columns:
        if column == "project":
            table.add_column(column, justify=justify, no_wrap=True, overflow="ellipsis", min_width=PROJECT_LEAST, max_width=project_room)
        else:
            table.add_column(column, justify=justify, no_wrap=True, min_width=len(column))
    for job in jobs:
        progress = f"{bar(job.fraction, width)} {job.step or 0}/{job.total}".strip() if job.total else ""
        pending = slurm_pending(job)
        eta = format_duration(job.eta_s) if job.live and not pending and job.eta_s is not None else ""
        rate = rate_text(job.it_per_s) if job.live and not pending and job.it_per_s else ""  # an earlier run's: not now
        style = STATUS_STYLE.get(job.shown_status) or "default"
        status = "pending" if pending else job.shown_status  # as the app says it
        cells = [f"#{job.id}", escape(project_label(job.project)[:project_cut]), escape(job.label), f"[{style}]{status}[/]", progress]
        cells += ([rate] if speed else []) + ([eta] if live else [])
        cells += [job_loss_text(job)] + ([job_copy_text(job)] if copies else [])
        cells += [escape(slurm_status(job.slurm)) if job.status is JobStatus.RUNNING else ""] if on_slurm else []
        table.add_row(*cells)
    return table


def print_queue(jobs, worker_pid: int | None, home: Path, console: Console | None = None) -> None:
    from engine.jobs.room_wait import room_wait, room_wait_text
    from engine.jobs.state_home import job_log

    console = console or output_console()
    state = f"worker running (pid {worker_pid})" if worker_pid else "[yellow]worker not running[/yellow] (copylora worker start)"
    from engine.jobs.worker import last_worker_error

    if not worker_pid and (error := last_worker_error(home)):
        state += f"; it stopped on an error: {escape(error)} (worker.log)"
    # What the user named (projects, folders) and what jobs said (errors) is escaped: printed as
    # markup, "[train] caption" lost its "[train]" and a "[/]" in a path ended the command.
    console.print(f"{state}  ·  {escape(str(home))}")
    if not jobs:
        console.print("no jobs; queue a project with: copylora run projects/NAME")
        return
    # Every column but the project's keeps its width (a job id or a loss cut to "#…"/"0.74…"
    # says nothing); speed and ETA only while something runs. Where the whole does not fit the
    # terminal, a shorter bar, then no copy column, then no speed (Rich squeezed every column
    # instead: at 80 columns "192/1…", "train A…", a copy header "c"; at 60 no job number, the
    # one thing cancel, retry and logs need).
    live = any(job.live for job in jobs)
    copies = any(job_copy_text(job) for job in jobs)  # how well each LoRA copies its teacher (engine.train.copy_check)
    # the Slurm executor (engine.jobs.slurm): Slurm's own word on each running job (a finished
    # one keeps its last, "ENDED": the column stayed for good)
    on_slurm = any(job.slurm and job.status is JobStatus.RUNNING for job in jobs)
    fits = [dict(width=12, copies=copies, speed=live), dict(width=8, copies=copies, speed=live), dict(width=8, copies=False, speed=live),
            dict(width=8, copies=False, speed=False), dict(width=5, copies=False, speed=False), dict(width=0, copies=False, speed=False)]
    for shape in fits:
        # measured with the project cut to its least (it shrinks, ending in "…"): a long name
        # measured whole made every shape "too wide", and the job number went again
        measured = _table(jobs, live=live, on_slurm=on_slurm, project_cut=PROJECT_LEAST, **shape)
        natural = Measurement.get(console, console.options.update_width(10_000), measured).maximum  # its width, uncut
        if natural <= console.width:
            break
    # the project's column takes what the others leave (Rich, left to itself, cut every column)
    table = _table(jobs, live=live, on_slurm=on_slurm, project_room=max(PROJECT_LEAST, console.width - natural + PROJECT_LEAST), **shape)
    console.print(table)
    for job in jobs:  # errors below the table, whole: they are the part worth reading
        if job.status is JobStatus.FAILED and job.error:
            console.print(f"[red]#{job.id} failed:[/red] {escape(job.error)}", highlight=False)
        elif job.status is JobStatus.QUEUED and job.error and job.error.startswith(("interrupted", "not submitted yet")):  # Slurm: again, or waiting for it
            console.print(f"[yellow]#{job.id} {escape(job.error)}[/yellow]", highlight=False)
        elif job.interrupted:
            console.print(f"[yellow]#{job.id} interrupted[/yellow] at step {job.step or 0}: the worker stopped while it ran; "
                          "`copylora worker start` resumes it from its newest checkpoint", highlight=False)
        elif job.status is JobStatus.RUNNING and not job.slurm and (folder := room_wait(job_log(home, job.id))):
            console.print(f"[yellow]#{job.id} {escape(room_wait_text(folder))}[/yellow]", highlight=False)
