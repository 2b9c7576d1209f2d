"""Queue commands: ``run``, ``queue``, ``cancel``/``retry``/``pause``/``resume``/``move``,
``logs``, ``save-now``/``sample-now`` and ``worker start|stop|status``.

They talk to the worker only through the queue database and files, like the app does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from copylora_tui.cli.exit_codes import EXIT_INTERRUPTED
from copylora_tui.core.formatting import job_loss_text, project_label
from engine.errors import CopyloraError, Problem, ValidationError
from engine.jobs.queue import ACTIVE, FINISHED, JobStatus


def register(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="queue what projects need (train A and B, merge, preview) in the background worker",
        description=(
            "Queue the missing steps of each project (class images, train A and B, merge, preview), skipping outputs that are up to date "
            "with the parameters, and start the background worker if it is not running. Jobs keep running when this "
            "terminal or SSH closes; watch them with `copylora queue`, `copylora logs JOB -f` or the app."
        ),
    )
    run.add_argument("paths", nargs="+", metavar="PROJECT", help="project folder, or the NAME of one under --projects")
    run.add_argument("--wait", action="store_true", help="show progress until these jobs finish (Ctrl-C leaves them running)")
    run.add_argument("--force", action="store_true", help="redo every step even if up to date (trainings start over)")
    run.add_argument("--max_steps", type=int, metavar="N", help="train N steps per side instead of the plan")
    run.add_argument("--no_worker", action="store_true", help="only queue; do not start the worker")
    run.add_argument("--json", action="store_true",
                     help="print what was queued as JSON (each step's action and job number; the worker's pid) on stdout; "
                          "with --wait, before waiting (the progress goes to stderr)")
    run.set_defaults(func=cmd_run)

    queue = commands.add_parser("queue", help="list jobs", description="List the jobs of the queue, running first.")
    queue.add_argument("--json", action="store_true", help="machine-readable output")
    queue.add_argument("--all", action="store_true", help="include every finished job (default: the last 20)")
    queue.set_defaults(func=cmd_queue)

    for name, helptext in (
        ("cancel", "cancel a job (a running training checkpoints first; `retry` resumes it)"),
        ("retry", "queue a failed or cancelled job again; it resumes from its checkpoint"),
        ("pause", "hold a queued job, or checkpoint and stop a running one"),
        ("resume", "queue a paused job again"),
        ("save-now", "ask a running training to write a checkpoint and a LoRA snapshot at its next step"),
        ("sample-now", "ask a running training for a preview grid (strength 1.0) at its next step"),
    ):
        cmd = commands.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        cmd.add_argument("job", type=job_number, metavar="JOB")
        cmd.set_defaults(func=cmd_job_action, action=name)

    move = commands.add_parser("move", help="reorder a waiting job", description="Move a queued or paused job among the waiting ones.")
    move.add_argument("job", type=job_number, metavar="JOB")
    move.add_argument("where", choices=("up", "down", "top", "bottom"))
    move.set_defaults(func=cmd_move)

    clean = commands.add_parser(
        "clean", help="remove finished jobs (and their logs) from the queue",
        description=("Remove finished jobs (done, failed, cancelled) from the queue, with their logs and progress curves: "
                     "a queue used for months holds thousands. Their outputs (LoRAs, grids) stay in the projects. A job "
                     "that a waiting job depends on stays."))
    clean.add_argument("--older_than", type=float, metavar="DAYS", help="only jobs that finished more than DAYS days ago")
    clean.add_argument("--done_only", action="store_true", help="only jobs that finished done (failed and cancelled ones stay, to retry)")
    clean.set_defaults(func=cmd_clean)

    logs = commands.add_parser("logs", help="print a job's log (-f to follow)",
                               description="Print a job's log file; -f follows it like tail -f until the job ends.")
    logs.add_argument("job", type=job_number, metavar="JOB")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=0, metavar="N", help="only the last N lines")
    logs.set_defaults(func=cmd_logs)

    worker = commands.add_parser(
        "worker", help="start, stop or show the background worker",
        description=("The worker runs queued jobs in child processes, detached from the terminal "
                     "(one per state folder: $COPYLORA_HOME or ~/.local/state/copylora)."),
    )
    worker.add_argument("action", choices=("start", "stop", "status"))
    worker.add_argument("--gpus", metavar="0,1", help="GPUs to use, one job per GPU at once (default: all)")
    worker.add_argument("--per_gpu", type=int, default=1, metavar="N", help="jobs per GPU at once (default 1)")
    worker.add_argument("--foreground", action="store_true", help="run in this terminal instead of detached")
    from engine.jobs.worker import add_executor_arguments

    add_executor_arguments(worker)
    worker.set_defaults(func=cmd_worker)


def job_number(text: str) -> int:
    """A job as the queue shows it: ``4`` or ``#4`` (a number SQLite can hold)."""
    value = text.strip().removeprefix("#")
    if not value.isdigit() or not 0 < int(value) < 2**63:
        raise argparse.ArgumentTypeError(f"not a job number: {text!r}")
    return int(value)


