"""The prepared GPU acceptance run cannot rot: its --cpu-smoke mode runs the same phases on
the tiny model (a real worker, real jobs, the queue read back), here on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("torch")


@pytest.mark.slow
def test_cpu_smoke_runs_every_phase_and_writes_the_record(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COPYLORA_CACHE": os.environ.get("COPYLORA_CACHE", str(tmp_path / "cache"))}
    env.pop("COPYLORA_HOME", None)  # the script gives its run a state folder of its own
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_acceptance.py"), "--cpu-smoke", "--graphs", "--out", str(out), "--work", str(work)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "gpu_acceptance.json").read_text())
    phases = record["phases"]
    assert all(phase["ok"] for phase in phases.values()), phases
    # --graphs: the queue's jobs train with cuda_graphs on (on the CPU each says why it trains
    # eagerly); the in-process phases time a project of their own with it off
    graph_logs = [job["graph_log"] for run in record["runs"] for job in run["jobs"] if job["kind"] == "train"]
    assert len(graph_logs) == 5 and all(said == ["cuda_graphs = true: training eagerly: there is no CUDA device (training on the CPU)"]
                                        for said in graph_logs), graph_logs
    assert "CUDA graphs: `cuda_graphs = true: training eagerly: there is no CUDA device" in (out / "gpu_acceptance.md").read_text()
    assert "cuda_graphs = true" in (work / "projects" / "accept-twin" / "copylora.toml").read_text()
    assert "cuda_graphs = false" in (work / "projects" / "accept-rates" / "copylora.toml").read_text()
    assert {"environment", "project (separate)", "project (twin)", "copylora run (separate A and B)", "copylora run (twin A+B)",
            "merge on cuda vs cpu", "step rates in one process", "profiled training steps"} <= set(phases)
    run, twin, differential = record["runs"]
    assert run["exit_code"] == twin["exit_code"] == 0
    kinds = [(job["kind"], job["side"], job["status"]) for job in run["jobs"]]
    assert kinds == [("train", "a", "done"), ("train", "b", "done"), ("merge", None, "done"), ("sample", None, "done")]
    twin_kinds = [(job["kind"], job["side"], job["status"]) for job in twin["jobs"]]
    assert twin_kinds == [("train", "ab", "done"), ("merge", None, "done"), ("sample", None, "done")]
    assert twin["jobs"][0]["steps"] == 3 and set(twin["jobs"][0]["artifacts"]) >= {"lora_a", "lora_b"}
    differential_kinds = [(job["kind"], job["side"], job["status"]) for job in differential["jobs"]]
    assert differential_kinds == [("train", "a", "done"), ("train", "b", "done"), ("merge", None, "done"), ("sample", None, "done")]
    assert "copylora run (differential: B on A)" in phases and (out / "preview-check-differential.png").stat().st_size > 0
    train = run["jobs"][0]
    assert train["steps"] == 3 and train["optimizer"] == "AdamW (fallback from AdamW8bit)"  # no CUDA: the fallback is said
    assert train["artifacts"]["seconds"] > 0
    assert run["jobs"][2]["artifacts"]["device"] == "cpu" and run["jobs"][3]["artifacts"]["seconds"] > 0
    assert set(phases["step rates in one process"]["rates"]) == {"AdamW8bit", "AdamW"}
    assert (out / "step_profile.txt").read_text().strip()
    assert (out / "preview-grid-separate.png").stat().st_size > 0 and (out / "preview-grid-twin.png").stat().st_size > 0
    report = (out / "gpu_acceptance.md").read_text()
    assert "| #1 train a | done |" in report and "| #4 sample | done |" in report and "| #5 train ab | done |" in report
    # Every job forked from the preloaded process, and the report says so (on a GPU box: which tier).
    assert [job["start"] for job in run["jobs"] + twin["jobs"]] == ["warm"] * 7
    assert "Job starts: 4 warm, 0 cold; the worker said: `warm start: torch, transformers, diffusers" in report


def test_print_download_names_every_wheel_to_carry():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_acceptance.py"), "--print-download"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for wheel in ("diffusers==", "bitsandbytes==", "tomli_w==", "--only-binary=:all:", "--python-version 3.12"):
        assert wheel in done.stdout


def test_the_prepare_script_finds_both_download_lines_it_runs():
    """bench/gpu_prepare.sh runs the --print-download lines that write into .whl and .whl-kohya
    (it is not run here: it downloads from PyPI). Its syntax, and the two lines it looks for."""
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_prepare.sh")], capture_output=True).returncode == 0
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_acceptance.py"), "--print-download"],
                          capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    for folder in (".whl", ".whl-kohya"):
        assert len([line for line in lines if f" -d {folder} " in line and line.startswith("python3 -m pip download")]) == 1, folder


def test_rate_phase_compares_compile_on_and_off_without_running_the_queue(tmp_path):
    """The form the compile measurement takes on a GPU (`--modes "" --rate-compile`): no queue
    run, one project for the in-process phase, each optimizer with compile off and on."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COPYLORA_CACHE": os.environ.get("COPYLORA_CACHE", str(tmp_path / "cache"))}
    env.pop("COPYLORA_HOME", None)
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_acceptance.py"), "--cpu-smoke", "--modes", "", "--rate-compile",
                           "--rate-optimizers", "AdamW", "--profile-steps", "0", "--out", str(out), "--work", str(work)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "gpu_acceptance.json").read_text())
    assert record["runs"] == [] and "project (rates)" in record["phases"]
    rates = record["phases"]["step rates in one process"]["rates"]
    assert set(rates) == {"AdamW", "AdamW+compile"}
    assert all(r["steps"] == 6 and r["it_per_s"] and r["first_step_seconds"] is not None for r in rates.values())


