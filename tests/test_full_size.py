"""Full-size smoke test (opt-in: ``COPYLORA_FULLSIZE=1 pytest -m fullsize tests/test_full_size.py``).

A random-weight full-size SD1.5 diffusers folder (bench/random_model.py) through everything a
user does with a real checkpoint, from the command line: new → check → train 2 steps per side
at 256×384 → merge → sample 2 steps → bake. It needs ~3 GB of RAM and a few minutes on a 2-core
CPU, so the default suite leaves it out; the shapes and loading code of the real model are
what it checks, which the tiny models cannot.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests.helpers import REPO, write_png

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.fullsize,
    pytest.mark.skipif(not os.environ.get("COPYLORA_FULLSIZE"), reason="opt-in: set COPYLORA_FULLSIZE=1 (a few minutes, ~3 GB RAM)"),
]


def test_random_full_size_sd15_end_to_end(tmp_path, capsys):
    from copylora_tui.cli.main import main
    from engine.lora.files import load_lora_file
    from engine.project.folder import load_project, save_project

    sys.path.insert(0, str(REPO))
    from bench.random_model import build_random_sd15

    timings = {}
    started = time.perf_counter()
    base = build_random_sd15(tmp_path / "sd15-random", log=lambda line: None)
    timings["build"] = time.perf_counter() - started
    a = write_png(tmp_path / "a.png", size=(256, 384))
    b = write_png(tmp_path / "b.png", size=(256, 384), colour=(100, 100, 100))
    assert main(["--projects", str(tmp_path), "new", "full", "--a", str(a), "--b", str(b), "--base", str(base)]) == 0
    root = tmp_path / "full"
    project = load_project(root)
    project.train.resolution = [256, 384]
    project.sample.size, project.sample.steps = [256, 384], 2
    save_project(project)
    assert main(["check", str(root)]) == 0
    for side in ("a", "b"):
        started = time.perf_counter()
        assert main(["train", str(root), "--side", side, "--max-steps", "2", "--device", "cpu"]) == 0
        timings[f"train {side}"] = time.perf_counter() - started
    started = time.perf_counter()
    assert main(["merge", "--project", str(root)]) == 0
    timings["merge"] = time.perf_counter() - started
    merged = root / "output" / "full.safetensors"
    lora = load_lora_file(merged)
    assert len(lora.modules) == 192 and lora.metadata["ss_base_model_version"] == "sd_v1"
    started = time.perf_counter()
    assert main(["sample", str(root), "--steps", "2", "--save_to", str(tmp_path / "grid.png")]) == 0
    timings["sample"] = time.perf_counter() - started
    assert (tmp_path / "grid.png").stat().st_size > 0
    started = time.perf_counter()
    assert main(["bake", "--base", str(base), "--lora", str(merged), "--save_to", str(tmp_path / "baked")]) == 0
    timings["bake"] = time.perf_counter() - started
    assert (tmp_path / "baked" / "unet").is_dir()
    with capsys.disabled():
        print("\nfull-size smoke timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