def _queue():
    from engine.jobs.queue import Queue

    return Queue()


def _job(queue, job_id: int):
    """The job a command names; one that does not exist is a usage error (exit 2), as a
    mistyped file is, not a failure of the work."""
    from copylora_tui.cli.main import UsageError
    from engine.jobs.queue import QueueError

    try:
        return queue.get(job_id)  # its only QueueError: "no job #N (see `copylora queue`)"
    except QueueError as exc:
        raise UsageError(str(exc)) from None


def _as_usage(call):
    """A request the job's state refuses (pause a paused job, retry a running one) is the
    command line to change, exit 2 like a job that does not exist; the queue says why."""
    from copylora_tui.cli.main import UsageError
    from engine.jobs.queue import QueueError, QueueWriteError

    try:
        return call()
    except QueueWriteError:  # the disk refused the write (full): nothing in the command line to change
        raise
    except QueueError as exc:
        raise UsageError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from engine.jobs.enqueue import enqueue_project
    from engine.project.folder import load_project

    if args.max_steps is not None and args.max_steps <= 0:
        raise ValidationError([Problem("--max_steps", f"must be greater than 0, got {args.max_steps}")])
    problems = []
    for path in args.paths:  # validate all first: nothing is queued if one is broken
        try:
            load_project(path)
        except ValidationError as exc:
            # (a problem already placed at the path itself, "no such project folder", is not placed there twice)
            problems += [Problem(f"{path}: {p.where}" if p.where and p.where != path else path, p.message) for p in exc.problems]
    if problems:
        raise ValidationError(problems)
    queue = _queue()
    new_jobs = []
    shown = []  # --json: every step as data
    for path in args.paths:
        steps = enqueue_project(queue, path, force=args.force, max_steps=args.max_steps)
        folder = str(load_project(path, decode_images=False).root) if args.json else ""  # as jobs name it
        width = max([8, *(len(step.what) for step in steps)])  # "train A+B" is one longer than the rest
        for step in steps:
            job = f"#{step.job.id}" if step.job else ""
            reason = f" ({step.reason})" if step.reason and step.action != "queued" else ""
            if args.json:
                shown.append({"project": path, "project_folder": folder,
                              "what": step.what, "action": step.action, "reason": step.reason or None,
                              "job": step.job.id if step.job else None})
            else:
                print(f"{path}: {step.what:<{width}} {step.action}{reason} {job}".rstrip())
            if step.job is not None:
                new_jobs.append(step.job.id)
    worker = None
    if new_jobs and not args.no_worker:
        from engine.jobs.worker import ensure_running

        pid, started = ensure_running()
        worker = {"pid": pid, "started": started}
    if args.json:  # the jobs to follow (`copylora queue --json`, `logs N`) and whether a worker will run them
        from engine.jobs.worker import worker_pid

        if worker is None and (pid := worker_pid(queue.home)):
            worker = {"pid": pid, "started": False}
        print(json.dumps({"steps": shown, "jobs": new_jobs, "worker": worker}, indent=1), flush=True)
    elif not new_jobs:
        print("nothing to do: every output is up to date (--force redoes them)")
    elif worker is not None:
        print(f"worker {'started' if worker['started'] else 'running'} (pid {worker['pid']}); follow with: copylora queue, "
              "copylora logs JOB -f, or copylora")
    if args.wait and new_jobs:
        return _wait(queue, new_jobs)
    return 0