def test_graph_sdxl_and_kohya_phases_run_on_the_cpu(tmp_path):
    """Issue 26's phases in the smoke (`--rate-graphs --sdxl ...`): the graphs phase measures
    one side, a twin pair and the differential route's B with cuda_graphs off and on (on the CPU
    the graph falls back to eager, and the record says why); the SDXL phase trains tiny-sdxl with
    gradient checkpointing off and on, then runs its project (train, merge, preview) through the queue."""
    from tests.test_kohya_side_by_side import FAKE

    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COPYLORA_CACHE": os.environ.get("COPYLORA_CACHE", str(tmp_path / "cache"))}
    env.pop("COPYLORA_HOME", None)
    sd_scripts = tmp_path / "sd-scripts"  # a stand-in train_network.py: the phase's wiring, not sd-scripts itself
    sd_scripts.mkdir()
    (sd_scripts / "train_network.py").write_text(FAKE)
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_acceptance.py"), "--cpu-smoke", "--modes", "", "--rate-graphs", "--graphs",
                           "--kohya", str(sd_scripts), "--kohya-steps", "5", "--sdxl", "1024x1024", "--rate-optimizers", "AdamW8bit",
                           "--profile-steps", "0", "--out", str(out), "--work", str(work)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    phases = json.loads((out / "gpu_acceptance.json").read_text())["phases"]
    graphs = phases["cuda graphs off and on"]
    for mode in ("eager", "graphs"):
        rates = graphs["rates"][mode]
        assert rates["one_side_it_per_s"] and rates["twin_pair_steps_per_s"] and rates["differential_b_it_per_s"], rates
        assert rates["twin_vs_two_separate"] and rates["differential_b_vs_side"]
    eager = graphs["rates"]["eager"]  # and B with A's modules beside it (not folded), for the fold's gain on the same machine
    assert eager["differential_b_a_beside_it_per_s"] and eager["folded_vs_beside"], eager
    assert eager["one_side_hooked_it_per_s"] and eager["fused_vs_hooked"] and eager["twin_fused_vs_hooked"], eager  # the fused function's gain
    assert eager["one_side_fused_again_it_per_s"] and eager["twin_pair_fused_again_steps_per_s"], eager  # fused on both sides of hooked
    assert graphs["graph_log"] == ["cuda_graphs = true: training eagerly: there is no CUDA device (training on the CPU)"]
    sdxl = phases["SDXL training 64x64, checkpointing off and on, graphs off and on"]  # the smoke's size, whatever was asked
    assert sdxl["family"] == "sdxl" and sdxl["plain"]["it_per_s"] and sdxl["checkpointing"]["it_per_s"]
    assert sdxl["plain+graphs"]["it_per_s"] and sdxl["checkpointing+graphs"]["graph_log"] == [
        "cuda_graphs = true: training eagerly: there is no CUDA device (training on the CPU)"]  # --graphs: both again, graphed
    run = json.loads((out / "gpu_acceptance.json").read_text())["runs"][0]
    assert run["mode"] == "sdxl" and [(j["kind"], j["status"]) for j in run["jobs"]] == [
        ("train", "done"), ("train", "done"), ("merge", "done"), ("sample", "done")]
    assert (out / "preview-grid-sdxl.png").stat().st_size > 0
    assert "merge on cuda vs cpu" not in phases  # the SDXL run is not the SD1.5 project's
    kohya = phases["kohya train_network.py side by side"]
    assert kohya["exit_code"] == 0 and kohya["steps_seen"] == 5 and kohya["it_per_s_last"] == 2.5 and kohya["lora_written"]
    ours = phases["step rates in one process"]["rates"]["AdamW8bit"]["it_per_s"]  # the run's --optimizer, as sd-scripts gets it
    assert kohya["ours_it_per_s"] == ours and kohya["ours_vs_kohya"] == round(ours / 2.5, 2)


