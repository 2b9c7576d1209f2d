"""The overfit trainer on the tiny model, on CPU: learning, resume bit-identity, bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from engine.errors import CopyloraError  # noqa: E402
from engine.project.folder import load_project  # noqa: E402
from engine.project.plan import make_plan  # noqa: E402
from engine.train.controls import TrainControls  # noqa: E402
from engine.train.trainer import TrainingError, train  # noqa: E402
from tests.helpers import copy_example, diverge_at, evaluation_loss  # noqa: E402


def make(tmp_path, steps: int, **train):
    root = copy_example(tmp_path)
    project = load_project(root)
    project.train = replace(project.train, save_precision="float", **train)
    return make_plan(project, max_steps=steps)


def quiet(_line: str) -> None:
    pass


def teacher_latents(model, plan, side="a"):
    from engine.train.conditioning import encode_prompt
    from engine.train.teacher import encode_latents, load_bucketed

    sp = plan.side(side)
    pixels = load_bucketed(sp.images[0].path, sp.buckets[0])
    return encode_latents(model.vae, pixels), encode_prompt(model, "")


def test_overfits_the_teacher_image(tmp_path, tiny):
    from engine.lora.network import apply_lora_file

    plan = make(tmp_path, 80, learning_rate=2e-3)
    latents, cond = teacher_latents(tiny, plan)
    before = evaluation_loss(tiny, latents, cond)
    result = train(plan, "a", model=tiny, log=quiet)
    network = apply_lora_file(result.lora_path, tiny)
    try:
        after = evaluation_loss(tiny, latents, cond)
    finally:
        network.remove()
    assert evaluation_loss(tiny, latents, cond) == pytest.approx(before)  # removed cleanly
    print(f"evaluation loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before


def _lora_tensors(state_or_path):
    from engine.lora.files import load_lora_file

    if isinstance(state_or_path, dict):
        return {n: (v["down"], v["up"]) for n, v in state_or_path["lora"].items()}
    return {n: (w.down, w.up) for n, w in load_lora_file(state_or_path).modules.items()}


def test_resume_is_bit_identical(tmp_path, tiny):
    straight = make(tmp_path / "straight", 40)
    curve: dict[int, float] = {}
    full = train(straight, "a", model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: curve.update({p.step: p.smooth_loss})))

    split = make(tmp_path / "split", 40)
    done = []
    first = train(split, "a", model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 20))
    assert first.status == "stopped" and first.step == 20
    assert not split.side("a").lora_path.exists()
    logs = []
    resumed: dict[int, float] = {}
    second = train(split, "a", model=tiny, resume=True, log=logs.append,
                   controls=TrainControls(on_progress=lambda p: resumed.update({p.step: p.smooth_loss})))
    assert second.status == "done" and second.step == 40
    assert any("resuming A from step 20" in line for line in logs)
    # the smoothed curve goes on from the checkpoint's (it restarted from one raw loss)
    assert resumed[21] == pytest.approx(curve[21], rel=1e-9) and resumed[40] == pytest.approx(curve[40], rel=1e-9)

    expected, got = _lora_tensors(full.lora_path), _lora_tensors(second.lora_path)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name][0], got[name][0]), name
        assert torch.equal(expected[name][1], got[name][1]), name
    # And the weights really moved (a test of equality between two untrained LoRAs proves nothing).
    assert any(float(up.abs().max()) > 0 for _, up in got.values())


def test_a_checkpoint_of_another_epoch_count_resumes_saying_so(tmp_path, tiny):
    """A checkpoint notes its epoch's length: one a copylora of another batching made (the
    picture order changes from there on, the settings do not) resumes with a line saying so;
    one of this count, or of before the note, resumes without it."""
    from engine.train.checkpoint import list_states

    plan = make(tmp_path, 12, save_every_n_steps=4)
    done = []
    train(plan, "a", model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 8))
    newest = list_states(plan.side("a").run_dir)[0]
    state = torch.load(newest, weights_only=True)
    assert state["steps_per_epoch"] == plan.side("a").steps_per_epoch
    for epoch, said in ((plan.side("a").steps_per_epoch, False), (None, False), (99, True)):
        if epoch is None:
            state.pop("steps_per_epoch")
        else:
            state["steps_per_epoch"] = epoch
        torch.save(state, newest)
        logs: list[str] = []
        result = train(plan, "a", model=tiny, resume=True, log=logs.append,
                       controls=TrainControls(on_progress=lambda p: None, should_stop=lambda: True))
        assert result.step == 8 and any("resuming A from step 8" in line for line in logs), logs
        assert any("the checkpoint's epoch was 99 steps" in line for line in logs) == said, (epoch, logs)


def test_truncated_state_is_skipped(tmp_path, tiny):
    from engine.train.checkpoint import list_states

    plan = make(tmp_path, 20, save_every_n_steps=10)
    done = []
    train(plan, "a", model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 15))
    states = list_states(plan.side("a").run_dir)
    assert [s.name for s in states] == ["state-00000015.pt", "state-00000010.pt"]
    states[0].write_bytes(states[0].read_bytes()[:1000])  # a kill mid-write by a tool that is not atomic
    logs = []
    result = train(plan, "a", model=tiny, resume=True, log=logs.append)
    assert any("skipping unreadable training state state-00000015.pt" in line for line in logs)
    assert any("resuming A from step 10" in line for line in logs)
    assert result.step == 20



def test_nan_loss_is_one_clear_error_and_keeps_last_state(tmp_path, tiny, monkeypatch):
    from engine.train.checkpoint import list_states

    plan = make(tmp_path, 20, save_every_n_steps=5)
    diverge_at(monkeypatch, 12)
    with pytest.raises(TrainingError, match="loss became nan at step 13"):
        train(plan, "a", model=tiny, log=quiet)
    sp = plan.side("a")
    assert not sp.lora_path.exists()
    assert [s.name for s in list_states(sp.run_dir)] == ["state-00000010.pt", "state-00000005.pt"]
    leftovers = [p.name for p in sp.run_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_corrupt_teacher_and_missing_base_are_clear_errors(tmp_path, tiny):
    plan = make(tmp_path, 5)
    image = plan.side("a").images[0].path
    image.write_bytes(image.read_bytes()[:100])  # corrupted after the project was checked
    with pytest.raises(CopyloraError, match="cannot read teacher image"):
        train(plan, "a", model=tiny, log=quiet)
    assert not plan.side("a").lora_path.exists()

    plan = make(tmp_path / "other", 5)
    plan.project.info = replace(plan.project.info, base_model="/nonexistent/model.safetensors")
    with pytest.raises(CopyloraError, match="not found"):
        train(plan, "a", log=quiet)


def test_metadata_of_trained_file(tmp_path, tiny):
    from engine.lora.files import load_lora_file

    plan = make(tmp_path, 6)
    result = train(plan, "b", model=tiny, log=quiet)
    meta = load_lora_file(result.lora_path).metadata
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "8" and float(meta["ss_network_alpha"]) == 1.0
    assert meta["ss_steps"] == "6"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert "AdamW" in meta["ss_optimizer"]
    assert meta["ss_seed"] == "42"
    assert meta["modelspec.architecture"].startswith("stable-diffusion-v1")
    assert meta["sshs_model_hash"] and meta["sshs_legacy_hash"]


def test_optional_paths_train(tmp_path, tiny):
    """Regularisation (prior preservation), flips, min-SNR, noise offset, text-encoder LoRA,
    clip skip and a warm-up schedule all run through the same loop and give a finite loss."""
    from engine.lora.files import load_lora_file
    from engine.project.params import RegParams
    from tests.helpers import write_png

    plan = make(
        tmp_path,
        6,
        flip_aug=True,
        min_snr_gamma=5.0,
        noise_offset=0.05,
        network_train_unet_only=False,
        clip_skip=2,
        lr_scheduler="cosine",
        lr_warmup_steps=2,
    )
    project = plan.project
    write_png(project.root / "reg" / "class.png", size=(128, 192), colour=(30, 90, 200))
    project.reg = RegParams(folder="reg", instance_prompt="sks picture", class_prompt="picture", prior_loss_weight=0.5)
    plan = make_plan(project, max_steps=6)
    assert plan.side("a").steps_per_epoch == 10  # class samples double the epoch
    losses = []
    result = train(plan, "a", model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: losses.append(p)))
    assert result.status == "done" and all(p.loss == p.loss for p in losses)
    assert losses[0].lr < losses[2].lr  # warm-up
    names = load_lora_file(result.lora_path).modules
    assert any(n.startswith("lora_te_") for n in names) and any(n.startswith("lora_unet_") for n in names)


# --------------------------------------------------------------------------- loss reads batched (the CUDA path)


def deferred_reads(monkeypatch, every_s: float) -> None:
    """Run the CUDA policy on the CPU: losses stay tensors and are read in batches."""
    import engine.train.loss_reads as loss_reads
    import engine.train.trainer as trainer

    monkeypatch.setattr(trainer, "defers_loss_reads", lambda device: True)
    monkeypatch.setattr(loss_reads, "LOSS_READ_S", every_s)


def test_batched_loss_reads_train_exactly_the_same(tmp_path, tiny, monkeypatch):
    from safetensors.torch import load_file

    plan = make(tmp_path / "each", 12, save_every_n_steps=5)
    each: list = []
    first = train(plan, "a", model=tiny, log=quiet, controls=TrainControls(on_progress=each.append))
    deferred_reads(monkeypatch, every_s=3600.0)  # only when something is written, and at the end
    plan_b = make(tmp_path / "batched", 12, save_every_n_steps=5)
    batched: list = []
    second = train(plan_b, "a", model=tiny, log=quiet, controls=TrainControls(on_progress=batched.append))
    assert [p.step for p in each] == list(range(1, 13))
    assert [p.step for p in batched] == [5, 10, 12]  # the checkpoints at 5 and 10, and the end
    a, b = load_file(str(first.lora_path)), load_file(str(second.lora_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert second.final_loss == first.final_loss
    assert batched[-1].smooth_loss == each[-1].smooth_loss  # every step's loss reached the curve


def test_batched_loss_reads_still_stop_a_diverged_run_before_it_writes(tmp_path, tiny, monkeypatch):
    from engine.train.checkpoint import list_states

    deferred_reads(monkeypatch, every_s=3600.0)
    plan = make(tmp_path, 20, save_every_n_steps=5)
    diverge_at(monkeypatch, 12)
    with pytest.raises(TrainingError, match="loss became nan at step 13"):
        train(plan, "a", model=tiny, log=quiet)
    sp = plan.side("a")
    assert not sp.lora_path.exists()  # the step-15 checkpoint read the losses first and stopped
    assert [s.name for s in list_states(sp.run_dir)] == ["state-00000010.pt", "state-00000005.pt"]


def test_nan_loss_does_not_name_a_checkpoint_that_does_not_exist(tmp_path, monkeypatch):
    from engine.project.plan import make_plan
    from engine.train.trainer import TrainingError, train
    from tests.helpers import diverge_at

    root = copy_example(tmp_path)
    plan = make_plan(load_project(root), max_steps=3)
    diverge_at(monkeypatch, None)
    with pytest.raises(TrainingError) as info:
        train(plan, "a", log=lambda _l: None)
    assert "no checkpoint had been written yet" in str(info.value) and "runs/A is kept" not in str(info.value)


def test_a_side_another_process_trains_is_refused_before_anything_is_touched(tmp_path, monkeypatch):
    """`copylora train mono --side a --restart` typed while the worker's job trained A: both ran,
    wrote over each other's checkpoints and LoRA (and --restart dropped the job's checkpoints)."""
    import sys

    from engine.train.side_lock import _holder, side_locks
    from engine.train.twin import train_twin

    plan = make_plan(load_project(copy_example(tmp_path)), max_steps=2)
    kept = plan.side("a").run_dir / "state-00000001.pt"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"the job's checkpoint")
    monkeypatch.setattr(sys, "argv", ["engine.jobs.runner", "--home", "/h", "--job", "7"])
    with side_locks(plan, ["a"]):  # held as a queue job holds it (flock: a second open conflicts, this process too)
        with pytest.raises(TrainingError, match=r"side A of example-monochrome is being trained right now by queue job #7 of the queue in /h \(pid \d+\)"):
            train(plan, "a")
        with pytest.raises(TrainingError, match="side A of example-monochrome is being trained right now"):
            train_twin(plan)
        assert kept.read_bytes() == b"the job's checkpoint"  # --restart's drop comes after the lock
        result = train(plan, "b")  # the other side is free
        assert result.lora_path.is_file()
    assert train(plan, "a").lora_path.is_file()  # released with its holder
    monkeypatch.setattr(sys, "argv", ["/usr/bin/copylora", "train", "mono", "--side", "a"])
    assert _holder().startswith("`copylora train mono --side a` (pid ")


def test_a_step_the_fp16_scaler_skips_is_no_step_of_the_schedule(tmp_path, tiny):
    """fp16: the grad scaler skips a step whose gradients overflow (and lowers its scale); the
    learning-rate schedule stepped all the same, so a warm-up or a cosine ran ahead by every
    skipped step. accelerate's scheduler (sd-scripts') does not step then; nor does ours."""
    import time

    from engine.train.side_run import SideRun

    plan = make(tmp_path, 10, lr_scheduler="linear", lr_warmup_steps=4)
    run = SideRun(plan, "a", tiny, device="cpu", weight_dtype=torch.float32, use_scaler=False, started=time.time(), log=quiet,
                  apply=False)
    run.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # the CUDA one's logic, on the CPU

    def step_with(value: float) -> None:
        run.grad_scaler.scale(torch.ones(()))  # as backward's loss is scaled first
        for param in run.params:
            param.grad = torch.full_like(param, value)
        run.optimizer_step()

    before = [p.detach().clone() for p in run.params]
    step_with(float("inf"))
    assert run.lr_schedule.last_epoch == 0 and run.grad_scaler.get_scale() == 2.0**9  # skipped: no step, scale halved
    assert all(torch.equal(p, q) for p, q in zip(run.params, before))
    step_with(1e-3)
    assert run.lr_schedule.last_epoch == 1 and run.lr() == pytest.approx(plan.side("a").params.learning_rate / 4)
    run.grad_scaler = torch.amp.GradScaler("cpu", enabled=False)  # fp32/bf16: every step is one
    step_with(float("nan"))
    assert run.lr_schedule.last_epoch == 2


def test_partial_files_a_killed_write_left_are_removed_when_the_side_trains_again(tmp_path, tiny):
    """A kill in the middle of a checkpoint or LoRA write left its hidden temporary file for good
    (a checkpoint-sized one each crash on SDXL). The side's next training removes its own, under
    its lock; another side's (or project's, in a shared output folder) stay."""
    import os

    from engine.files import stale_temps

    plan = make(tmp_path, 2)
    sp = plan.side("a")
    sp.run_dir.mkdir(parents=True, exist_ok=True)
    left = [sp.run_dir / ".state-00000099.pt.5zmgrxdj.tmp", sp.lora_path.parent / f".{sp.lora_path.name}.yt_iha7f.tmp"]
    others = [plan.side("b").lora_path.parent / f".{plan.side('b').lora_path.name}.qs0o8tm3.tmp",
              sp.lora_path.parent / f".{sp.lora_path.name}.notes.txt"]  # not atomic_write's name
    for path in left + others:
        path.write_bytes(b"partial")
    said: list[str] = []
    train(plan, "a", model=tiny, log=said.append)
    assert not any(p.exists() for p in left) and all(p.exists() for p in others)
    assert any("removed 2 partial file(s)" in line for line in said)
    # by age, where no lock tells a killed writer from a live one (the merge's)
    young = others[0]
    assert stale_temps(young.parent, young.name[1:].rsplit(".", 2)[0], older_than_s=600) == []
    os.utime(young, (young.stat().st_atime - 700, young.stat().st_mtime - 700))
    assert stale_temps(young.parent, young.name[1:].rsplit(".", 2)[0], older_than_s=600) == [young]


def test_a_kill_at_a_checkpoint_step_never_loses_that_steps_preview(tmp_path, tiny, monkeypatch):
    """The checkpoint was written before the step's preview: a kill between them resumed after
    that step, and its preview was never drawn. The preview comes first now: a kill at the
    checkpoint resumes from the one before, and the step's preview exists (or is made again)."""
    from engine.train.side_run import SideRun

    plan = make(tmp_path, 8, save_every_n_steps=4, sample_every_n_steps=4)
    plan.project.sample = replace(plan.project.sample, steps=1, size=[64, 64])
    real = SideRun.write_state

    def killed_at_four(self, step, folder=None):
        if step == 4:
            raise KeyboardInterrupt("the power went at step 4's checkpoint")
        return real(self, step, folder)

    monkeypatch.setattr(SideRun, "write_state", killed_at_four)
    with pytest.raises(KeyboardInterrupt):
        train(plan, "a", model=tiny, log=quiet)
    previews = sorted(p.name for p in plan.side("a").lora_path.parent.rglob("*step000004*.png"))
    assert previews, "step 4's preview was lost with its checkpoint"