NO_WORKER_GRACE_S = 5.0


def _wait(queue, job_ids: list[int]) -> int:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn

    from copylora_tui.cli.console import output_console
    from engine.jobs.worker import worker_pid
    from engine.train.progress import format_duration

    console = output_console(stderr=True)  # full lines when stderr is a file
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
    paused: list = []
    workerless_since: float | None = None
    no_worker = False
    try:
        with Progress(*columns, console=console) as bar:
            tasks = {}
            jobs = [queue.get(job_id) for job_id in job_ids]
            width = max([8, *(len(job.label) for job in jobs)])
            ids = max(len(f"#{job.id}") for job in jobs)  # #9 beside #10: the labels in one column
            for job in jobs:
                # escaped: Progress reads descriptions as markup, and names and errors are the user's
                tasks[job.id] = bar.add_task(escape(f"{f'#{job.id}':<{ids}} {job.label:<{width}} {project_label(job.project)}"), total=1.0,
                                             info="")
            while True:
                finished = 0
                for job_id, task in tasks.items():
                    job = queue.get(job_id)
                    info = job.status
                    if job.status is JobStatus.RUNNING and job.total:
                        eta = format_duration(job.eta_s if job.eta_s is not None else float("inf"))
                        info = f"{job.step}/{job.total} {job.it_per_s or 0:.1f} it/s ETA {eta}"
                        if job_loss_text(job):
                            info += f" loss {job_loss_text(job)}"
                    elif job.status is JobStatus.FAILED:
                        # one line in a bar's row ("1 problem:" then the problem, below, showed only the first)
                        info = f"[red]failed[/red]: {escape(' '.join((job.error or '').split()))}"
                    bar.update(task, completed=job.fraction, info=info)
                    finished += job.status.finished
                    if job.status is JobStatus.PAUSED:
                        paused.append(job)
                if finished == len(tasks) or paused:  # a paused job (and what waits for it) stays put until resumed
                    break
                # No worker (`run --no_worker --wait`, or it was stopped or died): nothing will
                # move, so say how to start one instead of waiting forever. A few seconds' grace:
                # a worker that is starting has not taken its lock yet.
                if worker_pid(queue.home):
                    workerless_since = None
                elif workerless_since is None:
                    workerless_since = time.monotonic()
                elif time.monotonic() - workerless_since > NO_WORKER_GRACE_S:
                    no_worker = True
                    break
                time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopped watching; the jobs go on in the background (copylora queue)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if no_worker:
        print("no worker is running, so the jobs stay queued: start one with `copylora worker start` "
              "(then follow them with `copylora queue`)", file=sys.stderr)
        return 1
    if paused:
        for job in paused:
            print(f"#{job.id} {job.label} of {project_label(job.project)} is paused: resume it with `copylora resume {job.id}`, "
                  f"then follow it with `copylora logs {job.id} -f` or `copylora queue`", file=sys.stderr)
        print("stopped waiting; the other jobs go on in the background", file=sys.stderr)
        return 1  # as for a failed or cancelled job: the outputs asked for are not all made
    failed = [queue.get(j) for j in job_ids if queue.get(j).status is not JobStatus.DONE]
    for job in failed:
        print(f"#{job.id} {job.label} of {project_label(job.project)}: {job.status}: {job.error or ''}", file=sys.stderr)
    return 1 if failed else 0


