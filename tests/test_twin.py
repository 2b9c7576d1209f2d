"""Twin training: A and B as one batch of two give the LoRAs of two separate runs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.project.folder import load_project, save_project  # noqa: E402
from engine.project.plan import make_plan  # noqa: E402
from engine.train.controls import TrainControls
from engine.train.trainer import TrainingError, train  # noqa: E402
from engine.train.twin import TwinNotPossible, train_twin, twin_problem  # noqa: E402
from tests.helpers import copy_example, quiet  # noqa: E402


def make(tmp_path, steps: int, **train_keys):
    root = copy_example(tmp_path)
    project = load_project(root)
    for key, value in {"max_train_steps": steps, "max_train_epochs": None, "resolution": [128, 192], **train_keys}.items():
        setattr(project.train, key, value)
    save_project(project)
    return make_plan(load_project(root))


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / max(float(b.double().norm()), 1e-30))


def assert_same_loras(twin_paths, separate_paths, tolerance: float, floor: float = 0.0) -> None:
    """Every LoRA tensor within ``tolerance`` relative; one whose norm is below ``floor`` (a
    gradient that is rounding noise, e.g. self-attention over a single token) within ``floor``."""
    from safetensors.torch import load_file

    for twin_path, separate_path in zip(twin_paths, separate_paths):
        got, want = load_file(str(twin_path)), load_file(str(separate_path))
        assert got.keys() == want.keys()
        worst = max(rel(got[k], want[k]) for k in want if "alpha" not in k and float(want[k].norm()) > floor)
        assert worst < tolerance, worst
        assert all(float((got[k] - want[k]).norm()) < floor for k in want if 0 < float(want[k].norm()) <= floor)


# Plain SGD: no per-element normalisation, so the comparison sees the routing, the noise, the
# timesteps and the scaling, not the optimizer's amplification of rounding (see the AdamW test).
SGD = {"optimizer_type": "SGDNesterov", "learning_rate": 0.5, "save_precision": "float"}


def test_twin_gives_the_loras_of_two_separate_runs(tmp_path, tiny):
    """The issue's check: CPU, fp32, 20 steps, every LoRA tensor within 1e-4 relative (measured 7e-6)."""
    separate = make(tmp_path / "separate", 20, noise_offset=0.05, min_snr_gamma=5.0, **SGD)
    results = [train(separate, side, model=tiny, log=quiet) for side in ("a", "b")]
    twin_plan = make(tmp_path / "twin", 20, noise_offset=0.05, min_snr_gamma=5.0, **SGD)
    progress: list = []
    twin = train_twin(twin_plan, model=tiny, log=quiet, controls=TrainControls(on_progress=progress.append))
    assert [twin[s].status for s in "ab"] == ["done", "done"] and twin["a"].step == 20
    assert_same_loras([twin["a"].lora_path, twin["b"].lora_path], [r.lora_path for r in results], 1e-4)
    assert [p.step for p in progress] == list(range(1, 21))
    assert progress[-1].loss == pytest.approx(results[0].final_loss, rel=1e-5)
    assert progress[-1].loss_b == pytest.approx(results[1].final_loss, rel=1e-5)
    assert progress[-1].loss != progress[-1].loss_b  # two pictures, two losses
    # The base model is left as it was found: no hooks remain.
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in tiny.unet.modules())


def test_pairs_under_their_own_captions_train_as_a_twin(tmp_path, tiny):
    """[reg] folder "" (each picture under its caption, no class pictures: projects/example-toy,
    eight pairs) is the data of a plain project, so it trains as one batch of two and gives the
    LoRAs of two separate runs; class pictures still train each side apart."""
    from engine.project.params import RegParams

    def captioned(where):
        root = copy_example(where, source="example-toy")
        project = load_project(root)
        project.info.base_model = "tiny"
        for key, value in {"max_train_steps": 12, "max_train_epochs": None, "noise_offset": 0.05, **SGD}.items():
            setattr(project.train, key, value)
        save_project(project)
        return make_plan(load_project(root))

    separate = captioned(tmp_path / "separate")
    assert separate.project.reg == RegParams(folder="", instance_prompt="[filewords]") and len(separate.side("a").images) == 8
    assert twin_problem(separate) is None
    lines: list[str] = []
    results = [train(separate, side, model=tiny, log=quiet) for side in ("a", "b")]
    twin = train_twin(captioned(tmp_path / "twin"), model=tiny, log=lines.append)
    assert [twin[s].status for s in "ab"] == ["done", "done"]
    # at 64×64 the tiny U-Net's middle is one token, so its self-attention's q and k learn only
    # rounding noise (norm ~1e-11): those are held to the floor, every other tensor to 1e-4
    assert_same_loras([twin["a"].lora_path, twin["b"].lora_path], [r.lora_path for r in results], 1e-4, floor=1e-8)
    assert sum("dreambooth: 40 items per epoch" in line and "8 distinct prompts" in line for line in lines) == 2  # each side its captions
    project = load_project(separate.project.root)
    project.reg = RegParams(folder="b", instance_prompt="[filewords]", class_prompt="a picture")
    assert "class pictures" in twin_problem(make_plan(project))


