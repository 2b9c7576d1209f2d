#!/usr/bin/env python
"""Benchmark of the SVD difference merge: our exact low-rank merge against kohya's dense method
(the timing harness; the methods, module sets and error measure are in merge_reference.py).

    python bench/merge_bench.py [--family sd15|sdxl|all] [--conv] [--device cpu|cuda]
                                [--skip-dense] [--no-clamp] [--repeat N] [--limit N | --every N]
                                [--out-json F] [--doc docs/BENCHMARKS.md]
    python bench/merge_bench.py --doc-only --out-json F --doc docs/BENCHMARKS.md

What it does, per family (and with ``--conv`` also for the 3x3-conv "LoCon" module set):

1. Builds a rank-8 LoRA pair A, B with the exact kohya module set and shapes of the full-size
   model (from :func:`engine.models.loading.build_empty` on the meta device and
   :func:`engine.lora.names.find_targets`: SD1.5 264 modules, 350 with conv; SDXL 986 / 1052),
   random but trained-like, and writes them as fp16 safetensors files, as real LoRAs are.
2. Runs each method **in a fresh subprocess** (``--worker``), so a figure is the whole process
   a user waits for (python start, torch import, load, merge, save), and reads that child's own
   peak RSS (GNU ``time``'s ``%M``; see :func:`run_child`):
   * ``ours``: :func:`engine.merge.svd.merge_loras` + :func:`engine.merge.svd.save_merge` (what
     ``copylora merge`` does), timed ``--repeat`` times after one untimed warm-up run;
   * ``copylora merge`` (the real CLI, if it runs), the same work plus argument parsing and rich;
   * ``dense``: our own re-implementation of kohya's ``svd_merge_lora.py`` method — all dense
     deltas first, then per module a full ``torch.linalg.svd`` and kohya's 0.99-quantile clamp
     (``--no-clamp`` to leave the clamp out). Slow on a CPU: ``--skip-dense`` skips it.
3. Measures every result against the exact ``B − A`` in fp64:
   sqrt(Σ_modules ‖approx − exact‖² / Σ_modules ‖exact‖²), computed from the low-rank factors
   (QR of the stacked factors, never a dense matrix; :func:`dense_rel_error` is the dense
   oracle the tests check it against).

The bench's own code imports nothing heavy at module level, so a ``--worker`` child pays for
exactly what the merge command pays for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # merge_reference beside this file

from merge_reference import (  # noqa: E402  (the reference library: module sets, pair, errors, methods)
    KOHYA_CLAMP_QUANTILE,
    merge_dense,
    merge_ours,
    module_shapes,
    rel_error,
    select_modules,
    write_pair,
)

DOC_BEGIN = "<!-- merge-bench:begin -->"
DOC_END = "<!-- merge-bench:end -->"


# --------------------------------------------------------------------------- subprocess workers


def worker(args: argparse.Namespace) -> int:
    """One merge, in this (fresh) process; writes its phase timings to ``--report``."""
    t0 = time.perf_counter()
    report = {"method": args.worker, "started_wall": time.time()}
    import torch

    if args.device.startswith("cuda"):
        torch.zeros(1, device=args.device)  # CUDA context: part of what the user waits for
    report["import_torch"] = time.perf_counter() - t0
    paths = [Path(p) for p in args.models]
    if args.worker == "ours":
        t = time.perf_counter()
        from engine.merge.svd import save_merge

        report["import_engine"] = time.perf_counter() - t
        first = []

        def progress(done, total, name):
            if not first:
                first.append(time.perf_counter())

        t = time.perf_counter()
        result = merge_ours(paths, args.ratios, new_rank=args.new_rank, new_conv_rank=args.new_conv_rank,
                            device=args.device, progress=progress)
        t_merged = time.perf_counter()
        report["merge_seconds"] = result.seconds  # MergeResult.seconds: load + merge + input hashes
        report["load_and_first_module"] = first[0] - t
        report["merge_rest"] = t_merged - first[0]
        save_merge(result, args.save_to, args.save_precision)
        report["save"] = time.perf_counter() - t_merged
        report["modules"] = len(result.modules)
    else:
        from engine.lora.files import save_lora_file

        timings: dict = {}
        t = time.perf_counter()
        merged = merge_dense(paths, args.ratios, new_rank=args.new_rank, new_conv_rank=args.new_conv_rank,
                             device=args.device, clamp_quantile=None if args.worker == "dense-noclamp" else KOHYA_CLAMP_QUANTILE,
                             timings=timings)
        t_merged = time.perf_counter()
        report.update(timings)
        report["merge_seconds"] = t_merged - t
        meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(args.new_rank)}
        save_lora_file(args.save_to, merged, meta, args.save_precision)
        report["save"] = time.perf_counter() - t_merged
        report["modules"] = len(merged)
    report["in_process_total"] = time.perf_counter() - t0
    Path(args.report).write_text(json.dumps(report))
    return 0


def run_child(command: list[str], env: dict, log: Path) -> dict:
    """Run ``command``; its wall time and its peak RSS.

    The peak RSS comes from GNU ``/usr/bin/time`` (its ``%M``), not from this process's
    ``wait4``: Linux carries the RSS a process had when it called ``exec`` into its ``ru_maxrss``,
    so a child forked straight from this (big: torch, diffusers, the pair) process would report
    this process's size. ``time`` is a few MB, so what it reports is the command's own peak.
    Without ``/usr/bin/time``, a minimal ``python -c`` launcher does the same job (it adds
    that interpreter's ~10 MB).
    """
    rss_file = log.with_suffix(".rss")
    if Path("/usr/bin/time").is_file():
        wrapped = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *command]
    else:
        launcher = (
            "import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, st, ru = os.wait4(p.pid, 0); "
            "open(sys.argv[1], 'w').write(f'{ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime}'); "
            "sys.exit(os.waitstatus_to_exitcode(st))"
        )
        wrapped = [sys.executable, "-S", "-c", launcher, str(rss_file), *command]
    with open(log, "w") as out:
        started_wall = time.time()
        started = time.perf_counter()
        code = subprocess.run(wrapped, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}):\n{log.read_text()[-3000:]}")
    last = rss_file.read_text().strip().splitlines()[-1].split()
    return {"wall": wall, "peak_rss_mb": int(last[0]) / 1024, "launched_wall": started_wall,
            "user_s": float(last[1]), "sys_s": float(last[2])}


def timed(method: str, paths: list[Path], folder: Path, args, env: dict, tag: str) -> dict:
    """One fresh-process run of ``method`` (ours, dense, dense-noclamp or cli); its figures."""
    save_to = folder / f"{method}-{tag}.safetensors"
    report = folder / f"{method}-{tag}.json"
    ratios = ["1", "-1"]  # models B A: +1·B − 1·A, as a kohya batch file has it
    models = [str(paths[1]), str(paths[0])]
    ranks = ["--new_rank", "16"] + (["--new_conv_rank", "16"] if args.conv else [])
    if method == "cli":
        command = [str(Path(sys.executable).with_name("copylora")), "merge", "--save_to", str(save_to), "--models", *models,
                   "--ratios", *ratios, *ranks, "--device", args.device, "--save_precision", "fp16"]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--save_to", str(save_to),
                   "--models", *models, "--ratios", *ratios, *ranks, "--device", args.device,
                   "--save_precision", "fp16", "--report", str(report)]
    figures = run_child(command, env, folder / f"{method}-{tag}.log")
    if report.is_file():
        inner = json.loads(report.read_text())
        inner["python_start"] = inner.pop("started_wall") - figures["launched_wall"]
        figures["phases"] = inner
    elif method == "cli":
        stats = save_to.with_name(save_to.stem + ".stats.json")
        figures["phases"] = {"merge_seconds": json.loads(stats.read_text())["seconds"]} if stats.is_file() else {}
    figures["output"] = str(save_to)
    return figures


# --------------------------------------------------------------------------- one variant


def machine() -> dict:
    import platform

    import torch

    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        plain = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, timeout=10, env=plain).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        nproc = str(len(os.sched_getaffinity(0)))
    memory = ""
    try:
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        memory = f"{kb / 1024**2:.0f} GiB"
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": model, "nproc": nproc, "memory": memory, "torch": torch.__version__, "python": platform.python_version(),
            "gpu": gpu, "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "(unset)")}


def run_variant(family: str, conv: bool, args, scratch: Path) -> list[dict]:
    from engine.lora.files import load_lora_file
    from engine.merge.svd import merge_loras, save_merge

    label = f"{family}{' +conv' if conv else ''}"
    shapes = select_modules(module_shapes(family, conv), args.limit, args.every)
    subset = args.limit is not None or args.every is not None
    folder = scratch / f"{family}{'-conv' if conv else ''}"
    t = time.perf_counter()
    paths = write_pair(shapes, folder, family, seed=args.seed)
    print(f"[{label}] {len(shapes)} modules; pair written in {time.perf_counter() - t:.1f} s "
          f"({paths[0].stat().st_size / 1e6:.1f} MB each)", flush=True)
    a_file, b_file = load_lora_file(paths[0]).modules, load_lora_file(paths[1]).modules
    exact_inputs = [(b_file, 1.0), (a_file, -1.0)]

    # Our result's error in memory (fp32) and after saving in fp16 / bf16 (in this process).
    result = merge_ours([paths[1], paths[0]], [1.0, -1.0], new_rank=16, new_conv_rank=16 if conv else None, device=args.device)
    precision_errors = {"fp32 (in memory)": rel_error(result.modules, exact_inputs)}
    result64 = merge_loras([paths[1], paths[0]], [1.0, -1.0], new_rank=16, new_conv_rank=16 if conv else None,
                           device=args.device, precision="fp64")
    precision_errors["fp64 merge (in memory)"] = rel_error(result64.modules, exact_inputs)
    del result64
    for precision in ("fp16", "bf16"):
        saved, _ = save_merge(result, folder / f"ours-{precision}.safetensors", precision)
        precision_errors[f"{precision} file"] = rel_error(load_lora_file(saved).modules, exact_inputs)
    print(f"[{label}] ours rel. error: " + ", ".join(f"{k} {v:.2e}" for k, v in precision_errors.items()), flush=True)

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    methods = ["ours"] * (args.repeat + 1) + ["cli"] * (args.repeat if args.cli else 0)
    if not args.skip_dense:
        methods.append("dense-noclamp" if args.no_clamp else "dense")
    runs: dict[str, list[dict]] = {}
    for index, method in enumerate(methods):
        if method == "ours" and index == 0:  # warm-up: page cache, .pyc files
            timed("ours", paths, folder, args, env, "warmup")
            continue
        load_before = os.getloadavg()[0]
        try:
            figures = timed(method, paths, folder, args, env, f"{index}")
        except RuntimeError as exc:
            print(f"[{label}] {method}: FAILED, left out\n{exc}", flush=True)
            continue
        figures["loadavg_before"] = load_before
        figures["loadavg_after"] = os.getloadavg()[0]
        figures["rel_error"] = rel_error(load_lora_file(figures["output"]).modules, exact_inputs)
        runs.setdefault(method, []).append(figures)
        print(f"[{label}] {method}: {figures['wall']:.2f} s whole process, merge {figures['phases'].get('merge_seconds', float('nan')):.2f} s, "
              f"peak RSS {figures['peak_rss_mb']:.0f} MB, rel. error {figures['rel_error']:.2e} "
              f"(load avg {load_before:.2f} -> {figures['loadavg_after']:.2f})", flush=True)

    rows = []
    for method, figures in runs.items():
        walls = sorted(f["wall"] for f in figures)
        median = figures[sorted(range(len(figures)), key=lambda i: figures[i]["wall"])[len(figures) // 2]]
        rows.append({
            "family": family, "conv": conv, "modules": len(shapes), "subset": subset,
            "subset_rule": (f"every {args.every}th" if args.every else "") + (f" {args.limit} smallest" if args.limit else ""),
            "method": method, "device": args.device, "runs": len(figures),
            "wall_median": median["wall"], "wall_min": walls[0], "wall_max": walls[-1],
            "merge_seconds": median["phases"].get("merge_seconds"),
            "peak_rss_mb": max(f["peak_rss_mb"] for f in figures),
            "rel_error": median["rel_error"], "phases": median["phases"],
            "user_s": median["user_s"], "sys_s": median["sys_s"],
            "loadavg": [min(min(f["loadavg_before"], f["loadavg_after"]) for f in figures),
                        max(max(f["loadavg_before"], f["loadavg_after"]) for f in figures)],
            "precision_errors": precision_errors if method == "ours" else None,
        })
    return rows


# --------------------------------------------------------------------------- report


def _mb(value: float) -> str:
    return f"{value / 1024:.2f} GiB" if value >= 1024 else f"{value:.0f} MiB"


METHOD_NAMES = {
    "ours": "ours (merge_loras + save_merge)",
    "cli": "ours via `copylora merge` CLI",
    "dense": "dense SVD, kohya method (0.99 clamp)",
    "dense-noclamp": "dense SVD, no clamp",
}


def render(results: dict) -> str:
    """The Merge section's generated part (machine, commands, tables) from the JSON results."""
    rows = sorted(results["rows"], key=lambda r: (r["family"] != "sd15", r["conv"], r["subset"], list(METHOD_NAMES).index(r["method"])))
    m = results["machine"]
    lines = [
        DOC_BEGIN,
        "<!-- generated by bench/merge_bench.py --doc from its JSON results; edits between the markers are overwritten -->",
        "",
        f"Machine: {m['cpu'] or 'unknown CPU'}, `nproc` = {m['nproc']}, {m['memory']} RAM"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; Python {m['python']}, torch {m['torch']}; "
        f"child processes ran with OMP_NUM_THREADS={m['omp_num_threads']}. Measured {results['date']}.",
        "",
        "Commands:",
        "",
        "```",
        *results["commands"],
        "```",
        "",
        "| family | modules | method | whole process (wall) | its CPU time (user+sys) | merge only | peak RSS | rel. error vs exact B−A | load avg during |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        fam = r["family"].upper().replace("SD15", "SD1.5") + (" +conv" if r["conv"] else "")
        modules = f"{r['modules']}" + (f" (subset: {r['subset_rule'].strip()})" if r["subset"] else "")
        wall = f"{r['wall_median']:.2f} s" if r["wall_median"] < 100 else f"{r['wall_median']:.0f} s"
        if r["runs"] > 1:
            wall += f" (median of {r['runs']}, {r['wall_min']:.2f}–{r['wall_max']:.2f})"
        merge = f"{r['merge_seconds']:.2f} s" if r.get("merge_seconds") is not None else "—"
        device = "" if r["device"] == "cpu" else f" [{r['device']}]"
        cpu = r["user_s"] + r["sys_s"]
        lines.append(f"| {fam} | {modules} | {METHOD_NAMES[r['method']]}{device} | {wall} | {cpu:.2f} s | {merge} | {_mb(r['peak_rss_mb'])} | "
                     f"{r['rel_error']:.2e} | {r['loadavg'][0]:.2f}–{r['loadavg'][1]:.2f} |")
    lines += ["", "Where the time of our whole process goes (median run; seconds):", "",
              "| family | modules | python start | import torch | import engine | load inputs (+ 1st module) | merge rest (+ inputs' sha256) "
              "| save (fp16 + stats.json) | exit | whole process |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["method"] != "ours":
            continue
        p = r["phases"]
        fam = r["family"].upper().replace("SD15", "SD1.5") + (" +conv" if r["conv"] else "")
        lines.append(f"| {fam} | {r['modules']} | {p['python_start']:.2f} | {p['import_torch']:.2f} | {p['import_engine']:.2f} | "
                     f"{p['load_and_first_module']:.2f} | {p['merge_rest']:.2f} | {p['save']:.2f} | "
                     f"{r['wall_median'] - p['python_start'] - p['in_process_total']:.2f} | {r['wall_median']:.2f} |")
    dense_rows = [r for r in rows if r["method"].startswith("dense")]
    if dense_rows:
        lines += ["", "Where the time of the dense method goes (seconds):", "",
                  "| family | modules | method | python start + import torch | load | dense deltas | SVDs + clamp | save | exit | whole process |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in dense_rows:
            p = r["phases"]
            fam = r["family"].upper().replace("SD15", "SD1.5") + (" +conv" if r["conv"] else "")
            lines.append(f"| {fam} | {r['modules']} | {r['method']} | {p['python_start'] + p['import_torch']:.2f} | {p['load']:.2f} | "
                         f"{p['dense']:.1f} | {p['svd']:.1f} | {p['save']:.2f} | {r['wall_median'] - p['python_start'] - p['in_process_total']:.2f} | "
                         f"{r['wall_median']:.1f} |")
    lines += ["", "Our result's error vs the exact B−A by storage precision (same merge, saved three ways):", "",
              "| family | modules | fp64 merge (merge_loras keeps fp32 factors) | fp32 merge, in memory | fp32 merge → fp16 file | fp32 merge → bf16 file |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["method"] == "ours" and r.get("precision_errors"):
            e = r["precision_errors"]
            fam = r["family"].upper().replace("SD15", "SD1.5") + (" +conv" if r["conv"] else "")
            errors = (e["fp64 merge (in memory)"], e["fp32 (in memory)"], e["fp16 file"], e["bf16 file"])
            lines.append(f"| {fam} | {r['modules']} | " + " | ".join(f"{x:.2e}" for x in errors) + " |")
    targets = [r for r in rows if r["method"] == "ours" and r["family"] == "sd15" and not r["subset"]]
    if targets:
        lines += ["", "Targets (SD1.5 pair, ours: ≤ 3 s whole process, ≤ 0.5 GB = 477 MiB peak RSS):", ""]
        for r in targets:
            ok_t, ok_m = r["wall_median"] <= 3.0, r["peak_rss_mb"] * 2**20 <= 0.5e9
            lines.append(f"- SD1.5{' +conv' if r['conv'] else ''} ({r['modules']} modules): {r['wall_median']:.2f} s "
                         f"{'PASS' if ok_t else 'FAIL'}, {_mb(r['peak_rss_mb'])} {'PASS' if ok_m else 'FAIL'}")
    lines += ["", DOC_END]
    return "\n".join(lines)


def write_doc(path: Path, results: dict) -> None:
    block = render(results)
    text = path.read_text() if path.is_file() else (
        "# Benchmarks\n\n## Merge\n\nSVD difference merge (+1·B − 1·A → rank 16) of a full-size rank-8 LoRA pair: "
        "our exact low-rank merge against kohya's dense-SVD method. Produced by `bench/merge_bench.py`.\n\n"
        f"{DOC_BEGIN}\n{DOC_END}\n")
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        text = head + block + rest.split(DOC_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def merge_results(old: dict | None, new: dict) -> dict:
    """``new`` rows replace ``old`` rows of the same (family, conv, modules, method, device)."""
    if not old:
        return new
    key = lambda r: (r["family"], r["conv"], r["modules"], r["method"], r["device"])  # noqa: E731
    replaced = {key(r) for r in new["rows"]}
    rows = [r for r in old["rows"] if key(r) not in replaced] + new["rows"]
    commands = old.get("commands", []) + [c for c in new["commands"] if c not in old.get("commands", [])]
    return {**new, "rows": rows, "commands": commands}


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("sd15", "sdxl", "all"), default="sd15")
    parser.add_argument("--conv", action="store_true", help="include ResNet/sampler convs (conv rank 8 in, 16 out)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both methods)")
    parser.add_argument("--skip-dense", action="store_true", help="leave out the (slow) dense method")
    parser.add_argument("--no-clamp", action="store_true", help="dense method without kohya's 0.99-quantile clamp")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="leave out the `copylora merge` CLI runs")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of ours (after one warm-up; default 3)")
    parser.add_argument("--limit", type=int, help="only the N smallest modules (kinds in turn): quick runs")
    parser.add_argument("--every", type=int, help="only every N-th module (a subset that keeps the size mix)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-json", type=Path, help="results JSON; rows of earlier runs in it are kept (same rows replaced)")
    parser.add_argument("--doc", type=Path, help="write the results in --out-json (or this run's) into this markdown file")
    parser.add_argument("--doc-only", action="store_true", help="run nothing: write --doc from the results in --out-json")
    parser.add_argument("--scratch", type=Path, help="folder for the LoRA files (default: a temporary folder, removed)")
    # worker mode (internal): one merge in this process
    parser.add_argument("--worker", choices=("ours", "dense", "dense-noclamp"), help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--ratios", nargs="+", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--new_rank", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--new_conv_rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save_to", help=argparse.SUPPRESS)
    parser.add_argument("--save_precision", default="fp16", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.doc_only:
        if not (args.out_json and args.out_json.is_file() and args.doc):
            sys.exit("--doc-only needs an existing --out-json file and --doc")
        write_doc(args.doc, json.loads(args.out_json.read_text()))
        print(f"wrote {args.doc}")
        return 0
    import shutil
    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA GPU here")
    families = ["sd15", "sdxl"] if args.family == "all" else [args.family]
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="merge-bench-"))
    command = "OMP_NUM_THREADS={} python bench/merge_bench.py {}".format(
        os.environ["OMP_NUM_THREADS"], " ".join(a for a in (argv if argv is not None else sys.argv[1:])))
    rows = []
    try:
        for family in families:
            rows += run_variant(family, args.conv, args, scratch)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "commands": [command.strip()], "rows": rows}
    if args.out_json:
        old = json.loads(args.out_json.read_text()) if args.out_json.is_file() else None
        results = merge_results(old, results)
        args.out_json.write_text(json.dumps(results, indent=1))
    if args.doc:
        write_doc(args.doc, results)
        print(f"wrote {args.doc}")
    print(render(results))
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    sys.exit(main())