def cmd_queue(args: argparse.Namespace) -> int:
    from engine.jobs.queue import Queue, mark_interrupted
    from engine.jobs.worker import worker_pid

    queue = Queue(reading=True)
    if queue.read_only:  # a full disk: the jobs as last written, said so
        print(f"copylora: {queue.read_only}; the queue as last written:", file=sys.stderr)
    # The running and waiting jobs, and the newest 20 finished ones unless --all: read as that
    # (a queue of months holds thousands of finished jobs; comparing each job with every
    # finished one took 44 s for 9 300).
    with queue.reading():
        everything = queue.jobs(ACTIVE) + queue.jobs(FINISHED, limit=None if args.all else 20)
    jobs = mark_interrupted(everything, bool(worker_pid(queue.home)))
    if args.json:
        print(json.dumps({"worker_pid": worker_pid(queue.home), "jobs": [j.as_dict() for j in jobs]}, indent=1, default=str))
        return 0
    from copylora_tui.cli.queue_view import print_queue

    print_queue(jobs, worker_pid(queue.home), queue.home)
    if note := queue.full_disk_note(jobs):
        print(f"copylora: {note}", file=sys.stderr)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    import math

    if args.older_than is not None and not (math.isfinite(args.older_than) and args.older_than >= 0):
        raise ValidationError([Problem("--older_than", f"must be a number of days, 0 or more, got {args.older_than:g}")])
    queue = _queue()
    before = time.time() - args.older_than * 86400 if args.older_than is not None else None
    size = _file_size(queue.path)  # before the removal, whose own writes went to the write-ahead log ("was" read twice the file)
    removed, kept = queue.clean(finished_before=before, statuses=(JobStatus.DONE,) if args.done_only else FINISHED)
    which = "finished" if not args.done_only else "done"
    age = f" that finished more than {args.older_than:g} day{'s' * (args.older_than != 1)} ago" if args.older_than is not None else ""
    done = (f"removed {len(removed)} {which} job{'s' * (len(removed) != 1)}{age}, with their logs" if removed
            else f"no {which} jobs{age} to remove")
    print(done + (f"; kept {kept} that waiting jobs depend on" if kept else ""))
    if removed:
        from copylora_tui.core.formatting import size_text

        if queue.compact():
            print(f"the queue file {queue.path} is {size_text(_file_size(queue.path))} now (was {size_text(size)})")
    return 0


def _file_size(path) -> int:
    """The queue file's size with its write-ahead log (where SQLite's newest pages are)."""
    total = 0
    for name in (str(path), f"{path}-wal"):
        try:
            total += os.path.getsize(name)
        except OSError:
            pass
    return total