def test_twin_with_adamw_stays_within_adamws_own_rounding_noise(tmp_path, tiny):
    """AdamW divides each update by the gradient's running size, so rounding differences grow:
    changing the loss by one ulp moved the same tensors by 1.1e-4 after 20 steps here (measured).
    A batch of two rounds differently from one; twin stays within a few times that floor."""
    separate = make(tmp_path / "separate", 20, save_precision="float")
    results = [train(separate, side, model=tiny, log=quiet) for side in ("a", "b")]
    twin = train_twin(make(tmp_path / "twin", 20, save_precision="float"), model=tiny, log=quiet)
    assert twin["a"].optimizer == results[0].optimizer == "AdamW (fallback from AdamW8bit)"
    assert_same_loras([twin["a"].lora_path, twin["b"].lora_path], [r.lora_path for r in results], 2e-3)


def test_twin_stops_and_each_side_resumes_alone(tmp_path, tiny):
    """A twin run's checkpoints are each side's own: stopped at 6, A and B finish separately."""
    plan = make(tmp_path / "twin", 12, **SGD)
    done: list = []
    stopped = train_twin(plan, model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 6))
    assert stopped["a"].status == stopped["b"].status == "stopped" and stopped["a"].step == 6
    resumed = [train(plan, side, model=tiny, log=quiet, resume=True) for side in ("a", "b")]
    straight = make(tmp_path / "straight", 12, **SGD)
    reference = [train(straight, side, model=tiny, log=quiet) for side in ("a", "b")]
    assert_same_loras([r.lora_path for r in resumed], [r.lora_path for r in reference], 1e-4)


def test_twin_resumes_a_twin_run(tmp_path, tiny):
    plan = make(tmp_path / "twin", 10, save_every_n_steps=4, **SGD)
    done: list = []
    train_twin(plan, model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 5))
    logs: list = []
    finished = train_twin(plan, model=tiny, log=logs.append, resume=True)
    assert any("resuming A from step 5" in line for line in logs) and finished["b"].step == 10
    straight = make(tmp_path / "straight", 10, **SGD)
    reference = [train(straight, side, model=tiny, log=quiet) for side in ("a", "b")]
    assert_same_loras([finished["a"].lora_path, finished["b"].lora_path], [r.lora_path for r in reference], 1e-4)


def stop_twin_at(plan, tiny, step: int) -> None:
    """A twin run of ``plan`` stopped after ``step`` steps (its checkpoints written)."""
    done: list = []
    train_twin(plan, model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= step))


def assert_as_if_never_interrupted(finished, tmp_path, tiny, steps: int) -> None:
    """The resumed twin run's LoRAs are bit for bit those of one never interrupted."""
    from safetensors.torch import load_file

    reference = train_twin(make(tmp_path / "straight", steps, save_every_n_steps=4, **SGD), model=tiny, log=quiet)
    for side in ("a", "b"):
        got, want = load_file(str(finished[side].lora_path)), load_file(str(reference[side].lora_path))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), side


def test_killed_between_the_two_checkpoint_writes_resumes_both_from_the_shared_step(tmp_path, tiny):
    """A kill -9 can land after A's checkpoint is written and before B's (seen in CI under load:
    the run then fell back to A, then B, and was no longer bit for bit the uninterrupted run).
    Two checkpoints are kept per side, so both resume from the newest step they share."""

    from engine.train.checkpoint import list_states

    plan = make(tmp_path / "twin", 12, save_every_n_steps=4, **SGD)
    stop_twin_at(plan, tiny, 9)
    newest_b = list_states(plan.side("b").run_dir)[0]
    assert newest_b.name == "state-00000009.pt"
    newest_b.unlink()  # B's write of step 9 never happened
    logs: list = []
    finished = train_twin(plan, model=tiny, log=logs.append, resume=True)
    assert any("both resume from step 8" in line for line in logs), logs
    assert_as_if_never_interrupted(finished, tmp_path, tiny, 12)