def test_the_rate_counts_steps_not_reports(monkeypatch):
    """On CUDA the trainer reports every LOSS_READ_S, several steps per report once steps are fast:
    a rate that counted reports read ~3.3/s on the H200 whatever the step cost (2026-12-04)."""
    from types import SimpleNamespace

    from bench import acceptance_speed

    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # began, then one per report
    monkeypatch.setattr(acceptance_speed.time, "perf_counter", lambda: next(clock))

    def train_with(controls):
        for step in (4, 8, 12, 16, 20, 24):  # four steps between reports, one second apart
            controls.on_progress(SimpleNamespace(step=step))
        return "result"

    rate, result, first = acceptance_speed.timed(train_with)
    assert (rate, result, first) == (4.0, "result", 1.0)
    assert acceptance_speed.rate_of([(1, 0.0)]) is None and acceptance_speed.rate_of([]) is None  # one mark: no interval
    assert acceptance_speed.rate_of([(3, 0.0), (6, 1.0), (9, 2.0)]) == 3.0


def test_host_profile_times_the_steps_parts_on_the_cpu(tmp_path):
    """bench/host_profile.py's smoke: eager, graphs asked (the CPU says why not), channels-last and
    cProfile, each step's parts timed."""
    out = tmp_path / "host.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COPYLORA_CACHE": os.environ.get("COPYLORA_CACHE", str(tmp_path / "cache"))}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "host_profile.py"), "--cpu-smoke", "--optimizers", "AdamW",
                           "--channels-last", "--work", str(tmp_path / "w"), "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = out.read_text()
    heads = [line for line in report.splitlines() if line.startswith("== ")]
    assert [h.split(":")[0] for h in heads] == ["== AdamW, cuda_graphs=False", "== AdamW, cuda_graphs=True",
                                                 "== AdamW, cuda_graphs=True, channels-last", "== AdamW, cuda_graphs=True under cProfile"]
    assert report.count("whole step (eager)") == 4 and report.count("optimizer step") == 4
    assert "training eagerly: there is no CUDA device" in report and "run_backward" in report


def test_trim_wheel_keeps_the_named_library_and_everything_else(tmp_path):
    """The carry is 64 MiB and bitsandbytes' wheel 43 MB of libraries for every CUDA/ROCm."""
    import zipfile

    wheel = tmp_path / "bitsandbytes-0-py3-none-any.whl"
    names = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda130.so",
             "bitsandbytes/libbitsandbytes_cuda128.so", "bitsandbytes/libbitsandbytes_rocm72.so", "bitsandbytes-0.dist-info/RECORD"]
    with zipfile.ZipFile(wheel, "w") as z:
        for name in names:
            z.writestr(name, name * 1000)
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_acceptance.py"), "--trim-wheel", str(wheel), "cuda130"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == sorted(n for n in names if "cuda128" not in n and "rocm" not in n)
        assert z.read("bitsandbytes/libbitsandbytes_cuda130.so") == b"bitsandbytes/libbitsandbytes_cuda130.so" * 1000

    # a KEEP that names no library, or a file that is no wheel: one line, the file untouched
    kept = wheel.read_bytes()
    for args, said in (([str(wheel), "cuda999"], "no library in"), ([str(tmp_path / "missing.whl"), "cuda130"], "is not a wheel")):
        done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_acceptance.py"), "--trim-wheel", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert wheel.read_bytes() == kept and sorted(p.name for p in tmp_path.iterdir()) == [wheel.name]


def test_host_profile_reports_the_steady_step_apart_from_warm_up_and_capture():
    """A graphed run's first steps are eager and one captures: the steady figure is the median of
    the last two thirds of the calls, and a part called on fewer steps than the run (the replay)
    is given per call as well as per step (on the H200, 40.9 ms per step was 44.2 per replay)."""
    from bench.host_profile import PartTimer, steady_median

    timer = PartTimer()
    timer.times["whole step"] = [0.25, 0.25, 0.25, 0.9, 0.07, 0.07, 0.08, 0.07, 0.07]  # 3 eager, the capture, 5 replayed
    timer.times["replay"] = [0.05, 0.04, 0.04, 0.04, 0.04, 0.04]  # the capture's own replay and five more
    table = timer.table(9)
    assert table["whole step"] == {"ms_per_step": 223.33, "calls": 9, "ms_per_call": 223.33, "steady_ms": 70.0}
    assert table["replay"]["ms_per_step"] == 27.78 and table["replay"]["ms_per_call"] == 41.67 and table["replay"]["steady_ms"] == 40.0
    assert steady_median([]) == 0.0 and steady_median([0.5]) == 0.5