def cmd_job_action(args: argparse.Namespace) -> int:
    from engine.jobs.queue import JobStatus

    queue = _queue()
    job = _job(queue, args.job)
    if args.action in ("retry", "resume") and job.status is JobStatus.RUNNING:
        from copylora_tui.cli.main import UsageError
        from engine.jobs.queue import mark_interrupted
        from engine.jobs.worker import worker_pid

        # as `queue` shows it "interrupted" ("is running" read as a contradiction); a job on Slurm, or
        # whose process outlived its worker, runs on
        if mark_interrupted([job], bool(worker_pid(queue.home)))[0].interrupted:
            raise UsageError(f"job #{args.job} was interrupted (no worker runs): `copylora worker start` continues it from its "
                             "checkpoint")
    action = {"cancel": queue.cancel, "retry": queue.retry, "pause": queue.pause, "resume": queue.resume}.get(args.action)
    message = _as_usage(lambda: action(args.job) if action else queue.request(args.job, args.action))
    print(f"#{args.job}: {message}")
    if args.action in ("retry", "resume"):
        from engine.jobs.worker import worker_pid

        if not worker_pid(queue.home):
            print("the worker is not running: start it with `copylora worker start`")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    queue = _queue()
    _job(queue, args.job)
    print(f"#{args.job}: {_as_usage(lambda: queue.move(args.job, args.where))}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise ValidationError([Problem("--lines", f"must be 0 (the whole log) or more, got {args.lines}")])
    queue = _queue()
    job = _job(queue, args.job)
    path = queue.log_path(job.id)
    if not path.exists():
        print(f"#{job.id} has no log yet ({job.status})", file=sys.stderr)
        if not args.follow:
            return 0
    from copylora_tui.cli.terminal_text import LogWriter, copy_range, last_lines_start

    out = LogWriter(sys.stdout)  # on a terminal, a log's escape sequences are not obeyed
    position = 0
    if path.exists():
        with open(path, "rb") as handle:
            position = os.fstat(handle.fileno()).st_size
            copy_range(handle, last_lines_start(handle, position, args.lines) if args.lines else 0, position, out)
    if not args.follow:
        out.write(b"", final=True)
        return 0
    from engine.jobs.worker import worker_pid

    if job.status.waiting and worker_pid(queue.home) is None and not job.slurm:
        # -f would wait for a job that nothing runs: say so once, and keep following
        print(f"#{job.id} is {job.status} and no worker is running: it waits until `copylora worker start`", file=sys.stderr)
    try:
        while True:
            if path.exists():
                size = path.stat().st_size
                if size < position:  # trimmed by the job: start over from its new start
                    position = 0
                if size > position:
                    with open(path, "rb") as handle:
                        copy_range(handle, position, size, out)
                    position = size
            if queue.get(job.id).status not in (JobStatus.QUEUED, JobStatus.RUNNING) and (not path.exists() or path.stat().st_size == position):
                out.write(b"", final=True)
                return 0
            time.sleep(0.25)
    except KeyboardInterrupt:
        return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from engine.jobs.queue import Queue
    from engine.jobs.worker import Worker, last_worker_error, start_detached, stop_worker, worker_pid

    if args.action == "start":
        from engine.errors import Problem, ValidationError
        from engine.jobs.worker import executor_argv, gpus_problem, slurm_options

        problems = [Problem("--gpus", why)] if (why := gpus_problem(args.gpus)) else []
        if args.per_gpu < 1:
            problems.append(Problem("--per_gpu", f"must be 1 or more, got {args.per_gpu}"))
        if problems:
            raise ValidationError(problems)

        home = Queue().home
        options = slurm_options(home, args)  # a bad [worker] file or option fails here, not in the detached worker
        if options is not None:
            from engine.jobs.slurm import SlurmError, test_options

            try:  # sbatch --test-only: a partition Slurm has not failed every queued job, one by one, after a "started"
                test_options(options)
            except SlurmError as exc:
                if not exc.temporary:
                    raise ValidationError([Problem("--executor slurm", f"Slurm refuses these settings: {exc}")]) from None
                print(f"copylora: could not ask Slurm about these settings now ({exc}); starting all the same", file=sys.stderr)
        if args.foreground:
            return Worker(None, args.gpus, args.per_gpu, slurm=options).run()
        from engine.jobs.worker import WorkerRunning

        try:
            pid = start_detached(None, args.gpus, args.per_gpu, executor=executor_argv(args))
        except WorkerRunning as running:  # what was asked holds: a worker runs (`&&` after it goes on)
            print(f"{running}; it keeps its own settings (`copylora worker stop` first to start one with others)")
            return 0
        where = f"Slurm ({' '.join(options.arguments())})" if options is not None else "here"
        print(f"worker started (pid {pid}), jobs run {where}; log: {home / 'worker.log'}")
        return 0
    if args.action == "stop":
        reader = None
        try:  # its slots: ["slurm"] with that executor (read only: a full disk must not keep a worker from stopping)
            reader = Queue(reading=True)
            on_slurm = "slurm" in str((reader.worker_row() or {}).get("gpus", ""))
            running = [job.id for job in reader.jobs((JobStatus.RUNNING,))]
        except CopyloraError:
            on_slurm, running = False, []
        # the wait below is up to two minutes (a checkpoint on a full disk waits for room); no worker: no wait
        if running and not on_slurm and worker_pid(reader.home if reader is not None else None):
            print(f"stopping the worker: {len(running)} running job(s) write their checkpoint first (up to 2 minutes)…", flush=True)
        pid = stop_worker()
        if pid is None:
            print("no worker was running")
            return 0
        if on_slurm or not running or reader is None:
            after = ("its Slurm jobs keep running; the next worker follows them" if on_slurm else
                     "no job was running" if reader is not None else "running jobs checkpointed and queued first")
            print(f"worker {pid} stopped; {after}")
            return 0
        print(f"worker {pid} stopped")
        from engine.jobs.procs import alive

        for job_id in running:  # what became of each: a checkpoint a full disk refused failed its job ("queued" it said)
            try:
                job = reader.get(job_id)
            except CopyloraError:
                continue
            label = f"#{job.id} {job.label} of {project_label(job.project)}"
            if job.status is JobStatus.QUEUED:
                print(f"  {label}: checkpointed at step {job.step}, queued first (the next worker resumes it)")
            elif job.status is JobStatus.RUNNING and job.pid is not None and alive(job.pid, job.pid_start):
                print(f"  {label}: still stopping (its checkpoint is being written); `copylora queue` shows when it is queued")
            elif job.status is JobStatus.RUNNING:  # the worker ended it past its grace, before it could record its end
                print(f"  {label}: interrupted (it did not stop in time); the next worker resumes it from its last checkpoint")
            else:
                print(f"  {label}: {job.status}" + (f": {job.error}" if job.error else ""))
        return 0  # the worker stopped, as asked; what became of each job is said above
    queue = Queue()
    pid = worker_pid(queue.home)
    row = queue.worker_row() or {}
    if not pid:
        print(f"worker: not running (state: {queue.home}); start it with `copylora worker start`")
        if error := last_worker_error(queue.home, row.get("started_at")):
            print(f"the last worker stopped on an error: {error} (see {queue.home / 'worker.log'})")
        return 3  # like `systemctl status`: scripts can test it
    running = queue.jobs((JobStatus.RUNNING,))
    beat = time.time() - row["heartbeat"] if row.get("heartbeat") else None
    print(f"worker: running, pid {pid}, slots {row.get('gpus', '?')}, heartbeat {beat:.1f} s ago" if beat is not None else f"worker: running, pid {pid}")
    if note := queue.full_disk_note(running):  # the heartbeat and the steps below stopped with the disk
        print(f"  {note}")
    from engine.jobs.worker import RESTART_HINT, worker_code_change

    if changed := worker_code_change(queue.home, pid):
        print(f"  it runs copylora's code as it was when it started: {changed} has changed since (an update?); {RESTART_HINT}")
    from engine.jobs.slurm import status_text as slurm_status
    from engine.jobs.state_home import worker_log
    from engine.jobs.warm_client import last_said

    warm = last_said(worker_log(queue.home), pid)
    if warm:
        print(f"  {warm}")
    for job in running:
        where = slurm_status(job.slurm) if job.slurm else f"pid {job.pid}" if job.pid else "starting"  # "Slurm 32 RUNNING on gpu07" ("pid None" it said)
        print(f"  #{job.id} {job.label} of {project_label(job.project)}: step {job.step}/{job.total}, {where}")
    for gpu in queue.latest_gpus():
        print(f"  GPU {gpu['gpu']} {gpu['name']}: {gpu['used_mb']:.0f}/{gpu['total_mb']:.0f} MiB, {gpu['util'] or 0:.0f} %, {gpu['temp'] or 0:.0f} °C")
    return 0
