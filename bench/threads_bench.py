"""How long the README's example takes on an idle machine and beside other CPU-bound work, with
copylora choosing torch's threads (engine/threads.py) and with torch's own default (one thread per
core, which is what every run had before issue 29).

    OMP_NUM_THREADS= python bench/threads_bench.py                        # the full example, ~5-10 min
    python bench/threads_bench.py --max-steps 60 --modes auto,torch-default --others 0,1
    python bench/threads_bench.py --project projects/example-toy --out docs/threads-bench.json
    python bench/threads_bench.py --modes auto --others 1 --others-after 30   # load that starts mid-run

Each run copies the project to a temporary folder and runs ``copylora run PROJECT --wait`` with a
state folder of its own (a fresh worker), exactly as a user would, while ``--others`` busy-loop
processes run beside it (started first, stopped after). It reports the wall time, the training
job's own seconds and it/s, and the thread line of the job's log.

Modes:
  auto           copylora chooses (the default now): COPYLORA_THREADS and OMP_NUM_THREADS unset
  torch-default  COPYLORA_THREADS = the machine's cores: torch's default width, what ran before
  one            COPYLORA_THREADS = 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("auto", "torch-default", "one")
BUSY_LOOP = "while True: pass"


def mode_env(mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "COPYLORA_THREADS", "COPYLORA_THREADS_AUTO")}
    if mode == "torch-default":
        env["COPYLORA_THREADS"] = str(len(os.sched_getaffinity(0)))
    elif mode == "one":
        env["COPYLORA_THREADS"] = "1"
    elif mode != "auto":
        raise SystemExit(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
    return env


def copylora(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "copylora_tui.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def one_run(project: Path, mode: str, others: int, max_steps: int | None, timeout: float, delay: float = 0.0) -> dict:
    work = Path(tempfile.mkdtemp(prefix="copylora-threads-"))
    copy = work / project.name
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("output"))
    env = mode_env(mode)
    env["COPYLORA_HOME"] = str(work / "state")
    # With a delay the busy processes start while the job trains: the thread governor's case.
    spinner_code = BUSY_LOOP if delay <= 0 else f"import time\ntime.sleep({delay})\n{BUSY_LOOP}"
    spinners = [subprocess.Popen([sys.executable, "-c", spinner_code]) for _ in range(others)]
    try:
        args = ["run", str(copy), "--wait"] + (["--max-steps", str(max_steps)] if max_steps else [])
        started = time.perf_counter()
        done = copylora(*args, env=env, timeout=timeout)
        wall = time.perf_counter() - started
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    try:
        jobs = json.loads(copylora("queue", "--json", "--all", env=env, timeout=60).stdout)["jobs"]
    finally:
        copylora("worker", "stop", env=env, timeout=200)
    train = next((j for j in jobs if j["kind"] == "train"), None)
    log_text = (work / "state" / "logs" / f"job-{train['id']}.log").read_text() if train else ""
    threads = re.findall(r"threads: .*", log_text)
    result = {
        "mode": mode, "others": others, "others_after_s": delay, "ok": done.returncode == 0, "wall_s": round(wall, 1),
        "train_s": (train or {}).get("artifacts", {}).get("seconds"),
        "steps": (train or {}).get("artifacts", {}).get("steps"),
        "threads": threads[0] if threads else None, "thread_changes": threads[1:],
    }
    if result["train_s"] and result["steps"]:
        result["it_per_s"] = round(result["steps"] / result["train_s"], 2)
    if not result["ok"]:
        result["error"] = (done.stderr or done.stdout)[-2000:]
    shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=str(ROOT / "projects" / "example-monochrome"))
    parser.add_argument("--modes", default="auto,torch-default", help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--others", default="0,1", help="comma-separated counts of busy-loop processes beside the run")
    parser.add_argument("--max-steps", type=int, help="train N steps a side instead of the project's count")
    parser.add_argument("--others-after", type=float, default=0.0, metavar="S",
                        help="start the busy processes S seconds into the run (default: before it)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before one run is abandoned")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = []
    for others in [int(x) for x in args.others.split(",")]:
        for mode in args.modes.split(","):
            print(f"{Path(args.project).name}: {mode}, {others} other busy process(es) ...", file=sys.stderr, flush=True)
            try:
                result = one_run(Path(args.project), mode, others, args.max_steps, args.timeout, args.others_after)
            except subprocess.TimeoutExpired:
                result = {"mode": mode, "others": others, "ok": False, "error": f"over {args.timeout:.0f} s"}
            results.append(result)
            print(json.dumps(result), flush=True)
    print("\n| mode | other busy processes | wall s | training s | it/s | threads |\n|---|---|---|---|---|---|")
    for r in results:
        after = f" from {r['others_after_s']:g} s" if r.get("others_after_s") and r["others"] else ""
        print(f"| {r['mode']} | {r['others']}{after} | {r.get('wall_s', '-')} | {r.get('train_s', '-')} | {r.get('it_per_s', '-')} | "
              f"{(r.get('threads') or '-')}{' then ' + '; '.join(r['thread_changes']) if r.get('thread_changes') else ''} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"project": Path(args.project).name, "cores": len(os.sched_getaffinity(0)),
                                              "max_steps": args.max_steps, "results": results}, indent=1) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
