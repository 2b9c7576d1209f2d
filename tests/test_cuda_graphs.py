"""`[train] cuda_graphs` (engine/train/cuda_graph.py): on the CPU the fallback, and the plumbing
around a graph (draws copied in, gradients handed back, losses copied out) through the real
trainer with :class:`EagerReplay` standing in for the CUDA graph; on a GPU, the real graph
against eager."""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from engine.project.folder import load_project, save_project  # noqa: E402
from engine.project.graph_rule import graph_problem  # noqa: E402
from engine.project.plan import make_plan  # noqa: E402
from engine.project.provenance import training_fingerprint  # noqa: E402
from engine.train import cuda_graph  # noqa: E402
from engine.train.controls import TrainControls  # noqa: E402
from engine.train.cuda_graph import WARMUP_STEPS, EagerReplay, GraphedStep  # noqa: E402
from engine.train.side_run import Draw  # noqa: E402
from engine.train.trainer import train  # noqa: E402
from engine.train.twin import train_twin  # noqa: E402
from tests.helpers import copy_example, quiet  # noqa: E402

STEPS = 8


def make(root, steps: int = STEPS, method: str | None = None, **keys):
    root = copy_example(root)
    project = load_project(root)
    if method:
        project.info.method = method
    for key, value in {"max_train_steps": steps, "max_train_epochs": None, "resolution": [128, 192], "save_precision": "float",
                       "noise_offset": 0.05, "min_snr_gamma": 5.0, **keys}.items():
        setattr(project.train, key, value)
    save_project(project)
    return make_plan(load_project(root))


def lora(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_identical(got_path, want_path) -> None:
    got, want = lora(got_path), lora(want_path)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])][:3]
    assert any(float(v.abs().max()) > 0 for k, v in got.items() if "lora_up" in k)  # it trained


@pytest.fixture
def stand_in(monkeypatch):
    """The CPU's graph: what a CUDA device would get, with EagerReplay in place of CUDAGraph."""
    made: list = []

    class Counting(EagerReplay):
        def __init__(self) -> None:
            made.append(self)
            self.replays = 0

        def replay(self) -> None:
            self.replays += 1
            super().replay()

    monkeypatch.setattr(cuda_graph, "graph_type", lambda device: (Counting, ""))
    return made


def test_on_the_cpu_it_says_why_and_trains_eagerly(tmp_path, tiny):
    plain = train(make(tmp_path / "plain"), "a", model=tiny, log=quiet)
    logs: list[str] = []
    asked = train(make(tmp_path / "asked", cuda_graphs=True), "a", model=tiny, log=logs.append, device="cpu")
    assert "cuda_graphs = true: training eagerly: there is no CUDA device (training on the CPU)" in logs
    assert_identical(asked.lora_path, plain.lora_path)


def test_the_graphed_step_trains_bit_for_bit_as_eager(tmp_path, tiny, stand_in):
    """Every step after the warm-up is a replay on the static inputs: had one draw (noise,
    timesteps, latents, text, target, weights) not been copied in, the LoRA would differ."""
    plain = train(make(tmp_path / "plain"), "a", model=tiny, log=quiet)
    logs: list[str] = []
    graphed = train(make(tmp_path / "graphed", cuda_graphs=True), "a", model=tiny, log=logs.append)
    assert f"cuda_graphs: step {WARMUP_STEPS + 1} captured after {WARMUP_STEPS} eager steps; replayed from here on" in logs
    assert [g.replays for g in stand_in] == [STEPS - WARMUP_STEPS]
    assert_identical(graphed.lora_path, plain.lora_path)
    assert graphed.final_loss == plain.final_loss


def test_the_flat_8bit_optimizer_steps_the_graphs_gradients(tmp_path, tiny, stand_in, monkeypatch):
    """AdamW8bit as on a GPU (engine/train/flat_optim.py, bitsandbytes' CPU code here): it gathers
    the gradients the graph hands back to the parameters after each replay."""
    import engine.train.optim as optim

    monkeypatch.setattr(optim, "bitsandbytes_device", lambda device: True)
    keys = {"optimizer_type": "AdamW8bit", "learning_rate": 1e-3}
    plain = train(make(tmp_path / "plain", **keys), "a", model=tiny, log=quiet)
    graphed = train(make(tmp_path / "graphed", cuda_graphs=True, **keys), "a", model=tiny, log=quiet)
    assert [g.replays for g in stand_in] == [STEPS - WARMUP_STEPS] and graphed.optimizer == "AdamW8bit"
    assert_identical(graphed.lora_path, plain.lora_path)


