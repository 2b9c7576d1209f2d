"""The GPU acceptance run: copylora's real job, end to end, on a CUDA machine, in one command.

It builds a full-size random-weight SD1.5 diffusers folder (or takes ``--base`` for a real
model), makes a project with 600×900 teacher pictures, fp16 and AdamW8bit, and runs it the way a
user does: ``copylora run --wait`` through the background worker (train A, train B, merge on
cuda, preview grid). Then it reads back what the queue recorded and writes
``gpu_acceptance.json`` and ``gpu_acceptance.md`` to ``--out``: it/s per side (whole loop and
steady state), peak VRAM, the NVML readings the worker sampled, merge and preview seconds, the
optimizer actually used, and any failure with its log tail. Each phase is recorded as it ends,
so a failure late in the run keeps what came before.

A GPU box rented for this may have no package registry. The packages torch does not bring are
listed in WHEELS; fetch them on a machine with one and carry the folder:

    python bench/gpu_acceptance.py --print-download   # the pip download command
    python bench/gpu_acceptance.py --wheels .whl --out results/   # on the GPU box

``--cpu-smoke`` runs the same code on the built-in tiny model for a few steps on the CPU (the
test suite runs it, so the script cannot rot).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

from engine.train.controls import TrainControls

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Importable module -> the wheel to carry when it is missing (versions this run was tested with).
# torch, transformers, safetensors, numpy, pillow, nvidia-ml-py, rich come with a CUDA image.
WHEELS = {
    "diffusers": "diffusers==0.42.1",
    "bitsandbytes": "bitsandbytes==0.50.2",
    "tomli_w": "tomli_w==1.2.0",
    "importlib_metadata": "importlib_metadata",  # diffusers' declared dependency
}
# sd-scripts' packages for the kohya side-by-side (--kohya-wheels), installed apart from ours: it
# pins older diffusers and transformers. torch, safetensors, numpy, pillow, pyyaml, psutil come
# with a CUDA image; bitsandbytes is ours; cv2 and torchvision stand-ins are used where missing.
KOHYA_WHEELS = ["accelerate==1.6.0", "diffusers==0.32.1", "transformers==4.54.1", "tokenizers==0.21.4", "huggingface-hub==0.34.3",
                "ftfy==6.3.1", "wcwidth==0.9.4", "einops==0.7.0", "toml==0.10.2", "voluptuous==0.15.2", "imagesize==1.4.1",
                "regex==2026.11.19", "hf-xet==1.8.0"]  # the versions its CPU run here used (docs/BENCHMARKS.md)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64"]


def download_command(python_version: str = "3.12", dest: str = ".whl", wheels: list[str] | None = None) -> str:
    platforms = " ".join(f"--platform {p}" for p in PLATFORMS)
    return (f"python3 -m pip download --no-deps --only-binary=:all: --python-version {python_version} --implementation cp "
            f"{platforms} -d {dest} " + " ".join(wheels if wheels is not None else WHEELS.values()))


def trim_wheel(wheel: Path, keep: str) -> int:
    """Drop from ``wheel`` every shared library whose name lacks ``keep`` (rewritten in place);
    the bytes saved. bitsandbytes' wheel holds a library per CUDA and ROCm version (43 MB);
    the device machine's torch is CUDA 13.0, and the carry is 64 MiB: `keep="cuda130"` leaves
    9 MB. pip installs it as it is (it does not check RECORD's hashes). A wheel with no library
    named ``keep`` is refused and left as it was (trimmed, it would hold no GPU library at all)."""
    import zipfile

    if not zipfile.is_zipfile(wheel):
        raise SystemExit(f"--trim-wheel: {wheel} is not a wheel (no such file, or not a zip archive)")
    with zipfile.ZipFile(wheel) as source:
        libraries = [n for n in source.namelist() if n.endswith(".so")]
    if not any(keep in name for name in libraries):
        raise SystemExit(f"--trim-wheel: no library in {wheel} is named {keep!r} (it has {len(libraries)}); nothing changed")
    before = wheel.stat().st_size
    trimmed = wheel.with_suffix(".trimming")
    try:
        with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                if item.filename.endswith(".so") and keep not in item.filename and "_cpu" not in item.filename:
                    continue
                target.writestr(item, source.read(item.filename))
        trimmed.replace(wheel)
    finally:
        trimmed.unlink(missing_ok=True)  # only there if writing it failed
    return before - wheel.stat().st_size


def install_wheels(folder: Path, site: Path, log) -> list[str]:
    """Install the missing packages from carried wheels into ``site`` (no registry needed)."""
    missing = [module for module in WHEELS if importlib.util.find_spec(module) is None]
    if not missing:
        return []
    wheels = sorted(str(w) for w in folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"missing {', '.join(missing)} and no wheels in {folder}; on a machine with a registry run:\n"
                         f"  {download_command()}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(site), *wheels], check=True)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    log(f"installed from {folder}: {', '.join(Path(w).name for w in wheels)}")
    return [Path(w).name for w in wheels]


# --------------------------------------------------------------------------- the record


class Record:
    """The results, written to disk after every phase."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "phases": {}, "runs": []}
        out.mkdir(parents=True, exist_ok=True)

    def phase(self, name: str, seconds: float, ok: bool, **facts) -> None:
        self.data["phases"][name] = {"ok": ok, "seconds": round(seconds, 2), **facts}
        self.save()

    def save(self) -> None:
        (self.out / "gpu_acceptance.json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        (self.out / "gpu_acceptance.md").write_text(markdown(self.data))


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def run_phase(record: Record, name: str, work, *args, **kwargs):
    """Run one phase; a failure is recorded with its traceback and does not end the script."""
    started = time.perf_counter()
    log(f"--- {name}")
    try:
        facts = work(*args, **kwargs) or {}
    except Exception as exc:  # noqa: BLE001 - the record says what failed; the next phases still run
        record.phase(name, time.perf_counter() - started, False, error=f"{type(exc).__name__}: {exc}",
                     traceback=traceback.format_exc()[-3000:])
        log(f"{name} FAILED: {type(exc).__name__}: {exc}")
        return None
    record.phase(name, time.perf_counter() - started, True, **{k: v for k, v in facts.items() if not k.startswith("_")})
    return facts


# --------------------------------------------------------------------------- phases


def environment() -> dict:
    import torch

    facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
             "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     multiprocessors=props.multi_processor_count)
    from importlib.metadata import PackageNotFoundError, version

    for package in ("diffusers", "transformers", "bitsandbytes", "safetensors", "huggingface_hub", "nvidia-ml-py"):
        try:
            if package != "nvidia-ml-py":
                __import__(package)  # importable here, not only installed
            facts[package] = version(package)
        except (Exception, PackageNotFoundError) as exc:  # noqa: BLE001 - recorded, not fatal
            facts[package] = f"unavailable ({type(exc).__name__}: {str(exc)[:200]})"
    try:
        from engine.jobs.gpu import sample_gpus

        facts["nvml"] = sample_gpus()
    except Exception as exc:  # noqa: BLE001
        facts["nvml"] = f"unavailable ({exc})"
    try:
        facts["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                         text=True, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001 - a copied tree may have no .git
        facts["commit"] = None
    return facts


def teacher_pictures(folder: Path, width: int, height: int) -> tuple[Path, Path]:
    """A: a colourful picture with shapes; B: the same picture in exact grayscale (the copy-machine pair)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    picture = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(picture)
    for y in range(height):  # a vertical sky-to-ground gradient
        t = y / max(1, height - 1)
        draw.line([(0, y), (width, y)], fill=(int(40 + 180 * t), int(90 + 60 * (1 - t)), int(220 - 170 * t)))
    draw.ellipse([width * 0.15, height * 0.1, width * 0.55, height * 0.37], fill=(230, 40, 40))
    draw.rectangle([width * 0.5, height * 0.45, width * 0.9, height * 0.75], fill=(40, 200, 70))
    draw.polygon([(width * 0.2, height * 0.9), (width * 0.45, height * 0.55), (width * 0.7, height * 0.9)], fill=(250, 210, 30))
    a, b = folder / "a.png", folder / "b.png"
    picture.save(a)
    picture.convert("L").convert("RGB").save(b)
    return a, b


def make_project(dest: Path, pictures: tuple[Path, Path], base: str, *, size: tuple[int, int], steps: int,
                 precision: str, optimizer: str, sample_steps: int, device: str, twin: bool = False,
                 method: str = "svd-merge", graphs: bool = False) -> Path:
    from engine.project.folder import load_project, save_project
    from engine.project.scaffold import create_project

    if dest.exists():
        shutil.rmtree(dest)
    project = create_project(dest, pictures[0], pictures[1], base_model=base)
    project = replace(
        project,
        info=replace(project.info, twin_training=twin, method=method),
        train=replace(project.train, resolution=list(size), mixed_precision=precision, optimizer_type=optimizer,
                      max_train_steps=steps, max_train_epochs=None, save_every_n_steps=0, sample_every_n_steps=0, cuda_graphs=graphs),
        merge=replace(project.merge, device=device),
        # Pictures are drawn in 8-pixel cells: 600x900 previews at 600x896.
        sample=replace(project.sample, size=[v - v % 8 for v in size], steps=sample_steps, prompts=[""], strengths=[0.0, 1.0]),
    )
    save_project(project)
    load_project(dest)  # the whole check `copylora check` does, base model header included
    return dest


def copylora(*args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "copylora_tui", *args]
    log("$ copylora " + " ".join(args))
    return subprocess.run(command, env=env, timeout=timeout, text=True, capture_output=True)


def steady_rate(points: list[dict], skip_fraction: float = 0.25) -> float | None:
    """Steps per second over the recorded progress points after the first quarter (warm-up:
    cuDNN autotuning, allocator growth, the first optimizer step)."""
    points = [p for p in points if p.get("t") is not None]
    if len(points) < 3:
        return None
    first = points[int(len(points) * skip_fraction)]
    last = points[-1]
    if last["t"] <= first["t"]:
        return None
    return (last["step"] - first["step"]) / (last["t"] - first["t"])


def run_project(project: Path, home: Path, *, timeout: float, mode: str) -> dict:
    """``copylora run --wait`` through the worker, then what the queue recorded of it."""
    from engine.jobs.queue import Queue

    env = {**os.environ, "COPYLORA_HOME": str(home), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    started = time.time()
    done = copylora("run", str(project), "--wait", env=env, timeout=timeout)
    wall = time.time() - started
    queue = Queue(home)
    jobs = []
    try:
        for job in sorted(queue.jobs(project=str(project.resolve())), key=lambda j: j.id):
            entry = {"id": job.id, "kind": job.kind, "side": job.side, "status": str(job.status), "error": job.error,
                     "seconds": round(job.finished_at - job.started_at, 2) if job.finished_at and job.started_at else None,
                     "artifacts": job.artifacts}
            if job.kind == "train":
                points = queue.points(job.id)
                loop = job.artifacts.get("seconds")
                entry.update(steps=job.step, it_per_s_reported=job.it_per_s, it_per_s_steady=steady_rate(points),
                             vram_peak_mb=job.artifacts.get("vram_peak_mb") or job.vram_mb, optimizer=job.artifacts.get("optimizer"),
                             train_seconds=loop)
            log_file = queue.log_path(job.id)
            lines = log_file.read_text(errors="replace").splitlines() if log_file.exists() else []
            if job.kind == "train":  # captured, and after how many steps, or why it trained eagerly
                entry["graph_log"] = [line.split(" ", 1)[-1] for line in lines if "cuda_graphs" in line]  # without the time
            if str(job.status) != "done":
                entry["log_tail"] = lines[-40:]
            jobs.append(entry)
        samples = [s for s in queue.gpu_history(0, since_s=wall + 60) if s["t"] >= started]
    finally:
        queue.close()
    nvml = {}
    if samples:
        nvml = {"samples": len(samples), "name": samples[-1].get("name"),
                "max_used_mb": max(s["used_mb"] or 0 for s in samples), "total_mb": samples[-1].get("total_mb"),
                "max_util": max(s["util"] or 0 for s in samples),
                "mean_util": round(sum(s["util"] or 0 for s in samples) / len(samples), 1),
                "max_power_w": max(s["power_w"] or 0 for s in samples), "max_temp": max(s["temp"] or 0 for s in samples)}
    grid = next((j["artifacts"].get("grid") for j in jobs if j["kind"] == "sample" and j["artifacts"]), None)
    starts, warm_lines = job_starts(home)
    for job in jobs:
        job["start"] = starts.get(job["id"])
    return {"mode": mode, "project": str(project), "exit_code": done.returncode, "wall_seconds": round(wall, 1),
            "jobs": jobs, "nvml": nvml, "grid": grid, "warm_start": warm_lines, "stdout_tail": done.stdout.splitlines()[-15:],
            "stderr_tail": done.stderr.splitlines()[-15:]}


def job_starts(home: Path) -> tuple[dict[int, str], list[str]]:
    """From the worker's log: how each job started ("warm": forked from the preloaded process,
    "cold"), and what the worker said of warm starts (which modules, or why they are off)."""
    try:
        text = (home / "worker.log").read_text(errors="replace")
    except OSError:
        return {}, []
    starts = {int(m.group(1)): m.group(2) for m in re.finditer(r"job #(\d+) \(.*\) started: .*, (warm|cold)$", text, flags=re.M)}
    said = [line.split(" ", 2)[-1] for line in text.splitlines() if "warm start" in line or "this job starts cold" in line]
    return starts, said


def step_rates(project: Path, steps: int, optimizers: list[str], compile_too: bool = False) -> dict:
    """Training steps/s in this process, the base model loaded once, for each optimizer: what a
    step costs without the worker, the job start-up and the model load (first third skipped).
    ``compile_too``: each optimizer also with ``[train] compile = true`` ("NAME+compile"); the
    seconds to the first step then include the compiler's. Rated by :func:`bench.acceptance_speed.timed`
    (in steps, copy checks off)."""
    from bench.acceptance_speed import timed, without_copy_checks
    from engine.models.loading import load_base_model
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.train.trainer import _precision, pick_device, train

    project_ = load_project(project)
    device = pick_device(None)
    weight_dtype = _precision(project_.train.mixed_precision, device, lambda line: None)[0]
    model = load_base_model(project_.base_model_path(), project_.info.model_family, dtype=weight_dtype, device=device)
    project_ = without_copy_checks(project_)
    rates = {}
    for optimizer, compiled in [(o, c) for o in optimizers for c in ((False, True) if compile_too else (False,))]:
        plan = make_plan(replace(project_, train=replace(project_.train, optimizer_type=optimizer, compile=compiled)), max_steps=steps)
        rate, result, first = timed(lambda c: train(plan, "a", model=model, resume=False, log=lambda line: None, controls=c))
        rates[optimizer + ("+compile" if compiled else "")] = {
            "it_per_s": round(rate, 2) if rate else None, "used": result.optimizer, "steps": result.step,
            "first_step_seconds": round(first, 1) if first else None,
            "vram_peak_mb": round(result.vram_peak_mb) if result.vram_peak_mb else None}
    return {"rates": rates}


def profile_steps(project: Path, steps: int, out: Path) -> dict:
    """One side trained in this process under torch.profiler: where a step's time goes and how
    many host-device synchronisations it makes (aten::_local_scalar_dense is a tensor read on the host)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.train.trainer import train

    plan = make_plan(load_project(project), max_steps=steps)
    wait, warmup = max(1, steps // 3), 2
    active = max(1, steps - wait - warmup - 1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    marks: list[float] = []
    with profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1)) as prof:
        def on_progress(p) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
            prof.step()

        result = train(plan, "a", resume=False, log=lambda line: None, controls=TrainControls(on_progress=on_progress))
    # Steps/s outside the profiled window (the profiler slows the steps it records).
    clean = marks[1:wait + 1]
    rate = (len(clean) - 1) / (clean[-1] - clean[0]) if len(clean) > 2 else None
    averages = prof.key_averages()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = averages.table(sort_by=sort, row_limit=25)
    (out / "step_profile.txt").write_text(table + "\n")
    syncs = {e.key: e.count for e in averages if e.key in ("aten::_local_scalar_dense", "aten::item", "cudaStreamSynchronize",
                                                           "cudaDeviceSynchronize", "cudaMemcpyAsync")}
    return {"steps": result.step, "profiled_steps": active, "it_per_s_unprofiled": rate,
            "host_reads_per_step": {k: round(v / active, 2) for k, v in syncs.items()}, "optimizer": result.optimizer}


def merge_on_both(project: Path) -> dict:
    """The project's merge on cuda and on the CPU, in this process: seconds of each and how far
    the two results are apart (sqrt(Σ‖ΔGPU − ΔCPU‖² / Σ‖ΔCPU‖²) over all modules, in fp64)."""
    import torch

    from engine.lora.weights import lora_delta
    from engine.merge.svd import merge_loras
    from engine.project.folder import load_project
    from engine.project.plan import make_plan

    plan = make_plan(load_project(project))
    paths = [plan.side("b").lora_path, plan.side("a").lora_path]
    merge = plan.project.merge
    results = {}
    for device in ("cuda", "cpu") if torch.cuda.is_available() else ("cpu",):
        merge_loras(paths, list(merge.ratios), new_rank=merge.new_rank, device=device)  # warm-up (CUDA context, kernels)
        results[device] = merge_loras(paths, list(merge.ratios), new_rank=merge.new_rank, device=device)
    facts = {f"{device}_seconds": round(r.seconds, 3) for device, r in results.items()}
    if "cuda" in results:
        num = den = 0.0
        for name, w in results["cpu"].modules.items():
            want = lora_delta(*w).double()
            got = lora_delta(*results["cuda"].modules[name]).double()
            num += float((got - want).norm() ** 2)
            den += float(want.norm() ** 2)
        facts["cuda_vs_cpu_rel_error"] = (num / den) ** 0.5 if den else None
    facts["modules"] = len(results["cpu"].modules)
    return facts


# --------------------------------------------------------------------------- report


def markdown(data: dict) -> str:
    env = data.get("phases", {}).get("environment", {})
    lines = ["# GPU acceptance run", "", f"Started {data.get('started')}; device: {env.get('device', 'no CUDA device')}; "
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, diffusers {env.get('diffusers')}, bitsandbytes {env.get('bitsandbytes')}.",
             "", f"Command: `{data.get('command', '')}`", "", "| phase | ok | seconds | note |", "|---|---|---:|---|"]
    for name, phase in data.get("phases", {}).items():
        note = phase.get("error") or ", ".join(f"{k}={v}" for k, v in phase.items()
                                              if k in ("base", "steps", "size", "it_per_s_unprofiled", "host_reads_per_step", "cuda_seconds",
                                                        "cpu_seconds", "cuda_vs_cpu_rel_error", "modules", "device", "rates", "correct",
                                                        "grads_max_rel_error_eager", "grads_max_rel_error_compiled",
                                                        "grads_median_rel_error_compiled", "graphs_speedup", "graph_log",
                                                        "plain", "checkpointing", "plain+graphs", "checkpointing+graphs", "family", "it_per_s_last",
                                                        "it_per_s_average", "ours_it_per_s", "ours_vs_kohya", "stand_ins"))
        lines.append(f"| {name} | {'yes' if phase['ok'] else '**no**'} | {phase['seconds']} | {note} |")
    for run in data.get("runs", []):
        lines += ["", f"## {run['mode']}: `copylora run --wait` (exit {run['exit_code']}, {run['wall_seconds']} s wall)", "",
                  "| job | status | job seconds | steps | it/s (steady) | it/s (trainer) | peak VRAM (torch) | optimizer / device |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for job in run["jobs"]:
            what = f"{job['kind']} {job['side'] or ''}".strip()
            rate = f"{job['it_per_s_steady']:.2f}" if job.get("it_per_s_steady") else ""
            reported = f"{job['it_per_s_reported']:.2f}" if job.get("it_per_s_reported") else ""
            vram = f"{job['vram_peak_mb'] / 1024:.2f} GiB" if job.get("vram_peak_mb") else ""
            used = job.get("optimizer") or job["artifacts"].get("device", "") if job.get("artifacts") else ""
            lines.append(f"| #{job['id']} {what} | {job['status']} | {job['seconds']} | {job.get('steps') or ''} | {rate} | "
                         f"{reported} | {vram} | {used} |")
        starts = [job.get("start") for job in run["jobs"] if job.get("start")]
        lines += ["", f"Job starts: {starts.count('warm')} warm, {starts.count('cold')} cold; the worker said: "
                  + ("; ".join(f"`{line}`" for line in dict.fromkeys(run.get("warm_start") or [])) or "nothing of warm starts")]
        said = sorted({line for job in run["jobs"] for line in job.get("graph_log") or []})
        if said:  # cuda_graphs on: captured, or why not
            lines += ["", "CUDA graphs: " + "; ".join(f"`{line}`" for line in said)]
        if any(job.get("side") == "ab" for job in run["jobs"]):
            lines += ["", "A twin job (`train ab`) trains A and B as one batch of two: its it/s are steps of both sides."]
        nvml = run.get("nvml") or {}
        if nvml:
            lines += ["", f"NVML, as the worker sampled it ({nvml['samples']} samples): {nvml['name']}, max used "
                      f"{nvml['max_used_mb']:.0f} of {nvml['total_mb']:.0f} MiB, utilisation max {nvml['max_util']} % "
                      f"(mean {nvml['mean_util']} %), power max {nvml['max_power_w']:.0f} W, temperature max {nvml['max_temp']} °C."]
        else:
            lines += ["", "NVML: no samples recorded."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def kohya_phase(args, work: Path, project: Path, base: str, picture: Path, size: tuple[int, int], record: Record) -> dict:
    """sd-scripts on the same base, picture, size and settings; its it/s beside ours (the step-rate
    phase's figure for the same optimizer, when it ran)."""
    from bench.kohya_side_by_side import run_kohya

    site = None
    if args.kohya_wheels:
        site = work / "kohya-site"
        wheels = sorted(str(w) for w in Path(args.kohya_wheels).glob("*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                        "--target", str(site), *wheels], check=True)
    facts = run_kohya(Path(args.kohya), base, picture, work, size=size, steps=args.kohya_steps, precision=args.precision,
                      optimizer=args.optimizer, timeout=args.timeout, site=site, log=log)
    ours = record.data["phases"].get("step rates in one process", {}).get("rates", {}).get(args.optimizer, {}).get("it_per_s")
    kohya = facts.get("it_per_s_last")
    facts.update(ours_it_per_s=ours, ours_vs_kohya=round(ours / kohya, 2) if ours and kohya else None)
    return facts


def sdxl_phases(record: Record, args, work: Path, home: Path, out: Path, device: str, log) -> None:
    """SDXL (issue 26): built at full size (tiny-sdxl in the smoke), trained at each size with
    gradient checkpointing off and on, then its project run with checkpointing on."""
    from bench.acceptance_speed import build_sdxl, sdxl_rates
    from engine.project.folder import load_project, save_project

    built = run_phase(record, "SDXL: build random full-size", lambda: {"base": "tiny-sdxl" if args.cpu_smoke else build_sdxl(work, device, log)})
    if built is None:
        return
    precision = "no" if args.cpu_smoke else "bf16"
    first = None
    for size in [s.strip() for s in args.sdxl.split(",") if s.strip()]:
        width, height = (int(v) for v in size.lower().split("x"))
        pictures = teacher_pictures(work / f"pictures-{size}", width, height)
        made = run_phase(record, f"SDXL project {size}", lambda: {"_dest": make_project(
            work / "projects" / f"sdxl-{size}", pictures, built["base"], size=(width, height), steps=args.sdxl_steps,
            precision=precision, optimizer=args.optimizer, sample_steps=args.sample_steps, device=device)})
        if made is None:
            continue
        first = first or (pictures, (width, height))
        run_phase(record, f"SDXL training {size}, checkpointing off and on" + (", graphs off and on" if args.graphs else ""), sdxl_rates,
                  made["_dest"], max(args.sdxl_steps, 6), log, args.graphs)
    if first is None:
        return
    # A user's run, fresh, at the first size, with the setting that fits a 24 GB card (the README's advice).
    run_dir = make_project(work / "projects" / "sdxl-run", first[0], built["base"], size=first[1], steps=args.sdxl_steps,
                           precision=precision, optimizer=args.optimizer, sample_steps=args.sample_steps, device=device)
    project = load_project(run_dir)
    project.train = replace(project.train, gradient_checkpointing=True)
    save_project(project)
    ran = run_phase(record, "copylora run (SDXL, checkpointing on)",
                    lambda: {"_run": run_project(run_dir, home, timeout=args.timeout, mode="sdxl")})
    if ran:
        record.data["runs"].append(ran["_run"])
        record.save()
        if ran["_run"]["grid"] and Path(ran["_run"]["grid"]).is_file():
            shutil.copy(ran["_run"]["grid"], out / "preview-grid-sdxl.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring for carrying wheels.")
    parser.add_argument("--base", help="a real base model (diffusers folder or .safetensors); default: build a random full-size SD1.5")
    parser.add_argument("--steps", type=int, default=150, help="training steps per side (default 150)")
    parser.add_argument("--size", default="600x900", help="training and preview size WxH (default 600x900)")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--optimizer", default="AdamW8bit")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--profile-steps", type=int, default=30, help="steps of the in-process profiled training (0: skip)")
    parser.add_argument("--modes", default="separate,twin,differential",
                        help="how the queue trains A and B, comma-separated: separate jobs, one twin job, the differential "
                             "route (B on the base with A applied, fp32 frozen A under fp16 autocast)")
    parser.add_argument("--rate-steps", type=int, default=60, help="steps per optimizer of the in-process step-rate phase (0: skip)")
    parser.add_argument("--rate-optimizers", default="AdamW8bit,AdamW", help="optimizers the step-rate phase compares")
    parser.add_argument("--rate-compile", action="store_true", help="the step-rate phase also runs each optimizer with [train] compile = true")
    parser.add_argument("--rate-graphs", action="store_true",
                        help="steps/s with [train] cuda_graphs off and on: one side, a twin pair, the differential route's B")
    parser.add_argument("--graphs", action="store_true",
                        help="the run modes' projects train with [train] cuda_graphs = true: the graphed step through the queue end to "
                        "end (copy checks between replays, merge, preview); each train job's record says whether it was captured; "
                        "the SDXL phase also trains graphed (its peak VRAM: a graph keeps a memory pool of its own)")
    parser.add_argument("--sdxl", default="", help="sizes WxH,... to train a random full-size SDXL at in bf16, gradient checkpointing "
                        "off and on (e.g. 1024x1024,832x1216), then run its project with checkpointing on; default: skip")
    parser.add_argument("--sdxl-steps", type=int, default=20, help="steps of each SDXL measurement and of its project run")
    parser.add_argument("--kohya", default=None, help="a checkout of kohya-ss/sd-scripts: train A with its train_network.py at "
                        "the same settings and put its it/s beside ours (bench/kohya_side_by_side.py)")
    parser.add_argument("--kohya-wheels", default=None, help="folder of wheels for sd-scripts' packages, installed apart from ours "
                        "(it pins other diffusers/transformers): see --print-download")
    parser.add_argument("--kohya-steps", type=int, default=60, help="steps of the sd-scripts run")
    parser.add_argument("--compile-check", action="store_true",
                        help="first, bench/compile_check.py on the tiny model on this device: are compiled gradients right?")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary folder)")
    parser.add_argument("--out", default="gpu-acceptance", help="where the JSON, Markdown, grid and profile go")
    parser.add_argument("--wheels", default=None, help="folder of carried wheels to install the missing packages from")
    parser.add_argument("--timeout", type=float, default=420, help="seconds allowed for each `copylora run --wait`")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, a few steps, on the CPU: checks the script itself")
    parser.add_argument("--print-download", action="store_true", help="print the pip command that fetches the wheels to carry")
    parser.add_argument("--trim-wheel", nargs=2, metavar=("WHEEL", "KEEP"),
                        help="drop the shared libraries whose name lacks KEEP from WHEEL (bitsandbytes: KEEP=cuda130 for the device's CUDA 13.0)")
    args = parser.parse_args(argv)
    if args.trim_wheel:
        wheel, keep = args.trim_wheel
        print(f"{wheel}: {trim_wheel(Path(wheel), keep) / 2**20:.1f} MiB less")
        return 0
    if args.print_download:
        print(download_command())
        print("# for --kohya (sd-scripts' own packages, in a folder of their own):")
        print(download_command(dest=".whl-kohya", wheels=KOHYA_WHEELS))
        return 0

    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="copylora-accept-")).resolve()
    out = Path(args.out).resolve()
    record = Record(out)
    record.data["command"] = "python bench/gpu_acceptance.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.cpu_smoke:
        args.size, args.steps, args.sample_steps, args.precision = "64x96", 3, 2, "no"
        args.profile_steps = min(args.profile_steps, 6)
        args.rate_steps = min(args.rate_steps, 6)
        args.sdxl_steps = min(args.sdxl_steps, 3)
        args.sdxl = args.sdxl and "64x64"
        base = "tiny"
    if args.wheels:
        run_phase(record, "wheels", lambda: {"installed": install_wheels(Path(args.wheels), work / "site", log)})
    facts = run_phase(record, "environment", environment) or {}
    cuda = bool(facts.get("cuda_available"))
    if not cuda and not args.cpu_smoke:
        log("no CUDA device: use --cpu-smoke to check the script on a CPU")
        return 2
    width, height = (int(v) for v in args.size.lower().split("x"))

    if not args.cpu_smoke:
        if args.base:
            base = str(Path(args.base).resolve())
        else:
            from bench.random_model import build_random_sd15

            target = work / "sd15-random"
            built = run_phase(record, "build random full-size SD1.5", lambda: {"base": str(build_random_sd15(target, device="cuda", log=log))})
            if built is None:
                return 1
            base = str(target)
    device = "cuda" if cuda else "cpu"
    if args.compile_check:
        from bench.compile_check import check

        run_phase(record, "compile check (tiny)", check, "tiny", device, "default")
    pictures = teacher_pictures(work / "pictures", width, height)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    projects = {}
    for mode in modes or ["rates"]:  # no mode: a project for the in-process phases only
        made = run_phase(record, f"project ({mode})", lambda mode=mode: {
            "base": base, "size": f"{width}x{height}", "steps": args.steps, "_dest": make_project(
                work / "projects" / f"accept-{mode}", pictures, base, size=(width, height), steps=args.steps,
                precision=args.precision, optimizer=args.optimizer, sample_steps=args.sample_steps, device=device,
                twin=mode == "twin", method="differential" if mode == "differential" else "svd-merge",
                graphs=args.graphs and mode in modes)})
        if made is None:
            return 1
        projects[mode] = made["_dest"]
    home = work / "state"
    ran = None
    for mode, project in projects.items():
        if mode not in modes:
            continue
        title = {"separate": "copylora run (separate A and B)", "twin": "copylora run (twin A+B)",
                 "differential": "copylora run (differential: B on A)"}.get(mode, f"copylora run ({mode})")
        ran = run_phase(record, title, lambda project=project, mode=mode: {"_run": run_project(project, home, timeout=args.timeout, mode=mode)})
        if ran:
            record.data["runs"].append(ran["_run"])
            record.save()
            if ran["_run"]["grid"] and Path(ran["_run"]["grid"]).is_file():
                shutil.copy(ran["_run"]["grid"], out / f"preview-grid-{mode}.png")
            check = next((j["artifacts"].get("check") for j in ran["_run"]["jobs"] if j["kind"] == "sample" and j["artifacts"]), None)
            if check and Path(check).is_file():  # the differential route's check picture
                shutil.copy(check, out / f"preview-check-{mode}.png")
    if args.sdxl:  # before the worker stops: its project runs through the queue too
        sdxl_phases(record, args, work, home, out, device, log)
    project = trained = next(iter(projects.values()))
    if args.graphs and modes:  # the in-process phases time what they name (eager unless they say graphs): a project of their own
        project = make_project(work / "projects" / "accept-rates", pictures, base, size=(width, height), steps=args.steps,
                               precision=args.precision, optimizer=args.optimizer, sample_steps=args.sample_steps, device=device)
    env = {**os.environ, "COPYLORA_HOME": str(home)}
    try:
        copylora("worker", "stop", env=env, timeout=60)
    except subprocess.TimeoutExpired:
        log("the worker did not stop within 60 s")
    first = next((run for run in record.data["runs"] if run["mode"] in modes), None)  # not the SDXL run
    if first and all(job["status"] == "done" for job in first["jobs"] if job["kind"] == "train"):
        run_phase(record, "merge on cuda vs cpu", merge_on_both, trained)
    if args.rate_steps:
        run_phase(record, "step rates in one process", step_rates, project, args.rate_steps, args.rate_optimizers.split(","),
                  args.rate_compile)
    # Before the profile and kohya: the first goal, kept if a later phase runs out of time.
    if args.rate_graphs and args.rate_steps:
        from bench.acceptance_speed import graph_rates

        # 12 steps at the least on CUDA: the graph is captured after 3 eager steps and the rate skips the
        # first third. The smoke's CPU never captures one (it says why and trains eagerly): its 6 steps do.
        steps = args.rate_steps if args.cpu_smoke else max(args.rate_steps, 3 * 4)
        run_phase(record, "cuda graphs off and on", graph_rates, project, steps, log)
    if args.profile_steps:
        run_phase(record, "profiled training steps", profile_steps, project, args.profile_steps, out)
    if args.kohya:
        run_phase(record, "kohya train_network.py side by side", kohya_phase, args, work, project, base, pictures[0], (width, height),
                  record)
    record.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    record.save()
    failed = [name for name, phase in record.data["phases"].items() if not phase["ok"]]
    failed += [f"{run['mode']} job #{job['id']}" for run in record.data["runs"] for job in run["jobs"] if job["status"] != "done"]
    log(f"results: {out / 'gpu_acceptance.md'}" + (f"; FAILED: {', '.join(failed)}" if failed else "; all phases passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    raise SystemExit(main())
