"""Helpers for the app tests (no tests here): project folders, a real queue database with
jobs in every state, fake LoRA and stats files, waiting for a poll, and the screen as text.

Everything the screens show comes from files and the queue database written here through
the engine's own APIs, so the tests exercise the same reads the app makes against a worker.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import time
from pathlib import Path

from engine.jobs.queue import Queue
from engine.train.progress import Progress
from tests.helpers import EXAMPLE

FIXED_T = 1_767_225_600.0  # 2026-01-01 00:00 UTC: every stored time in snapshot tests


def make_projects(root: Path, names: tuple[str, ...] = ("example-monochrome",)) -> Path:
    """``root/projects/<name>`` copies of the shipped example (without outputs)."""
    projects = root / "projects"
    for name in names:
        shutil.copytree(EXAMPLE, projects / name, ignore=shutil.ignore_patterns("output"))
        if name != "example-monochrome":
            toml = projects / name / "copylora.toml"
            toml.write_text(toml.read_text().replace('name = "example-monochrome"', f'name = "{name}"'))
    projects.mkdir(parents=True, exist_ok=True)
    return projects


class Env:
    """The test's state folder and the calls the app made to start a worker."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.worker_calls: list = []


def use_home(monkeypatch, tmp_path: Path, *, fake_worker: bool = True) -> Env:
    """A private queue (COPYLORA_HOME), text-only pictures, and (unless asked otherwise) no
    real worker daemon: ``ensure_running`` is replaced and its calls recorded."""
    env = Env(tmp_path / "state")
    monkeypatch.setenv("COPYLORA_HOME", str(env.home))
    monkeypatch.setenv("COPYLORA_IMAGES", "0")
    if fake_worker:
        import engine.jobs.worker

        def ensure_running(home=None):
            env.worker_calls.append(home)
            return 4242, True

        monkeypatch.setattr(engine.jobs.worker, "ensure_running", ensure_running)
    return env