def test_twin_and_resume_through_the_graph(tmp_path, tiny, stand_in):
    """A twin pair (both LoRAs in one captured step), stopped mid-run and resumed (a new
    capture), ends bit for bit where the eager twin run does."""
    eager = train_twin(make(tmp_path / "eager", 12), model=tiny, log=quiet)
    plan = make(tmp_path / "graphed", 12, cuda_graphs=True)
    done: list[int] = []
    first = train_twin(plan, model=tiny, log=quiet,
                       controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 7))
    assert first["a"].status == "stopped" and first["a"].step == 7
    second = train_twin(plan, model=tiny, log=quiet, resume=True)
    assert second["a"].step == 12
    assert [g.replays for g in stand_in] == [7 - WARMUP_STEPS, 12 - 7 - WARMUP_STEPS]
    for side in "ab":
        assert_identical(second[side].lora_path, eager[side].lora_path)


def test_the_differential_routes_b_through_the_graph(tmp_path, tiny, stand_in):
    eager_plan = make(tmp_path / "eager", method="differential")
    train(eager_plan, "a", model=tiny, log=quiet)
    eager_b = train(eager_plan, "b", model=tiny, log=quiet)
    plan = make(tmp_path / "graphed", method="differential", cuda_graphs=True)
    train(plan, "a", model=tiny, log=quiet)
    logs: list[str] = []
    graphed_b = train(plan, "b", model=tiny, log=logs.append)
    assert any("captured after" in line for line in logs), logs
    assert_identical(graphed_b.lora_path, eager_b.lora_path)


def test_a_capture_that_fails_trains_eagerly_saying_why(tmp_path, tiny, monkeypatch):
    class Refusing(EagerReplay):
        def capture(self, body) -> None:
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph, "graph_type", lambda device: (Refusing, ""))
    plain = train(make(tmp_path / "plain"), "a", model=tiny, log=quiet)
    logs: list[str] = []
    result = train(make(tmp_path / "refused", cuda_graphs=True), "a", model=tiny, log=logs.append)
    assert ("cuda_graphs: the step could not be captured (RuntimeError: operation not permitted when stream is capturing); "
            "training eagerly") in logs
    assert_identical(result.lora_path, plain.lora_path)


def test_a_one_lora_route_says_why_it_is_not_captured(tmp_path, tiny, stand_in):
    logs: list[str] = []
    result = train(make(tmp_path / "addift", 4, method="addift", cuda_graphs=True), "pair", model=tiny, log=logs.append)
    assert result.status == "done"
    assert "cuda_graphs = true: training eagerly: the addift route's step runs the U-Net at two LoRA multipliers" in logs
    assert stand_in == []


HINT = "cuda_graphs = false: this step could be captured as one CUDA graph and replayed"


def test_off_on_cuda_the_log_says_a_capturable_step_could_be_graphed(tmp_path, tiny, stand_in):
    """Graphs are off by default: on CUDA (the stand-in) a run whose step could be captured says
    so once, one that could not (a one-LoRA route) and a CPU run say nothing of it."""
    logs: list[str] = []
    train(make(tmp_path / "off", 2), "a", model=tiny, log=logs.append)
    assert sum(line.startswith(HINT) for line in logs) == 1, logs
    assert stand_in == []  # nothing captured: it was only said
    route: list[str] = []
    train(make(tmp_path / "addift", 2, method="addift"), "pair", model=tiny, log=route.append)
    assert not any(line.startswith("cuda_graphs") for line in route)


def test_off_on_the_cpu_says_nothing_of_graphs(tmp_path, tiny):
    logs: list[str] = []
    train(make(tmp_path / "off", 2), "a", model=tiny, log=logs.append, device="cpu")
    assert not any("cuda_graphs" in line for line in logs)


@pytest.mark.parametrize(("keys", "buckets", "why"), [
    ({}, 1, ""),
    ({"network_train_unet_only": False}, 1, "the text encoder is trained (network_train_unet_only = false), outside the captured step"),
    ({"compile": True}, 1, "compile = true is asked for too (two ways to the same end: set one)"),
    ({}, 2, "2 buckets: the step's shapes change"),
])
def test_what_stops_a_capture_before_the_first_step(tmp_path, keys, buckets, why):
    plan = make(tmp_path, **keys)
    assert graph_problem(plan.side("a").params, buckets, None) == why


def test_the_switch_leaves_checkpoints_and_loras_current(tmp_path):
    """It changes how a step runs, not what it computes: a run resumes across it."""
    plan = make(tmp_path)
    on = replace(plan, project=plan.project)
    on.project.train = replace(plan.project.train, cuda_graphs=True)
    assert training_fingerprint(on, "a") == training_fingerprint(make(tmp_path / "off"), "a")


class FakeStep:
    """The part of StepFunction a GraphedStep drives, on one parameter: loss = sum(w * noisy)."""

    defer = False
    amp = None

    def __init__(self, shapes) -> None:
        self.w = torch.nn.Parameter(torch.ones(4))
        self.runs = [type("Run", (), {"params": [self.w]})()]
        self.shapes, self.computed, self.updates = shapes, 0, []

    def prepare(self, step: int) -> list[Draw]:
        noisy = torch.full((self.shapes[step], 4), float(step + 1))
        one = torch.ones(1)
        return [Draw(step, noisy, one.long(), one, None, one, one)]

    def training(self):
        return (True,)

    def compute(self, draws, training):
        self.computed += 1
        loss = (self.w * draws[0].noisy).sum()
        loss.backward()
        return torch.stack([loss.detach()])

    def check(self, step, losses) -> None:
        pass

    def update(self) -> None:
        self.updates.append(self.w.grad.clone())
        self.w.grad = None