def test_a_stopped_run_keeps_its_newest_smoothed_loss_with_deferred_reads_and_no_listener(tmp_path, tiny, monkeypatch):
    """On CUDA the losses are read in batches: the stop checkpoint kept a smoothed loss without
    the newest step's, so the resumed curve was off (1.14742 against 1.14588); and with nobody
    listening (an API caller) no checkpoint kept one at all."""
    from engine.train.checkpoint import load_latest_state

    curve: dict[int, float] = {}
    train(make(tmp_path / "straight", 12), "a", model=tiny, log=quiet,
          controls=TrainControls(on_progress=lambda p: curve.update({p.step: p.smooth_loss})))
    deferred_reads(monkeypatch, every_s=3600.0)  # read only when something is written, and at the end
    split = make(tmp_path / "split", 12)
    asked: list = []
    first = train(split, "a", model=tiny, log=quiet, controls=TrainControls(should_stop=lambda: asked.append(1) or len(asked) > 5))
    assert first.status == "stopped" and first.step == 5
    state = load_latest_state(split.side("a").run_dir, log=quiet)
    assert state is not None and state["step"] == 5 and state["smooth_loss"] == pytest.approx(curve[5], rel=1e-9)
    resumed: dict[int, float] = {}
    train(split, "a", model=tiny, log=quiet, resume=True, controls=TrainControls(on_progress=lambda p: resumed.update({p.step: p.smooth_loss})))
    assert resumed[12] == pytest.approx(curve[12], rel=1e-9)