def test_killed_between_the_first_two_checkpoint_writes_starts_both_again_as_one_twin_run(tmp_path, tiny):
    """A's first checkpoint written, B's not: there was no shared step, so the run fell back to
    A, then B (half again as long, and no longer the uninterrupted run), and said "no usable
    training state" of a side that then resumed. Both start again from 0 as one twin run."""

    from engine.train.checkpoint import list_states

    plan = make(tmp_path / "twin", 8, save_every_n_steps=4, **SGD)
    stop_twin_at(plan, tiny, 4)
    for state in list_states(plan.side("b").run_dir):
        state.unlink()  # B's first write never happened
    assert [p.name for p in list_states(plan.side("a").run_dir)] == ["state-00000004.pt"]
    logs: list = []
    finished = train_twin(plan, model=tiny, log=logs.append, resume=True)
    assert any("both start again from step 0, as one twin run" in line for line in logs), logs
    assert not any("no usable training state" in line for line in logs), logs
    assert_as_if_never_interrupted(finished, tmp_path, tiny, 8)


def test_a_side_stopped_alone_keeps_its_checkpoint_when_the_twin_resumes(tmp_path, tiny):
    """A side trained or paused alone before (at a step that is no periodic first checkpoint)
    is not a kill between the twin's first writes: its checkpoint stays, and they resume apart."""
    from engine.train.checkpoint import list_states

    plan = make(tmp_path / "twin", 12, save_every_n_steps=10, **SGD)
    done: list = []
    train(plan, "a", model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 7))
    assert [p.name for p in list_states(plan.side("a").run_dir)] == ["state-00000007.pt"]
    with pytest.raises(TwinNotPossible, match="resume apart"):
        train_twin(plan, model=tiny, log=quiet, resume=True)
    assert [p.name for p in list_states(plan.side("a").run_dir)] == ["state-00000007.pt"]


def test_when_twin_does_not_apply(tmp_path, tiny):
    plan = make(tmp_path / "ok", 4)
    assert twin_problem(plan) is None
    root = plan.project.root
    project = load_project(root)
    project.b.overrides = {"learning_rate": 5e-4}
    save_project(project)
    other = make_plan(load_project(root))
    assert twin_problem(other) == "[a] and [b] set different values (learning_rate)"
    with pytest.raises(TwinNotPossible, match="learning_rate"):
        train_twin(other, model=tiny, log=quiet)
    project.b.overrides = {}
    project.train.network_train_unet_only = False
    save_project(project)
    assert "text encoder" in twin_problem(make_plan(load_project(root)))


def test_twin_diverged_side_is_named_and_nothing_is_written(tmp_path, tiny, monkeypatch):
    from tests.helpers import diverge_at

    plan = make(tmp_path, 10, save_every_n_steps=3)
    diverge_at(monkeypatch, 7, side="b")
    with pytest.raises(TrainingError, match="loss became nan at step 8 of side B"):
        train_twin(plan, model=tiny, log=quiet)
    assert not plan.side("a").lora_path.exists() and not plan.side("b").lora_path.exists()


def test_a_model_handed_in_decides_the_device(tmp_path, tiny, monkeypatch):
    """Found on the H100: with a model loaded on the CPU and handed in, "auto" picked cuda and
    the first step failed (inputs on cuda, weights on the CPU). The model's device wins."""
    from engine.train.trainer import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None) == "cuda"  # the stand-in works: without a model, cuda is chosen
    assert pick_device(None, tiny) == "cpu"
    assert pick_device("cpu", None) == "cpu"
    result = train(make(tmp_path, 2, **SGD), "a", model=tiny, log=quiet)
    assert result.status == "done" and result.step == 2