def test_steps_of_another_shape_run_eagerly_and_the_graph_resumes_after():
    """A step whose inputs differ from the captured one (a bucket of another size, a side that
    stopped) is computed eagerly; the next step of the captured shape replays again, and the
    optimizer gets each step's own gradient either way."""
    shapes = [1, 1, 1, 1, 1, 2, 1, 1]
    step = FakeStep(shapes)
    graph = EagerReplay()
    logs: list[str] = []
    graphed = GraphedStep(step, graph, logs.append)
    losses = [float(graphed(i)[0]) for i in range(len(shapes))]
    assert losses == [4.0 * shapes[i] * (i + 1) for i in range(len(shapes))]
    assert [float(g[0]) for g in step.updates] == [float(shapes[i] * (i + 1)) for i in range(len(shapes))]
    assert logs == [f"cuda_graphs: step {WARMUP_STEPS + 1} captured after {WARMUP_STEPS} eager steps; replayed from here on",
                    "cuda_graphs: step 6's inputs differ from the captured step's (shapes, or a side that stopped): "
                    "such steps run eagerly"]


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "optimizer", "tolerance"), [("no", "AdamW", 1e-3), ("fp16", "SGDNesterov", 5e-2)])
def test_the_cuda_graph_trains_as_eager_does_on_a_gpu(tmp_path, precision, optimizer, tolerance):
    """The real capture on the tiny model against eager, every LoRA tensor after 12 steps, relative
    to its norm. A replay runs the kernels the capture recorded, the same ones eager launches, so
    the two may differ only where cuBLAS picks another algorithm on the capture's stream (a
    different summation order). fp32 without TF32, AdamW: rounding at 1e-7 per op, which Adam's
    1/sqrt(v) may amplify on near-zero gradients: 1e-4. fp16 autocast with the grad scaler, plain
    SGD (no such amplification): fp16 rounds at 5e-4 per op: 1e-2. Those were estimates; the first
    GPU run (H200, 2026-12-04) measured 2.2e-4 and 1.22e-2 (docs/BENCHMARKS.md): Adam's amplification
    is larger than guessed (a fresh LoRA's A gets zero gradients until B moves, and Adam turns the
    rounding of near-zero gradients into whole-sized steps), and lr 0.5 carries fp16's rounding
    through twelve steps. The bounds are ~4x the measured figures, still under what a graph that
    dropped or repeated one of the twelve steps would do to the B weights (which start at zero:
    about a twelfth of their norm, 8 %)."""
    from engine.models.loading import load_base_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    keys = {"mixed_precision": precision, "optimizer_type": optimizer, "learning_rate": 1e-3 if optimizer == "AdamW" else 0.5}
    model = load_base_model("tiny", device="cuda")
    eager = train(make(tmp_path / "eager", 12, **keys), "a", model=model, log=quiet, device="cuda")
    logs: list[str] = []
    graphed = train(make(tmp_path / "graphed", 12, cuda_graphs=True, **keys), "a", model=model, log=logs.append, device="cuda")
    assert any("captured after" in line for line in logs), logs
    got, want = lora(graphed.lora_path), lora(eager.lora_path)
    worst = max(float((got[k].double() - want[k].double()).norm() / want[k].double().norm())
                for k in want if "alpha" not in k and float(want[k].norm()) > 0)
    assert worst < tolerance, f"worst relative difference {worst:.3g}"
    print(f"cuda_graphs vs eager ({precision}, {optimizer}): worst relative difference {worst:.3g}")


def test_check_warns_before_the_run_when_the_step_cannot_be_captured(tmp_path):
    """`copylora check` (plan_warnings) says it before minutes of loading: the same reason the trainer logs."""
    from engine.project.plan import plan_warnings

    assert not [w for w in plan_warnings(make(tmp_path / "fine", cuda_graphs=True)) if "cuda_graphs" in w]
    assert not [w for w in plan_warnings(make(tmp_path / "off", network_train_unet_only=False)) if "cuda_graphs" in w]
    warned = [w for w in plan_warnings(make(tmp_path / "te", cuda_graphs=True, network_train_unet_only=False)) if "cuda_graphs" in w]
    assert warned == ["train.cuda_graphs: A will train eagerly: the text encoder is trained (network_train_unet_only = false), "
                      "outside the captured step",
                      "train.cuda_graphs: B will train eagerly: the text encoder is trained (network_train_unet_only = false), "
                      "outside the captured step"]
    pair = [w for w in plan_warnings(make(tmp_path / "addift", 50, method="addift", cuda_graphs=True)) if "cuda_graphs" in w]
    assert pair == ["train.cuda_graphs: PAIR will train eagerly: the addift route's step runs the U-Net at two LoRA multipliers"]