def running_job(queue: Queue, project: Path, *, side: str = "a", step: int, total: int, points: int = 0,
                eta_s: float = 90.0, it_per_s: float = 12.5, loss: float = 0.1234, smooth: float = 0.11, vram: float | None = 2150.0):
    """A claimed training job with progress and ``points`` stored curve points."""
    import os

    from engine.jobs.procs import process_start

    job = queue.enqueue("train", str(project), side=side, label=f"train {side.upper()}", total=total)
    claimed = queue.claim(None)
    assert claimed.id == job.id
    # "Its process" is this test process: alive, so the job is running, not interrupted.
    queue.set_pid(job.id, os.getpid(), process_start(os.getpid()))
    for i in range(points):
        s = max(1, (i + 1) * step // max(points, 1))
        decay = 0.05 + 0.3 / (1 + i / 5)
        queue.report_progress(job.id, Progress(s, total, decay * 1.1, decay, 1e-4, it_per_s, eta_s, s / it_per_s, vram), point=True)
    queue.report_progress(job.id, Progress(step, total, loss, smooth, 1e-4, it_per_s, eta_s, step / it_per_s, vram), point=True)
    return queue.get(job.id)


def freeze_times(queue: Queue, start: float = FIXED_T) -> None:
    """Fixed timestamps on every job and point: snapshots must not show today's date."""
    with queue.transaction() as db:
        for (job_id,) in db.execute("SELECT id FROM jobs").fetchall():
            base = start + job_id * 600
            db.execute(
                "UPDATE jobs SET created_at = ?, started_at = CASE WHEN started_at IS NULL THEN NULL ELSE ? END,"
                " updated_at = ?, finished_at = CASE WHEN finished_at IS NULL THEN NULL ELSE ? END WHERE id = ?",
                (base, base + 5, base + 125, base + 300, job_id),
            )
        db.execute("UPDATE points SET t = ? + step", (start,))


def write_lora(path: Path, metadata: dict[str, str]) -> Path:
    """A safetensors file with one tiny tensor and the given metadata (header only is read)."""
    header = {"__metadata__": metadata, "x.lora_down.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")
    return path


def mark_trained(project_dir: Path, sides: tuple[str, ...] = ("a", "b")) -> None:
    """Write A/B LoRA files whose fingerprints match the current parameters (as after training)."""
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.project.provenance import training_fingerprint

    plan = make_plan(load_project(project_dir))
    for side in sides:
        sp = plan.side(side)
        write_lora(sp.lora_path, {"copylora_fingerprint": training_fingerprint(plan, side), "copylora_steps": str(sp.total_steps)})


def write_stats(path: Path) -> Path:
    """A merge statistics document in the format the merge writes, with varied rows."""
    modules = []
    specs = [
        ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", "in1", "linear", [320, 320], 0.9990, 0.42),
        ("lora_unet_down_blocks_1_attentions_0_proj_in", "in1", "conv1x1", [320, 320, 1], 0.9700, 0.31),
        ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k", "mid", "linear", [1280, 768], 0.9920, 0.88),
        ("lora_unet_up_blocks_2_attentions_1_transformer_blocks_0_ff_net_0_proj", "out2", "linear", [2560, 640], 0.8800, 1.74),
        ("lora_unet_up_blocks_2_resnets_0_conv1", "out2", "conv3x3", [640, 1280, 3], 0.7600, 2.10),
        ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0", "out3", "linear", [320, 320], 0.9990, 0.55),
    ]
    for name, block, kind, shape, energy, norm in specs:
        modules.append({
            "name": name, "block": block, "kind": kind, "shape": shape, "input_ranks": [8, 8], "kept_rank": 16,
            "singular_values": [norm, norm / 2, norm / 4], "energy_kept": energy, "rel_error": (1 - energy) ** 0.5,
            "input_norms": [norm * 0.8, norm * 0.7], "result_norm": norm, "cos_inputs": 0.91 - norm / 10,
        })
    blocks = []
    for block in ("in1", "mid", "out2", "out3"):
        rows = [m for m in modules if m["block"] == block]
        blocks.append({
            "block": block, "modules": len(rows), "energy_kept": min(m["energy_kept"] for m in rows),
            "input_norms": [sum(m["input_norms"][0] for m in rows), sum(m["input_norms"][1] for m in rows)],
            "result_norm": sum(m["result_norm"] for m in rows),
        })
    document = {
        "file": path.name.replace(".stats.json", ".safetensors"), "family": "sd1", "seconds": 0.25,
        "inputs": [{"file": "example-monochrome_B.safetensors", "sha256": "b" * 64, "ratio": 1.0, "ranks": [8]},
                   {"file": "example-monochrome_A.safetensors", "sha256": "a" * 64, "ratio": -1.0, "ranks": [8]}],
        "modules": modules, "blocks": blocks,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


# Waits are on conditions, so a long limit costs nothing when the condition comes; it only has to
# outlast a machine that other work slows down (CI's two shared cores with other processes beside
# the suite made an 8 s wait for a project screen time out). COPYLORA_TEST_TIME_SCALE changes it.
TIME_SCALE = float(os.environ.get("COPYLORA_TEST_TIME_SCALE", "4"))


async def wait_until(pilot, predicate, timeout: float = 8.0, step: float = 0.05) -> None:
    """Let the app run (polls, threads) until ``predicate()`` holds (within ``timeout`` × TIME_SCALE)."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        await pilot.pause(step)
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; the screen shows:\n{screen_text(pilot.app)}")


def screen_text(app) -> str:
    """The screen as plain text rows (from the SVG screenshot), for 'is it shown' checks."""
    svg = app.export_screenshot()
    rows: dict[float, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)" textLength="[\d.]+" clip-path="[^"]*">(.*?)</text>', svg):
        rows.setdefault(float(m.group(2)), []).append((float(m.group(1)), html.unescape(m.group(3)).replace("\xa0", " ")))
    lines = []
    for y in sorted(rows):
        line = ""
        for x, text in sorted(rows[y]):
            col = int(round(x / 12.2))
            line = line.ljust(col)[:col] + text + line[col + len(text):]
        lines.append(line)
    return "\n".join(lines)


def write_merged(project_dir: Path) -> None:
    """A merged LoRA whose provenance matches the project's current A and B files, and its stats."""
    from engine.hashing import file_sha256 as sha256_file
    from engine.project.folder import load_project
    from engine.project.plan import make_plan

    plan = make_plan(load_project(project_dir))
    merge = plan.project.merge
    inputs = [plan.side("b").lora_path, plan.side("a").lora_path]
    made = {"inputs": [{"file": p.name, "sha256": sha256_file(p), "ratio": r} for p, r in zip(inputs, merge.ratios)],
            "new_rank": merge.new_rank, "new_conv_rank": merge.new_conv_rank or merge.new_rank}
    write_lora(plan.merged_path, {"copylora_merge": json.dumps(made)})
    write_stats(plan.stats_path)


def build_demo(root: Path) -> Path:
    """A projects folder and queue in every state the screens show, with fixed times:
    day-night is trained and merged, example-monochrome is training A, night-sky failed,
    broken has an invalid parameter. Returns the projects folder; COPYLORA_HOME must be set."""
    import os

    projects = make_projects(root, ("example-monochrome", "day-night", "night-sky", "broken"))
    day = projects / "day-night"
    mark_trained(day)
    write_merged(day)
    for path in (day / "output").iterdir():
        os.utime(path, (FIXED_T + 3600, FIXED_T + 3600))
    toml = projects / "broken" / "copylora.toml"
    toml.write_text(toml.read_text().replace("network_dim = 8", "network_dim = 0").replace('optimizer_type = "AdamW8bit"', 'optimizer_type = "adamw9bit"'))
    queue = Queue()
    for side in ("a", "b"):
        job = queue.enqueue("train", str(day.resolve()), side=side, label=f"train {side.upper()}", total=200)
        queue.claim(None)
        queue.report_progress(job.id, Progress(200, 200, 0.08, 0.07, 1e-3, 31.0, 0.0, 6.5, None), point=True)
        queue.finish(job.id, "done", artifacts={"lora": str(day / "output" / f"day-night_{side.upper()}.safetensors")})
    merge = queue.enqueue("merge", str(day.resolve()), label="merge", depends_on=[1, 2])
    queue.claim(None)
    queue.finish(merge.id, "done", artifacts={"lora": str(day / "output" / "day-night.safetensors"), "stats": "day-night.stats.json"})
    sky = (projects / "night-sky").resolve()
    failed = running_job(queue, sky, step=57, total=200)
    queue.finish(failed.id, "failed", error="loss became nan at step 58; lower learning_rate or use mixed_precision = \"bf16\"")
    queue.enqueue("merge", str(sky), label="merge", depends_on=[failed.id])
    with queue.transaction() as db:  # enqueued after the failure: fail it as the queue would have
        queue._fail_dependants(db, failed.id, "failed")
    mono = (projects / "example-monochrome").resolve()
    run = running_job(queue, mono, step=1800, total=4000, points=400, eta_s=176.0, it_per_s=12.5)
    b = queue.enqueue("train", str(mono), side="b", label="train B", total=4000)
    queue.enqueue("merge", str(mono), label="merge", depends_on=[run.id, b.id])
    paused = queue.enqueue("train", str(sky), side="b", label="train B", total=200)
    queue.pause(paused.id)
    freeze_times(queue)
    log = queue.log_path(run.id)
    lines = [f"2026-01-01 00:{m:02d}:00 step {m * 45}/4000 loss {0.3 / (1 + m):.4f} smooth {0.25 / (1 + m):.4f} lr 1.0e-04" for m in range(40)]
    log.write_text("job #%d: train A of example-monochrome on cpu\ncaching latents 50%%\rcaching latents 100%%\n" % run.id + "\n".join(lines) + "\n")
    queue.close()
    return projects


def write_preview(path: Path, *, strengths=(0.0, 1.0), step: int | None = None, side: str | None = None,
                  size: tuple[int, int] = (96, 128), mtime: float | None = None) -> Path:
    """A preview grid as the engine writes it, drawn deterministically, with the ``copylora``
    PNG text chunk: a white label band, then one column per strength, as a colour → monochrome
    LoRA draws them: a red→blue gradient with a yellow square at strength 0 (and for side A's
    LoRA, which copies the colour picture), the same in grey otherwise."""
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    width, height = size
    canvas = Image.new("RGB", (width * len(strengths), height + 16), "white")
    draw = ImageDraw.Draw(canvas)
    for column, strength in enumerate(strengths):
        for y in range(height):
            red, blue = 255 - y * 255 // height, y * 255 // height
            grey = (red * 299 + blue * 114) // 1000
            colour = (red, 80, blue) if not strength or side == "a" else (grey, grey, grey)
            draw.line([(column * width, 16 + y), ((column + 1) * width - 1, 16 + y)], fill=colour)
        square = [column * width + width // 4, 16 + height // 3, column * width + 3 * width // 4, 16 + 2 * height // 3]
        draw.rectangle(square, fill=(250, 200, 40) if not strength or side == "a" else (200, 200, 200))
    record = {"settings": {"prompts": [""], "strengths": list(strengths), "seed": 1234, "steps": 8, "size": [width, height]},
              "model": "tiny", "lora": path.stem, "created": FIXED_T}
    if step is not None:
        record.update(step=step, side=side)
    info = PngInfo()
    info.add_text("copylora", json.dumps(record))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG", pnginfo=info)
    if mtime is not None:
        import os

        os.utime(path, (mtime, mtime))
    return path


async def open_stats(pilot, ready) -> None:
    """From the demo's projects list (once ``ready``), the second project's merge stats, drawn."""
    from copylora_tui.screens.stats import StatsScreen

    await ready(pilot)
    await pilot.press("down", "s")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, StatsScreen) and "6 modules" in screen_text(pilot.app))


def plan_text(app) -> str:
    """The project screen's plan as text (rendered off screen: it sits below the pictures, often
    scrolled out of view)."""
    import io

    from rich.console import Console
    from textual.widgets import Static

    console = Console(width=140, file=io.StringIO(), record=True)
    console.print(app.screen.query_one("#plan", Static).content)
    return console.export_text()


def notices(app) -> list[str]:
    return [n.message for n in app._notifications]


def burst(app, keys: str) -> None:
    """Keys arriving at once, as a lag spike over SSH or a paste delivers them: posted to the app
    without waiting between them (``pilot.press`` waits for each key's handling, which hid
    keys landing in the field focus was leaving). ``keys``: characters, "\\t" tab, "\\r" enter,
    "\\b" backspace, "\\x15" ctrl+u, "\\x0b" ctrl+k, "\\x01" home, "\\x05" end (as a terminal sends them)."""
    from textual import events

    names = {"\t": "tab", "\r": "enter", "\b": "backspace", "\x15": "ctrl+u", "\x0b": "ctrl+k", "\x01": "home", "\x05": "end"}
    for char in keys:
        app.post_message(events.Key(names.get(char, char), char if char.isprintable() else None))
