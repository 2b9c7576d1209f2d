"""One job, in its own process: ``python -m engine.jobs.runner --home H --job N``.

The worker starts one of these per job, so an out-of-memory kill or a crash in CUDA takes down
the job, not the daemon. stdout/stderr go to the job's log file (the worker opened it); the
live progress goes to the queue database a few times a second, never once per step.

Exit codes: 0 done, 1 failed (the error is in the database and the log), 3 stopped on
request (SIGTERM: cancel, pause, worker shutdown) after writing a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from typing import Any, Callable

from engine.errors import CopyloraError
from engine.jobs.log_line import log_line
from engine.jobs.queue import MAX_POINTS, TWIN, Job, JobStatus, Queue, QueueWriteError, artifacts_text
from engine.threads import configure_threads, govern

EXIT_DONE, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3
WRITE_INTERVAL_S = 0.25  # at most 4 progress writes per second, whatever the step rate
LOG_LIMIT = 8 * 2**20  # a job log is trimmed to its newest half beyond this
RECORD_RETRY_S = 10.0  # a result the queue's full disk refused: tried again this often


class Stopped(Exception):
    pass


def log(line: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    log_line(f"{stamp} {line}")
    _trim_log()


def _trim_log() -> None:
    """Keep the log bounded without reopening it: the fd is O_APPEND, so truncating in place and
    writing the tail back keeps every writer (ours, C libraries') appending to the same file."""
    try:
        fd = sys.stdout.fileno()
        size = os.fstat(fd).st_size
        if size <= LOG_LIMIT:
            return
        with open(f"/proc/self/fd/{fd}", "rb") as current:
            current.seek(size - LOG_LIMIT // 2)
            tail = current.read()
        os.ftruncate(fd, 0)
        os.write(fd, b"[... older lines trimmed ...]\n" + tail[tail.find(b"\n") + 1 :])
    except (OSError, ValueError):
        pass


class ProgressWriter:
    """Throttles trainer progress into the queue, and carries requests back to the trainer."""

    def __init__(self, queue: Queue | Any, job_id: int, total: int) -> None:
        self.queue, self.job_id = queue, job_id
        self.stride = max(1, total // MAX_POINTS)
        self.last_write = 0.0
        self.last_gpus = 0.0
        self.last_point = -1
        self.save_pending = False
        self.sample_pending = False
        self.writes = 0
        self.write_seconds = 0.0
        self.unwritten = None  # the newest progress the throttle held back

    def __call__(self, p) -> None:
        govern()
        now = time.monotonic()
        checked = getattr(p, "copy_step", None) == p.step  # a copy check just now: its figure is kept as a point
        point = p.step - self.last_point >= self.stride or p.step == p.total or checked
        if now - self.last_write < WRITE_INTERVAL_S and p.step != p.total and not checked:
            self.unwritten = p
            return
        self.unwritten = None
        started = time.perf_counter()
        self.queue.report_progress(self.job_id, p, point=point)
        if point:
            self.last_point = p.step
        if getattr(self.queue, "remote", False) and now - self.last_gpus >= 1.0:  # on a Slurm node: its GPUs, for the app
            from engine.jobs.gpu import sample_gpus

            samples = sample_gpus()
            if samples:
                self.queue.record_gpus(samples)
            self.last_gpus = now
        requests = self.queue.take_requests(self.job_id)
        self.save_pending = self.save_pending or requests.get("save_now", False)
        self.sample_pending = self.sample_pending or requests.get("sample_now", False)
        self.last_write = now
        self.writes += 1
        self.write_seconds += time.perf_counter() - started

    def flush(self) -> None:
        """Write the progress the throttle held back: a training stopped (paused, cancelled) at
        step 86 showed 85 in the queue, the last step written, while its checkpoint was 86's."""
        if self.unwritten is not None:
            p, self.unwritten = self.unwritten, None
            self.queue.report_progress(self.job_id, p, point=True)

    def take_save(self) -> bool:
        pending, self.save_pending = self.save_pending, False
        return pending

    def take_sample(self) -> bool:
        pending, self.sample_pending = self.sample_pending, False
        return pending


def job_project(job: Job, **options):
    """The job's project, loaded (and checked) as it is now. A folder moved or removed since the
    job was queued said only "no such project folder", as if the path had been mistyped."""
    from engine.project.folder import load_project

    if not os.path.isdir(job.project):
        raise CopyloraError(f"the project folder {job.project} is gone (moved or removed since this job was queued): "
                            "`copylora run` the project where it is now")
    return load_project(job.project, **options)


def _steps_after(writer: ProgressWriter, offset: int, total: int):
    """Progress of a side trained after ``offset`` steps of another, as the job's: its steps
    counted on from them, out of ``total``, and the ETA of what is left of both."""
    import math

    def on_progress(p) -> None:
        step = offset + p.step
        eta = (total - step) / p.it_per_s if p.it_per_s > 0 else math.inf
        copy_step = None if p.copy_step is None else offset + p.copy_step
        writer(replace(p, step=step, total=total, eta_s=eta, copy_step=copy_step))

    return on_progress


def _start_after(queue: Queue, job_id: int, offset: int, total: int) -> Callable[[int, int], None]:
    """Where a side trained after ``offset`` steps of another starts, as the job's step: only
    where it resumes (B from its first step said "resumed at step 200", A's steps)."""

    def on_start(step: int, _side_total: int) -> None:
        if step or not offset:
            queue.set_start_step(job_id, offset + step, total)

    return on_start


def run_train(queue: Queue, job: Job, stop: dict) -> dict:
    from engine.project.pair_route import PAIR
    from engine.project.plan import make_plan
    from engine.train.controls import TrainControls
    from engine.train.trainer import train
    from engine.train.twin import TwinNotPossible, train_twin

    plan = make_plan(job_project(job), max_steps=job.params.get("max_steps"))
    assert job.side is not None, "a training job trains a side (or both: TWIN)"
    if (job.side == PAIR) != (plan.trained == (PAIR,)):  # the route changed since the job was queued
        from engine.train.results import TrainingError

        raise TrainingError(f"the project's route is now {plan.project.info.method}, which trains "
                            f"{'one LoRA on the pair' if plan.trained == (PAIR,) else 'A and B'}: this job was queued for the "
                            "other kind; run the project again (copylora run) to queue its own")
    total = plan.side("a" if job.side == TWIN else job.side).total_steps
    # The settings this run trains with, for `copylora run` to tell a run of settings changed
    # since (it reused such a job: its LoRAs came out stale, and `run --wait` said done).
    from engine.project.provenance import training_fingerprint

    queue.note_params(job.id, fingerprints={side: training_fingerprint(plan, side) for side in (("a", "b") if job.side == TWIN else (job.side,))})
    writer = ProgressWriter(queue, job.id, total)
    # A restart (`run --force`) holds until a side's old checkpoints are gone, which is when its
    # training starts (noted per side then): a retry or crash recovery after that resumes. Held
    # by the first attempt alone, a worker killed while the base model loaded had the second
    # resume the old checkpoints: the job said done, and nothing was trained afresh.
    restarted = set(job.params.get("restarted") or ())
    # A job an earlier copylora queued has no "restarted" (enqueue notes [] now): it restarts
    # until its training has started (start_step is noted then, by every copylora). Read as none
    # restarted, a paused `run --force` job resumed after an update threw its checkpoints away.
    queued_before = "restarted" not in job.params

    def fresh(*sides: str) -> bool:
        if queued_before:
            return bool(job.params.get("restart")) and job.start_step is None
        return bool(job.params.get("restart")) and not set(sides) <= restarted

    def reset(sides: tuple[str, ...], then: Callable[[int, int], None]) -> Callable[[int, int], None]:
        def on_start(step: int, side_total: int) -> None:
            then(step, side_total)
            if job.params.get("restart") and not set(sides) <= restarted:
                restarted.update(sides)
                queue.note_params(job.id, restarted=sorted(restarted))

        return on_start

    sides = ("a", "b") if job.side == TWIN else (job.side,)
    controls = TrainControls(
        on_progress=writer,
        should_stop=lambda: stop["asked"],
        save_requested=writer.take_save,
        sample_requested=writer.take_sample,
        on_start=reset(sides, lambda step, total: queue.set_start_step(job.id, step, total)),
    )
    if job.side == TWIN:
        try:
            results = train_twin(plan, resume=not fresh("a", "b"), controls=controls, log=log)
        except TwinNotPossible as exc:  # settings changed since it was queued, or the sides resume at different steps
            log(f"{exc}; training A, then B")
            results = {}
            both = plan.side("a").total_steps + plan.side("b").total_steps
            writer.stride = max(1, both // MAX_POINTS)  # the curve's points over both sides' steps, as many as one side's
            for side, offset in (("a", 0), ("b", plan.side("a").total_steps)):
                # One bar over both sides: each side's own steps showed as the job's, so the bar
                # went back to 0 at B, and the ETA read 00:00 at A's end with all of B to train.
                on_side = replace(controls, on_progress=_steps_after(writer, offset, both),
                                  on_start=reset((side,), _start_after(queue, job.id, offset, both)))
                results[side] = train(plan, side, resume=not fresh(side), controls=on_side, log=log)
                writer.flush()
                if results[side].status == "stopped":
                    break
    elif job.side == PAIR:  # the one-LoRA routes (addift, slider)
        from engine.train.pair_training import train_pair

        results = {PAIR: train_pair(plan, resume=not fresh(PAIR), controls=controls, log=log)}
    else:
        results = {job.side: train(plan, job.side, resume=not fresh(job.side), controls=controls, log=log)}
    writer.flush()
    seconds = max(r.seconds for r in results.values())
    if writer.writes:
        log(f"progress writes: {writer.writes}, {1000 * writer.write_seconds / writer.writes:.2f} ms each, "
            f"{100 * writer.write_seconds / max(seconds, 1e-9):.2f} % of the run")
    stopped = next((r for r in results.values() if r.status == "stopped"), None)
    if stopped is not None:
        raise Stopped(f"stopped at step {stopped.step}")
    first = next(iter(results.values()))
    artifacts: dict[str, str | int | float]
    if job.side == TWIN:
        artifacts = {"lora_a": str(results["a"].lora_path), "lora_b": str(results["b"].lora_path)}
    else:
        artifacts = {"lora": str(first.lora_path), "state": str(first.state_path)}
    artifacts.update(steps=first.step, seconds=round(seconds, 2), optimizer=first.optimizer)
    copied = [f"{side.upper()} at step {r.copied_at}" for side, r in results.items() if r.copied_at is not None]
    if copied:  # stop_when_copied ended these sides early: their LoRAs are of that step
        artifacts["copied"] = ", ".join(copied)
    if first.vram_peak_mb is not None:
        artifacts["vram_peak_mb"] = round(max(r.vram_peak_mb or 0 for r in results.values()))
    return artifacts


STALE_TEMP_S = 600.0  # a merge's temporary file this old is a killed merge's, not one being written


def run_merge(queue: Queue, job: Job, stop: dict) -> dict:
    """The project's result: the B − A merge, or the differential route's B (a one-LoRA route's LoRA) re-ranked."""
    from engine.merge.project_result import describe, make_result
    from engine.project.plan import make_plan
    from engine.train.progress import Progress

    plan = make_plan(job_project(job))
    log(describe(plan))
    # what a merge killed midway left beside the result: old enough to be no live writer's
    # (a `copylora merge --project` typed meanwhile holds no lock the job could ask)
    from engine.files import remove_stale_temps

    merged = plan.merged_path
    for name in (merged.name, merged.with_suffix(".stats.json").name):
        remove_stale_temps(merged.parent, name, older_than_s=STALE_TEMP_S)

    def progress(done: int, total: int, _name: str) -> None:
        govern()
        if stop["asked"]:
            raise Stopped("stopped during the merge")
        if done == total or done % 25 == 0:
            queue.report_progress(job.id, Progress(done, total, float("nan"), float("nan"), 0.0, 0.0, 0.0, 0.0), point=False)

    lora, stats, result = make_result(plan, progress=progress)
    for note in result.notes:
        log(f"note: {note}")
    kept = [s.energy_kept for s in result.stats]
    log(f"wrote {lora} in {result.seconds:.2f} s; energy kept: mean {sum(kept) / len(kept):.4f}, min {min(kept):.4f}")
    return {"lora": str(lora), "stats": str(stats), "seconds": round(result.seconds, 2), "device": result.device}


def _images_progress(queue: Queue, job: Job, stop: dict):
    from engine.train.progress import Progress, ProgressMeter

    meter: dict = {}

    def progress(done: int, total: int) -> None:
        govern()
        if stop["asked"]:
            raise Stopped(f"stopped after {done} of {total} images")
        if "m" not in meter:  # from the first picture done: timed from its own start it read 56 420 it/s at 1 of 2
            meter["m"] = ProgressMeter(total, start_step=done)
        p = meter["m"].update(done, float("nan"), 0.0)
        queue.report_progress(job.id, Progress(done, total, float("nan"), float("nan"), 0.0, p.it_per_s, p.eta_s, p.elapsed_s), point=False)

    return progress


def run_sample(queue: Queue, job: Job, stop: dict) -> dict:
    """The strength grid of the project's merged LoRA (what `copylora run` ends with)."""
    import torch

    from engine.devices import resolve_device
    from engine.models.loading import load_base_model
    from engine.project.outputs import Check, Grid
    from engine.project.plan import is_differential, make_plan
    from engine.train.sample import preview_settings, route_check, sample_lora

    plan = make_plan(job_project(job))
    project = plan.project
    device = resolve_device(None)
    settings, note = preview_settings(project.sample, device, plan.side(plan.trained[0]).params.clip_skip)
    if note:
        log(note)
    model = load_base_model(project.base_model_path(), project.info.model_family,
                            dtype=torch.float16 if device.startswith("cuda") else torch.float32, device=device)
    grid = Grid(plan)
    log(f"sampling {plan.merged_path.name} at strengths {settings.strengths}, seed {settings.seed}, {settings.steps} steps")
    started = time.perf_counter()
    progress = _images_progress(queue, job, stop)
    grid_count = len(settings.prompts) * len(settings.strengths)
    total = grid_count + (Check.IMAGES if is_differential(project) else 0)
    record = grid.record()  # what `copylora run` compares to decide that the preview is up to date
    path = sample_lora(model, plan.merged_path, settings, grid.path, model_name=project.info.base_model,
                       progress=lambda done, _total: progress(done, total), extra=record, log=log)
    artifacts = {"grid": str(path)}
    if is_differential(project):
        caption = plan.side("b").params.caption if isinstance(plan.side("b").params.caption, str) else ""
        check = route_check(model, plan.side("a").lora_path, project.b.base_weights_multiplier, plan.merged_path,
                            plan.side("b").images[0].path, settings, Check(plan).path, model_name=project.info.base_model,
                            progress=lambda done, _total: progress(grid_count + done, total), extra=record, log=log,
                            caption=caption if "[filewords]" not in caption else "")
        log(f"wrote {check}: A with the result should draw picture B")
        artifacts["check"] = str(check)
    seconds = time.perf_counter() - started
    log(f"wrote {path} in {seconds:.1f} s")
    return {**artifacts, "seconds": round(seconds, 2), "device": device}


def run_reg(queue: Queue, job: Job, stop: dict) -> dict:
    """Generate the class images a project's [reg] asks for and its folder lacks."""
    from engine.project.plan import make_plan
    from engine.train.class_images import generate_class_images

    project = job_project(job, check_files=False)
    written = generate_class_images(project, progress=_images_progress(queue, job, stop), log=log)
    make_plan(project)
    return {"reg_images": [str(p) for p in written]}


RUNNERS = {"train": run_train, "merge": run_merge, "sample": run_sample, "reg": run_reg}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.runner")
    parser.add_argument("--home", required=True)
    parser.add_argument("--job", required=True, type=int)
    parser.add_argument("--channel", help="run on another host: read the job from, and report to, this folder (engine.jobs.channel)")
    args = parser.parse_args(argv)

    from engine.jobs.procs import die_with_parent, name_process
    from engine.quiet import quiet_libraries

    die_with_parent()
    name_process(f"copylora-{args.job}")
    quiet_libraries()
    # Before anything imports torch: OpenMP sizes its pool from the environment when it loads.
    # Every progress callback then calls govern() on the working thread (OpenMP's thread count
    # belongs to the thread that sets it) to follow other work as it starts and stops.
    threads = configure_threads(log=log)
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # ~1.2 s of a cold start that loads diffusers' models
    stop = {"asked": False}

    def on_term(signum, _frame):
        stop["asked"] = True
        log(f"received {signal.Signals(signum).name}: stopping at the next step with a checkpoint")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    if args.channel:  # on another host (Slurm): the queue database is the submit host's, never opened here
        from engine.jobs.channel import ChannelQueue

        channel = ChannelQueue(args.channel)
        code = run_job(channel, args.job, stop, threads)
        channel.exited(code)
        return code
    queue = Queue(args.home)
    queue.on_skipped_write = log  # progress the full disk refused: said in the job log, the work goes on
    return run_job(queue, args.job, stop, threads)


def run_job(queue, job_id: int, stop: dict, threads) -> int:
    """Run job ``job_id`` of ``queue`` (the database, or a channel: engine.jobs.channel); its exit code."""
    job = queue.get(job_id)
    where = f", node {os.environ['SLURMD_NODENAME']}, Slurm job {os.environ.get('SLURM_JOB_ID')}" if os.environ.get("SLURMD_NODENAME") else ""
    log(f"job #{job.id}: {job.label} of {job.project} (attempt {job.attempts}, pid {os.getpid()}{where}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    log(threads.describe())
    runner = RUNNERS.get(job.kind)
    try:
        if runner is None:
            raise CopyloraError(f"job kind {job.kind!r} cannot run in the queue yet")
        artifacts = runner(queue, job, stop)
    except Stopped as exc:
        log(str(exc))
        return EXIT_STOPPED
    except CopyloraError as exc:
        log(f"FAILED: {exc}")
        return EXIT_FAILED if record(queue, job.id, stop, JobStatus.FAILED, error=str(exc)) else EXIT_STOPPED
    except Exception as exc:  # a bug or an environment problem (CUDA OOM...): keep the traceback in the log
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}".strip()
        if "out of memory" in message.lower():
            message += " (the GPU ran out of memory: try gradient_checkpointing = true or a smaller resolution)"
        log(f"FAILED: {message}")
        return EXIT_FAILED if record(queue, job.id, stop, JobStatus.FAILED, error=message[:2000]) else EXIT_STOPPED
    if not record(queue, job.id, stop, JobStatus.DONE, artifacts=artifacts):
        return EXIT_STOPPED
    log(f"job #{job.id} done: {artifacts_text(artifacts)}")
    return EXIT_DONE


def record(queue, job_id: int, stop: dict, status: JobStatus, **facts) -> bool:
    """``queue.finish``, waited for while the queue's disk is full: the work is done (its files
    are written), only its record is missing, so the job holds on and tries again until the
    user frees space. Asked to stop meanwhile (the worker stopping), it gives up and says so:
    False, and the job exits as stopped, so the worker puts it back in the queue (a traceback
    and "the job process died" before)."""
    said = False
    while True:
        try:
            queue.finish(job_id, status, **facts)
            if said:
                log("the result is recorded")
            return True
        except QueueWriteError as exc:
            if stop["asked"]:
                log(f"asked to stop while the result ({status}) waited to be recorded ({exc}): the job goes back to the "
                    "queue; its outputs are written, and running it again resumes from its newest checkpoint")
                return False
            if not said:
                log(f"cannot record the result ({status}): {exc}; trying again every {RECORD_RETRY_S:g} s")
                said = True
            time.sleep(RECORD_RETRY_S)


if __name__ == "__main__":
    sys.exit(main())

