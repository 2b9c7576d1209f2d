"""The differential route end to end through the queue and a real worker: A, then B on A, then
the result and its preview with the check picture; a new A makes B and the result stale."""

from __future__ import annotations

import json

import pytest

from engine.jobs.enqueue import enqueue_project
from engine.jobs.queue import Queue
from engine.jobs.worker import start_detached, stop_worker
from engine.project.folder import load_project
from engine.project.plan import make_plan
from tests.helpers import wait_for
from tests.test_worker import home, project  # noqa: F401 (home is a fixture)

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def differential(tmp_path):
    root = project(tmp_path, "diff")
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('method = "svd-merge"', 'method = "differential"'))
    return root


def metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def test_differential_project_runs_through_the_queue(tmp_path, home):  # noqa: F811
    from engine.hashing import file_sha256

    queue = Queue(home)
    root = differential(tmp_path)
    toml = root / "copylora.toml"  # trained under a caption: the check picture is drawn under it too (it drew an empty prompt)
    toml.write_text(toml.read_text().replace('caption = ""', 'caption = "a grey house"', 1))
    assert load_project(root).train.caption == "a grey house"
    steps = enqueue_project(queue, root, max_steps=4)
    # "train B on A" as its job is named (`copylora run` printed "train B", the queue "train B on A")
    assert [(s.what, s.action) for s in steps] == [("train A", "queued"), ("train B on A", "queued"), ("result", "queued"),
                                                  ("preview", "queued")]
    train_a, train_b, result, preview = (s.job for s in steps)
    assert train_b.label == "train B on A" and train_b.depends_on == [train_a.id]
    assert result.depends_on == [train_a.id, train_b.id] and preview.total == 2 + 2  # grid 1x2, check 2

    start_detached(home, per_gpu=2)  # two slots: B must still wait for A
    ids = [s.job.id for s in steps]
    wait_for(lambda: all(queue.get(i).status in ("done", "failed") for i in ids), timeout=400, what="the queue to drain")
    stop_worker(home)
    jobs = [queue.get(i) for i in ids]
    assert [j.status for j in jobs] == ["done"] * 4, [j.error for j in jobs]
    assert queue.get(train_b.id).started_at >= queue.get(train_a.id).finished_at

    plan = make_plan(load_project(root, check_files=False))
    a_sha = file_sha256(plan.side("a").lora_path)
    route = json.loads(metadata(plan.merged_path)["copylora_route"])
    assert route == {"method": "differential", "base_weights": {"file": plan.side("a").lora_path.name, "sha256": a_sha,
                                                                "multiplier": 1.0, "merged": False}}
    made = json.loads(metadata(plan.merged_path)["copylora_merge"])
    assert [i["file"] for i in made["inputs"]] == [plan.side("b").lora_path.name]
    assert json.loads(plan.stats_path.read_text())["route"] == route
    assert plan.outputs.grid.is_file() and plan.outputs.check.is_file()
    assert queue.get(preview.id).artifacts["check"] == str(plan.outputs.check)
    from PIL import Image

    with Image.open(plan.outputs.check) as check:  # its text says what it shows: the result over A at its multiplier
        assert f"LoRA: {plan.merged_path.name} over {plan.side('a').lora_path.name} at 1, Strengths: \"0, 1\"" in check.info["parameters"]
        assert check.info["parameters"].startswith("a grey house\n")

    again = enqueue_project(queue, root, max_steps=4)
    assert [s.action for s in again] == ["up to date"] * 4, [(s.what, s.reason) for s in again]

    # A new A (another seed on side A only): B trained on the old A is stale, and so is the result.
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('[a]\n', '[a]\nseed = 7\n', 1))
    stale = enqueue_project(queue, root, max_steps=4)
    assert [(s.what, s.action) for s in stale] == [("train A", "queued"), ("train B on A", "queued"), ("result", "queued"),
                                                  ("preview", "queued")]
    assert "A is being trained" in stale[1].reason
