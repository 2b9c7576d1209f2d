"""Small builders shared by tests: teacher images and project folders on disk."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "projects" / "example-monochrome"

# For a test that needs torch in a module that does not (the module-level pytest.importorskip("torch") of the others).
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")


def write_png(path: Path, size: tuple[int, int] = (96, 144), colour: tuple[int, int, int] = (200, 60, 40)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def copy_example(tmp_path: Path, name: str = "example-monochrome", source: str = "example-monochrome") -> Path:
    """``projects/<source>`` (without outputs) copied to ``tmp_path/<name>``."""
    dest = tmp_path / name
    shutil.copytree(EXAMPLE.parent / source, dest, ignore=shutil.ignore_patterns("output"))
    return dest


def train_sides_apart(root: Path) -> Path:
    """Set ``twin_training = false``: the queue trains A and B as two jobs (for tests of the
    queue's mechanics with two trainings)."""
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("twin_training = true", "twin_training = false"))
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to prove that nothing was written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def quiet(_line: str) -> None:
    """A log that says nothing (trainings in tests)."""


def evaluation_loss(model, latents, cond, *, count: int = 8, seed: int = 0, added_cond: dict | None = None) -> float:
    """Mean denoising loss on ``latents`` at fixed noise and evenly spread timesteps.

    A fixed yardstick (unlike the training loss, which jumps with the random timestep): it
    falls as the LoRA learns to copy the teacher picture. ``added_cond``: SDXL's
    ``added_cond_kwargs`` (see :func:`engine.train.conditioning.added_conditions`).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    scheduler = model.noise_scheduler
    device = model.unet.device
    total = 0.0
    with torch.no_grad():
        for i in range(count):
            t = torch.tensor([int((i + 0.5) * scheduler.config.num_train_timesteps / count)])
            noise = torch.randn(latents.shape, generator=generator)
            noisy = scheduler.add_noise(latents.cpu(), noise, t)
            target = noise if model.prediction_type == "epsilon" else scheduler.get_velocity(latents.cpu(), noise, t)
            pred = model.unet(noisy.to(device, model.unet.dtype), t.to(device), cond.to(device, model.unet.dtype),
                              added_cond_kwargs=added_cond).sample
            total += float(torch.nn.functional.mse_loss(pred.float().cpu(), target))
    return total / count


def diverge_at(monkeypatch, bad_step: int | None, side: str | None = None) -> None:
    """Make the trainer's loss NaN at ``bad_step`` (0-based; None: every step), for ``side``
    only if given: the side's loss is wrapped, as a diverging run would compute it."""
    from engine.train.side_run import SideRun

    computed = SideRun.loss

    def loss(self, pred, draw, *args):
        value = computed(self, pred, draw, *args)
        hit = (bad_step is None or draw.step == bad_step) and (side is None or self.side == side)
        return value * float("nan") if hit else value

    monkeypatch.setattr(SideRun, "loss", loss)


def rendered(renderable) -> str:
    """A Rich renderable as the text a wide terminal shows."""
    import io

    from rich.console import Console

    console = Console(width=400, file=io.StringIO(), record=True)
    console.print(renderable)
    return console.export_text()


def set_keys(root, table: str, **values) -> None:
    """Replace (or add) keys of one table of the project's TOML, as a user's editor would."""
    toml = root / "copylora.toml"
    lines = toml.read_text().splitlines()
    start = lines.index(f"[{table}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for key, value in values.items():
        found = [i for i in range(start, end) if lines[i].split("=")[0].strip() == key]
        if found:
            lines[found[0]] = f"{key} = {value}"
        else:
            lines.insert(start + 1, f"{key} = {value}")
            end += 1
    toml.write_text("\n".join(lines) + "\n")


def check(root, capsys) -> tuple[int, str]:
    from copylora_tui.cli.main import main

    code = main(["check", str(root)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


class Boom:
    """A pickle payload whose loading would run a command (never executed by the check)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def one_line(err: str) -> str:
    # `train` first says its torch thread count (engine/threads.py); that is not the error
    lines = [line for line in err.strip().splitlines() if not line.startswith("copylora: threads:")]
    assert len(lines) == 1, err
    return lines[0]


def run_preview_job(tmp_path: Path, monkeypatch, lora_file: Path, **changes) -> dict:
    """The queue's preview job (runner.run_sample), as the worker runs it, on a copy of the
    example whose merged LoRA is ``lora_file``; ``changes``: tables of the project to replace
    (``sample={"size": [64, 64]}``). Returns the job's artifacts; its log goes to stdout."""
    import shutil
    from dataclasses import replace

    from engine.jobs import runner
    from engine.jobs.queue import Queue
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan

    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    root = copy_example(tmp_path)
    project = load_project(root)
    save_project(replace(project, **{table: replace(getattr(project, table), **values) for table, values in changes.items()}))
    plan = make_plan(load_project(root))
    plan.merged_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(lora_file, plan.merged_path)
    queue = Queue()
    try:
        job = queue.enqueue("sample", str(root), label="preview")
        return runner.run_sample(queue, queue.get(job.id), {"asked": False})
    finally:
        queue.close()


def wait_for(condition, timeout: float = 180.0, what: str = "condition"):
    """``condition()``'s first true value, polled every 0.1 s (a worker's jobs, a process' end)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")



def mount_tmpfs(where: Path, size: str = "2M", options: str = ""):
    """A real small filesystem (tmpfs) at ``where`` (made if missing), for a full or read-only
    disk as users meet them; the test is skipped where this machine lets no test mount one.
    A generator for a fixture: ``yield from mount_tmpfs(path, "40M")``; unmounted after."""
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options}size={size}", "tmpfs", str(where)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount_read_only(where: Path) -> None:
    import subprocess

    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