def _pair(base=None, rank: int = 4):
    """Two LoRAs (A's, B's) on one Linear (or ``base``), their up weights non-zero, as after some training."""
    from engine.lora.network import LoRAModule

    gen = torch.Generator().manual_seed(3)
    base = base if base is not None else torch.nn.Linear(16, 24)
    loras = [LoRAModule(name, base, rank, 1.0) for name in ("a", "b")]
    for lora in loras:
        with torch.no_grad():
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=gen) * 0.1)
    return base, loras


def _by_halves(loras, x, output):
    half = x.shape[0] // 2
    return output + torch.cat([loras[0].contribution(x[:half], output.dtype), loras[1].contribution(x[half:], output.dtype)])


@pytest.mark.parametrize("shape", [(4, 5, 16), (2, 16), (2, 16, 3, 5)])
def test_the_batched_pair_adds_what_each_sides_module_adds_and_trains_the_same(shape):
    """Twin training's one-kernel-pair way (bmm + baddbmm over the stacked weights) against each
    side's module on its half of the batch: the output, every LoRA gradient and the input's, fp32;
    for a Linear (tokens or not) and a 1×1 convolution (SD1.5's proj_in / proj_out)."""
    from engine.train.twin import batchable, batched_pair

    base, loras = _pair(torch.nn.Conv2d(16, 24, 1) if len(shape) == 4 else None)
    assert batchable(loras[0])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4), requires_grad=True)
    results = []
    for add in (lambda out: batched_pair(loras[0], loras[1], x, out), lambda out: _by_halves(loras, x, out)):
        for lora in loras:
            lora.zero_grad(set_to_none=True)
        out = add(base(x))
        x.grad = None
        out.square().sum().backward()
        grads = [p.grad.clone() for lora in loras for p in (lora.lora_down.weight, lora.lora_up.weight)] + [x.grad.clone()]
        results.append((out.detach(), grads))
    (got, got_grads), (want, want_grads) = results
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert all(g.shape == w.shape and torch.allclose(g, w, rtol=1e-4, atol=1e-6) for g, w in zip(got_grads, want_grads))
    assert all(float(w.norm()) > 0 for w in want_grads)  # every weight learns: the comparison sees them all


def test_the_batched_pair_under_autocast_and_where_it_steps_aside():
    from engine.train.twin import batchable, batched_pair

    base, loras = _pair()
    x = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = base(x)
        got, want = batched_pair(loras[0], loras[1], x, out), _by_halves(loras, x, out)
    assert got.dtype == want.dtype == torch.bfloat16 and torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    out = base(x)
    loras[1].multiplier = 0.5  # the sides scale differently: each side's module on its half
    assert batched_pair(loras[0], loras[1], x, out) is None
    loras[1].multiplier = 1.0
    loras[0].full_precision = True  # a frozen LoRA kept in fp32 (the differential route's A)
    assert batched_pair(loras[0], loras[1], x, out) is None
    loras[0].full_precision = False
    assert batched_pair(loras[0], loras[1], x, out.double()) is None  # a base of another precision, no autocast
    assert batched_pair(loras[0], loras[1], x, out) is not None
    from engine.lora.network import LoRAModule

    assert batched_pair(loras[0], LoRAModule("b", base, 8, 2.0), x, out) is None  # ranks apart (the same scale): no one stack
    conv, conv_loras = _pair(torch.nn.Conv2d(16, 24, 1))
    four = torch.randn(4, 16, 3, 3)  # two pictures a side: not one matrix per side
    assert batched_pair(conv_loras[0], conv_loras[1], four, conv(four)) is None
    assert not batchable(_pair(torch.nn.Conv2d(16, 24, 3, padding=1))[1][0])  # a 3×3 conv (LoCon): each side's module


def test_a_twin_step_launches_far_fewer_kernels_than_two_sides(tmp_path, tiny):
    """What twin training is for: a batch of two pays the U-Net's operators once, and the LoRAs'
    (most of a step's) as one batched pair. Counted on the CPU (bench/twin_bench.py): of the
    operators that compute (each a kernel launch on a GPU; views left out), 3 207 a step for one
    side at 128×192 with AdamW, 5 404 for the twin pair with each side's modules on its half
    (0.84 of two sides), 3 966 with the pair batched (0.62)."""
    from bench.twin_bench import count_ops

    ops = count_ops(make(tmp_path, 4, resolution=[64, 64]), tiny, "cpu", steps=4)  # AdamW: one fused kernel a side
    assert ops["twin_kernels_vs_two_sides"] < 0.7, ops
