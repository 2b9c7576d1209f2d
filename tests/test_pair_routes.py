"""The one-LoRA routes (``method = "addift"`` / ``"slider"``, engine.project.pair_route): what
each step feeds the U-Net, that each trains, resumes bit for bit, makes its result at its
multiplier and goes through the queue (killed and resumed) like the copier routes; and the
projects they cannot train fail at ``check`` with one line each."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from engine.errors import ValidationError
from engine.project.folder import load_project, save_project
from engine.project.outputs import Result, SideLora, artifacts
from engine.project.pair_route import PAIR, addift_timestep
from engine.project.plan import make_plan, training_order, twin_problem
from tests.helpers import copy_example, quiet, write_png

torch = pytest.importorskip("torch")

STEPS = 6


def make(root, method: str, **train):
    root = copy_example(root) if not (root / "copylora.toml").exists() else root
    project = load_project(root)
    project.info.method = method
    for key, value in {"max_train_steps": STEPS, "max_train_epochs": None, "resolution": [128, 192], "save_every_n_steps": 3,
                       "save_precision": "float", **train}.items():
        setattr(project.train, key, value)
    save_project(project)
    return make_plan(load_project(root))


def tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def test_addift_timesteps_sweep_the_range_as_traintrain_does():
    """min + (max − min)·{0.1, 0.3, 0.5, 0.7, 0.9}, each for an even step and the odd one after it."""
    assert [addift_timestep(s, 500, 1000) for s in range(12)] == [550, 550, 650, 650, 750, 750, 850, 850, 950, 950, 550, 550]
    assert [addift_timestep(s, 0, 1000) for s in range(0, 10, 2)] == [100, 300, 500, 700, 900]
    assert addift_timestep(9, 900, 1000) == 990


@pytest.mark.parametrize("method", ["addift", "slider"])
def test_each_step_feeds_the_unet_what_the_route_says(tmp_path, tiny, monkeypatch, method):
    """ADDifT: the frozen base (multiplier 0) on noisy A, the LoRA at +m on noisy B (even steps),
    then the base on noisy B and the LoRA at −m on noisy A (odd), one noise and one timestep;
    slider: the LoRA at +m on noisy B and at −m on noisy A, one noise, one timestep."""
    from engine.train import pair_training
    from engine.train.pair_training import PairStep, train_pair

    plan = make(tmp_path, method, max_train_steps=2, pair_multiplier=0.5)
    calls = []
    real = PairStep.unet

    def recording(self, noisy, timesteps, cond, added, multiplier):
        calls.append((multiplier, noisy.detach().clone(), timesteps.clone(), self.run.data.latents[0].clone(),
                      self.data_b.latents[0].clone()))
        return real(self, noisy, timesteps, cond, added, multiplier)

    monkeypatch.setattr(PairStep, "unet", recording)
    assert pair_training.step_type(method).__name__ == ("AddiftStep" if method == "addift" else "SliderStep")
    train_pair(plan, model=tiny, log=quiet)
    scheduler = tiny.noise_scheduler
    assert [c[0] for c in calls] == ([0.0, 0.5, 0.0, -0.5] if method == "addift" else [0.5, -0.5, 0.5, -0.5])
    for step in range(2):
        first, second = calls[2 * step], calls[2 * step + 1]
        t = first[2]
        assert torch.equal(t, second[2])  # one timestep for both pictures
        if method == "addift":
            assert int(t[0]) == addift_timestep(step, 0, 1000)
        x_a, x_b = first[3], first[4]
        alpha = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        # one noise: solve each noisy latent for it and compare
        seen_first, seen_second = (x_a, x_b) if method == "addift" and step % 2 == 0 else (x_b, x_a)
        noise_first = (first[1] - alpha.sqrt() * seen_first) / (1 - alpha).sqrt()
        noise_second = (second[1] - alpha.sqrt() * seen_second) / (1 - alpha).sqrt()
        assert torch.allclose(noise_first, noise_second, atol=1e-4)


@pytest.mark.parametrize("method", ["addift", "slider"])
def test_a_route_trains_resumes_bit_for_bit_and_makes_its_result(tmp_path, tiny, method):
    from engine.merge.project_result import make_result
    from engine.train.controls import TrainControls
    from engine.train.pair_training import train_pair

    plan = make(tmp_path / "once", method)
    assert plan.trained == (PAIR,) and twin_problem(plan) == f"the {method} route trains one LoRA on the pair"
    assert "one LoRA on A and B together" in training_order(plan)
    assert list(artifacts(plan)) == ["PAIR", "result", "stats", "grid"]
    once = train_pair(plan, model=tiny, log=quiet)
    assert once.status == "done" and once.step == STEPS and once.lora_path.name == "example-monochrome_PAIR.safetensors"
    assert SideLora(plan, PAIR).status().current
    route = json.loads(metadata(once.lora_path)["copylora_route"])
    assert route == {"method": method, "multiplier": 0.25, "timesteps": [0, 1000]}
    weights = tensors(once.lora_path)
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_up" in k)  # it learned something

    # stopped at step 3 (a checkpoint), resumed: the same tensors, bit for bit
    halves = make(tmp_path / "halves", method)
    seen = []
    stopped = train_pair(halves, model=tiny, log=quiet,
                         controls=TrainControls(on_progress=lambda p: seen.append(p.step), should_stop=lambda: bool(seen) and seen[-1] >= 3))
    assert stopped.status == "stopped" and stopped.step == 3
    lines: list[str] = []
    resumed = train_pair(halves, model=tiny, resume=True, log=lines.append)
    assert any("resuming PAIR from step 3" in line for line in lines)
    got = tensors(resumed.lora_path)
    assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights)

    # the result: the LoRA at its multiplier, so strength 1 is the +m state it trained in
    lora, stats, _ = make_result(plan, device="cpu")
    assert Result(plan).status().current
    made = json.loads(metadata(lora)["copylora_merge"])
    assert [(i["file"], i["ratio"]) for i in made["inputs"]] == [("example-monochrome_PAIR.safetensors", 0.25)]
    assert json.loads(metadata(lora)["copylora_route"]) == {"method": method}
    from engine.lora.files import load_lora_file
    from engine.lora.weights import lora_delta

    trained, result = load_lora_file(once.lora_path).modules, load_lora_file(lora).modules
    # The result is saved in fp16 (save_precision): each factor rounds at 2^-11 ≈ 4.9e-4 relative,
    # so their product is off by up to about twice that of the delta's largest entry. The bound was
    # 1e-4, under fp16's own rounding: the commit that passed on 2026-12-03 failed on 2026-12-04
    # (fresh install, transformers 5.25.0) with 1.3e-4. A wrong multiplier or merge is off by tens of percent.
    for name in list(trained)[:3]:
        full = lora_delta(*trained[name]).float()
        assert torch.allclose(lora_delta(*result[name]).float(), 0.25 * full, atol=2e-3 * float(full.abs().max()) + 1e-8)

    # a new multiplier retrains (it is in the fingerprint) and makes the result stale
    project = load_project(plan.project.root)
    project.train.pair_multiplier = 0.5
    save_project(project)
    changed = make_plan(load_project(plan.project.root))
    assert SideLora(changed, PAIR).status().state == "stale" and Result(changed).status().state == "stale"


def test_the_copier_routes_keep_their_fingerprints(tmp_path):
    """The new [train] keys at their defaults (whole schedule, multiplier 0.25) change no
    copier-route fingerprint: files and checkpoints made before them stay current."""
    import hashlib
    from dataclasses import asdict

    from engine.project.provenance import training_fingerprint

    plan = make(tmp_path, "svd-merge")
    sp = plan.side("a")
    params = asdict(sp.params)
    for key in ("max_train_epochs", "max_train_steps", "save_every_n_steps", "sample_every_n_steps", "compile", "cuda_graphs", "network_weights",
                "log_with", "logging_dir", "copy_check_every_n_steps", "stop_when_copied", "copy_plateau_gain_db",
                "copy_plateau_checks", "caption", "min_timestep", "max_timestep", "pair_multiplier", "max_token_length"):
        params.pop(key, None)
    images = [hashlib.sha256(i.path.read_bytes()).hexdigest() for i in sp.images]
    payload = {"params": params, "images": images, "base": plan.project.base_model_path(), "family": plan.project.info.model_family}
    assert training_fingerprint(plan, "a") == hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    project = load_project(plan.project.root)
    project.train.min_timestep = 200
    save_project(project)
    assert training_fingerprint(make_plan(load_project(plan.project.root)), "a") != training_fingerprint(plan, "a")


def test_min_timestep_bounds_the_copier_routes_draws(tmp_path, tiny, monkeypatch):
    from engine.train.side_run import SideRun
    from engine.train.trainer import train

    plan = make(tmp_path, "svd-merge", min_timestep=700, max_timestep=720, max_train_steps=4)
    drawn = []
    real = SideRun.draw

    def recording(self, step, scheduler, v_prediction):
        draw = real(self, step, scheduler, v_prediction)
        drawn.append(int(draw.timesteps[0]))
        return draw

    monkeypatch.setattr(SideRun, "draw", recording)
    train(plan, "a", model=tiny, log=quiet)
    assert len(drawn) == 4 and all(700 <= t < 720 for t in drawn)


def problems_of(root) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        load_project(root)
    return [str(p) for p in caught.value.problems]


def test_what_a_one_lora_route_cannot_train_fails_at_check_with_one_line_each(tmp_path):
    root = copy_example(tmp_path / "bad")
    toml = root / "copylora.toml"
    text = toml.read_text()
    toml.write_text(text.replace('method = "svd-merge"', 'method = "adift"'))
    (line,) = problems_of(root)
    assert line.startswith("project.method") and "addift" in line  # unknown route: one line, with the choices

    toml.write_text(text.replace('method = "svd-merge"', 'method = "addift"')
                    .replace("[b]\n", "[b]\nlearning_rate = 0.01\n")
                    .replace("min_timestep = 0\n", "min_timestep = 800\n").replace("max_timestep = 1000\n", "max_timestep = 500\n")
                    .replace('stop_when_copied = ""\n', "stop_when_copied = 30\n"))
    found = problems_of(root)
    assert any(p.startswith("b.learning_rate") and "one set of settings" in p for p in found), found
    assert any(p.startswith("train.stop_when_copied") for p in found), found
    assert any(p.startswith("train.min_timestep") and "below max_timestep" in p for p in found), found

    toml.write_text(text.replace('method = "svd-merge"', 'method = "slider"'))
    write_png(root / "b" / "monochrome.png", size=(96, 160))
    found = problems_of(root)
    assert len(found) == 1 and found[0].startswith("b.folder") and "one size" in found[0], found
    write_png(root / "b" / "second.png")
    assert "the counts must be equal" in problems_of(root)[0]


def test_train_cli_asks_for_side_pair(tmp_path, capsys):
    from copylora_tui.cli.main import main

    plan = make(tmp_path, "addift", max_train_steps=2)
    root = str(plan.project.root)
    assert main(["train", root, "--side", "a"]) != 0
    assert "--side pair" in capsys.readouterr().err
    assert main(["train", root, "--side", "pair", "--device", "cpu"]) == 0
    assert SideLora(make_plan(load_project(root)), PAIR).status().current
    capsys.readouterr()
    assert main(["check", root]) == 0
    out = capsys.readouterr().out
    assert "A→B" in out and "addift (ADDifT)" in out and "PAIR" in out and "pair_multiplier" in out


@pytest.mark.slow
def test_a_pair_route_runs_through_the_queue_killed_and_resumed(tmp_path, monkeypatch):
    """One training job, then the result and the preview; kill -9 of worker and job mid-training
    resumes from the checkpoint and ends with the LoRA of an uninterrupted run."""
    from engine.jobs.enqueue import enqueue_project
    from engine.jobs.queue import Queue
    from engine.jobs.worker import start_detached, stop_worker, worker_pid
    from engine.train.pair_training import train_pair
    from tests.helpers import wait_for
    from tests.test_worker import project

    home = tmp_path / "state"
    monkeypatch.setenv("COPYLORA_HOME", str(home))
    root = project(tmp_path, "pair", save_every=10)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('method = "svd-merge"', 'method = "addift"'))
    queue = Queue(home)
    steps = enqueue_project(queue, root, max_steps=60)
    assert [(s.what, s.action) for s in steps] == [("train A→B (addift)", "queued"), ("result", "queued"), ("preview", "queued")]
    train_job = steps[0].job
    assert train_job.side == PAIR and train_job.total == 60 and steps[1].job.depends_on == [train_job.id]
    try:
        start_detached(home)
        wait_for(lambda: (queue.get(train_job.id).step or 0) >= 25, what="training to pass step 25")
        os.killpg(worker_pid(home), signal.SIGKILL)
        killed_at = queue.get(train_job.id).step
        wait_for(lambda: not worker_pid(home), what="the worker to die")
        time.sleep(1)
        start_detached(home)
        ids = [s.job.id for s in steps]
        wait_for(lambda: all(queue.get(i).status in ("done", "failed") for i in ids), timeout=300, what="the queue to drain")
        jobs = [queue.get(i) for i in ids]
        assert [j.status for j in jobs] == ["done"] * 3, [j.error for j in jobs]
        job = jobs[0]
        assert 0 < job.start_step <= killed_at and job.start_step % 10 == 0 and job.attempts == 2
    finally:
        stop_worker(home)
        pid = worker_pid(home)
        if pid and pid > 0:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    plan = make_plan(load_project(root), max_steps=60)
    assert all(a.status().current for a in artifacts(plan).values()), {k: a.status() for k, a in artifacts(plan).items()}
    reference = project(tmp_path, "reference", save_every=10)
    ref_toml = reference / "copylora.toml"
    ref_toml.write_text(ref_toml.read_text().replace('method = "svd-merge"', 'method = "addift"'))
    expected = tensors(train_pair(make_plan(load_project(reference), max_steps=60), log=quiet).lora_path)
    got = tensors(plan.side(PAIR).lora_path)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert enqueue_project(queue, root, max_steps=60)[0].action == "up to date"


def test_import_kohya_maps_the_timestep_range(tmp_path):
    from engine.project.kohya_import import import_kohya

    path = tmp_path / "config.toml"
    path.write_text('learning_rate = 1e-4\nmin_timestep = 200\nmax_timestep = 400\n', encoding="utf-8")
    result = import_kohya(path)
    assert result.train["min_timestep"] == 200 and result.train["max_timestep"] == 400
    assert {e.key for e in result.used} >= {"min_timestep", "max_timestep"}


def test_stats_of_a_pair_project_name_the_route(tmp_path, tiny, capsys):
    from copylora_tui.cli.main import main
    from engine.merge.project_result import describe, make_result
    from engine.train.pair_training import train_pair

    plan = make(tmp_path, "slider", max_train_steps=2)
    train_pair(plan, model=tiny, log=quiet)
    assert describe(plan).startswith("result = example-monochrome_PAIR.safetensors at 0.25")
    make_result(plan, device="cpu")
    capsys.readouterr()
    assert main(["stats", str(plan.project.root), "--top", "1"]) == 0  # a project folder stands for its result
    out = capsys.readouterr().out
    assert "Δ1=+0.25·example-monochrome_PAIR.safetensors" in out and "route: slider (one LoRA trained on the pair" in out


def test_new_writes_the_routes_defaults_and_check_warns_of_a_copier_length(tmp_path):
    from engine.project.plan import plan_warnings
    from engine.project.scaffold import create_project

    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(120, 120, 120))
    made = create_project(tmp_path / "p", a, b, base_model="tiny", method="addift")
    assert made.train.max_train_steps == 40 and made.train.max_train_epochs is None
    plan = make_plan(made)
    assert plan.side(PAIR).total_steps == 40 and not [w for w in plan_warnings(plan) if "route" in w]
    made.train.max_train_steps = 4000
    save_project(made)
    (warning,) = [w for w in plan_warnings(make_plan(load_project(made.root))) if "addift route" in w]
    assert warning.startswith("train.max_train_steps") and "4000 steps" in warning and "30–100" in warning


def test_a_training_job_of_the_other_kind_fails_with_one_line(tmp_path, monkeypatch):
    """A pair job whose project went back to svd-merge (or the other way round) fails saying
    what to do, instead of training what the project no longer makes."""
    from engine.jobs.queue import TWIN, Queue
    from engine.jobs.runner import run_train
    from engine.train.results import TrainingError

    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    plan = make(tmp_path, "svd-merge")
    queue = Queue(tmp_path / "state")
    job = queue.enqueue("train", str(plan.project.root), side=PAIR, label="train A→B (addift)", total=STEPS)
    with pytest.raises(TrainingError, match="route is now svd-merge, which trains A and B.*copylora run"):
        run_train(queue, queue.get(job.id), {"asked": False})
    make(plan.project.root, "slider")
    twin = queue.enqueue("train", str(plan.project.root), side=TWIN, label="train A+B", total=STEPS)
    with pytest.raises(TrainingError, match="route is now slider, which trains one LoRA on the pair"):
        run_train(queue, queue.get(twin.id), {"asked": False})
    queue.close()


def test_new_on_the_toy_writes_each_routes_measured_settings(tmp_path):
    from engine.project.scaffold import create_project

    a, b = write_png(tmp_path / "a.png", size=(64, 64)), write_png(tmp_path / "b.png", size=(64, 64), colour=(120, 120, 120))
    caption = "a red circle on a blue background"
    addift = create_project(tmp_path / "addift", a, b, base_model="toy", method="addift", caption=caption)
    assert (addift.train.max_train_steps, addift.train.caption, addift.train.learning_rate) == (500, "", 2e-3)
    slider = create_project(tmp_path / "slider", a, b, base_model="toy", method="slider", caption=caption)
    assert (slider.train.max_train_steps, slider.train.caption, slider.train.learning_rate) == (200, caption, 1e-2)
    from engine.project.plan import plan_warnings

    assert not [w for w in plan_warnings(make_plan(addift)) if "caption-free" in w]  # ADDifT is meant caption-free


def test_sample_names_the_one_lora_of_a_pair_route(tmp_path, capsys):
    """`sample --lora a` on an addift project said "does not exist yet (train/merge first)",
    though the route never makes an A LoRA; its one LoRA could not be named (--lora pair)."""
    from copylora_tui.cli.main import EXIT_USAGE, main

    root = make(tmp_path, "addift").project.root
    assert main(["sample", str(root), "--lora", "a"]) == EXIT_USAGE
    assert "this project's route (addift) trains one LoRA on the pair: --lora pair, or merged (its result)" in capsys.readouterr().err
    assert main(["sample", str(root), "--lora", "pair"]) == EXIT_USAGE
    assert "_PAIR.safetensors does not exist yet" in capsys.readouterr().err
