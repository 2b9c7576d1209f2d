"""A Linear and its LoRA as one function (engine/lora/fused.py): the hook's output and gradients
(one LoRA, the twin's pair, the differential B carrying A, under autocast), strength 0 exactly the
base, the Linear's own forward back after ``remove``, a second LoRA on the module as a hook, what
cannot fuse, torch.compile's tracing, and fewer operators a step."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from bench.fused_bench import hooks_only  # noqa: E402
from engine.lora.fused import ForwardReplaced, fusable  # noqa: E402
from engine.lora.network import LoRAModule  # noqa: E402


def _lora(base, rank: int = 4, alpha: float = 2.0, seed: int = 7) -> LoRAModule:
    """A LoRA on ``base`` with a non-zero ``up``, as after training."""
    lora = LoRAModule("m", base, rank, alpha)
    with torch.no_grad():
        lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)
    base.requires_grad_(False)
    return lora


def _step(base, loras, x):
    """Output, the input's gradient and every LoRA parameter's, for a loss on ``base(x)``."""
    for lora in loras:
        lora.zero_grad(set_to_none=True)
    x.grad = None
    out = base(x)
    out.float().square().sum().backward()
    return [out.detach(), x.grad.clone()] + [p.grad.clone() for lora in loras for p in lora.parameters() if p.grad is not None]


def _close(got, want, tol: float = 1e-5) -> bool:
    return len(got) == len(want) and all(g.shape == w.shape and float((g - w).abs().max()) <= tol * max(1.0, float(w.abs().max()))
                                         for g, w in zip(got, want))


def _input(*shape, seed: int = 8):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), requires_grad=True)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 16), (6, 16)])
def test_fused_computes_what_the_hook_does(bias, shape):
    base = torch.nn.Linear(16, 24, bias=bias)
    lora = _lora(base)
    lora.multiplier = 0.7
    x = _input(*shape)
    with hooks_only():
        lora.attach()
    assert not isinstance(lora._hook, ForwardReplaced)
    want = _step(base, [lora], x)
    lora.remove()
    lora.attach()
    assert isinstance(lora._hook, ForwardReplaced) and "forward" in base.__dict__
    got = _step(base, [lora], x)
    assert _close(got, want) and len(got) == 4 and all(float(g.norm()) > 0 for g in got)
    with torch.no_grad():  # a preview's way: the same kernels without the autograd function
        assert torch.equal(base(x), got[0])
    lora.remove()
    assert "forward" not in base.__dict__ and not base._forward_hooks
    assert torch.equal(base(x), torch.nn.functional.linear(x, base.weight, base.bias))  # the Linear's own forward again


def test_strength_zero_is_exactly_the_base_and_strength_is_read_at_each_call():
    base = torch.nn.Linear(16, 24)
    lora = _lora(base)
    lora.attach()
    x = _input(3, 16)
    plain = torch.nn.functional.linear(x, base.weight, base.bias)
    lora.multiplier = 0.0
    assert torch.equal(base(x), plain)
    lora.multiplier = 1.0
    one = base(x) - plain
    lora.multiplier = 0.5
    assert torch.allclose(base(x) - plain, one / 2, atol=1e-6) and float(one.detach().abs().max()) > 0.1


def test_without_gradients_and_with_a_frozen_lora():
    """A preview (no_grad) and a frozen LoRA under an input that needs a gradient: only what is asked."""
    base = torch.nn.Linear(16, 24)
    lora = _lora(base)
    lora.attach()
    x = _input(2, 3, 16)
    with torch.no_grad():
        assert not base(x).requires_grad
    lora.requires_grad_(False)
    base(x).sum().backward()
    assert x.grad is not None and lora.lora_down.weight.grad is None and lora.lora_up.weight.grad is None
    lora.requires_grad_(True)
    x.requires_grad_(False)  # the cross-attention's keys: the text encoder's output needs no gradient
    base(x).sum().backward()
    assert lora.lora_down.weight.grad is not None and lora.lora_up.weight.grad is not None


def test_a_second_lora_on_the_module_is_a_hook_and_both_add():
    base = torch.nn.Linear(16, 24)
    first, second = _lora(base, seed=1), _lora(base, rank=2, alpha=1.0, seed=2)
    x = _input(2, 5, 16)
    with hooks_only():
        first.attach()
        second.attach()
    want = _step(base, [first, second], x)
    first.remove()
    second.remove()
    first.attach()
    second.attach()
    assert isinstance(first._hook, ForwardReplaced) and not isinstance(second._hook, ForwardReplaced)
    assert _close(_step(base, [first, second], x), want)
    first.remove()  # the fused one first: the other's hook still adds its change
    second.remove()
    second.attach()
    alone = base(x)
    second.remove()
    with hooks_only():
        second.attach()
    assert torch.allclose(alone, base(x), atol=1e-6)


def test_what_cannot_fuse_keeps_a_hook():
    class OwnForward(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    assert fusable(torch.nn.Linear(4, 4)) and not fusable(OwnForward(4, 4))
    assert not fusable(torch.nn.Conv2d(4, 4, 1).requires_grad_(False))
    patched = torch.nn.Linear(4, 4).requires_grad_(False)
    patched.forward = lambda x: x  # someone else's (an offloading library's) forward
    assert not fusable(patched)
    full = _lora(torch.nn.Linear(4, 4))
    full.full_precision = True  # the differential route's A on its own: fp32 under autocast, by the hook
    full.attach()
    assert not isinstance(full._hook, ForwardReplaced)
    x = _input(2, 4)
    own = _lora(OwnForward(4, 4))
    own.attach()
    assert not isinstance(own._hook, ForwardReplaced)
    assert torch.allclose(own.base(x), own.base.__class__.forward(own.base, x) + own(x), atol=1e-6)


def test_a_base_that_wants_gradients_gets_them_by_the_hooks_way():
    """A loaded model is not frozen until the trainer freezes it: the function would give its
    weights no gradient, so the call goes the hook's way (under no_grad, the function's)."""
    base = torch.nn.Linear(16, 24)
    lora = LoRAModule("m", base, 4, 2.0)
    lora.attach()
    assert isinstance(lora._hook, ForwardReplaced)
    x = _input(3, 16)
    base(x).square().sum().backward()
    assert base.weight.grad is not None and base.bias.grad is not None and lora.lora_down.weight.grad is not None
    with torch.no_grad():
        assert torch.allclose(base(x), torch.nn.functional.linear(x, base.weight, base.bias) + lora(x), atol=1e-6)


def test_precisions_apart_without_autocast_fall_back_to_the_hooks_casts():
    base = torch.nn.Linear(16, 24).double()
    lora = _lora(base)  # fp32 LoRA on an fp64 base: the hook casts the input and the change
    x = _input(2, 16).detach().double().requires_grad_()
    with hooks_only():
        lora.attach()
    want = _step(base, [lora], x)
    lora.remove()
    lora.attach()
    got = _step(base, [lora], x)
    assert got[0].dtype == torch.float64 and _close(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_as_close_to_fp64_as_the_hook(dtype):
    """The casts autocast would make, made outside the function; the parameters' gradients in fp32."""
    base = torch.nn.Linear(64, 96)
    lora = _lora(base, rank=8, alpha=8.0)
    lora.multiplier = 0.8
    x = _input(2, 9, 64)
    reference_base = torch.nn.Linear(64, 96).double().requires_grad_(False)
    reference_base.load_state_dict(base.state_dict())
    reference = _lora(reference_base, rank=8, alpha=8.0).double()
    reference.load_state_dict(lora.state_dict())
    reference.multiplier = 0.8
    reference.attach()
    want = _step(reference_base, [reference], x.detach().double().requires_grad_())
    errors = {}
    for way in ("hooked", "fused"):
        with hooks_only() if way == "hooked" else _nothing():
            lora.attach()
        with torch.autocast("cpu", dtype=dtype):
            got = _step(base, [lora], x)
        lora.remove()
        assert got[0].dtype == dtype and all(g.dtype == torch.float32 for g in got[2:])
        errors[way] = [float((g.double() - w).norm() / w.norm()) for g, w in zip(got, want)]
    assert all(f <= 1.5 * h + 1e-6 for f, h in zip(errors["fused"], errors["hooked"])), errors


def test_the_twin_pair_runs_each_half_through_its_own_lora_in_one_function():
    from engine.train.results import TrainingError
    from engine.train.twin import TwinHooks

    class Network:
        def __init__(self, loras):
            self._loras = loras

        def loras(self):
            return self._loras

    base = torch.nn.Linear(16, 24)
    a, b = _lora(base, seed=1), _lora(base, seed=2)
    x = _input(2, 5, 16)
    hooks = TwinHooks(Network([a]), Network([b]))
    with hooks_only():
        hooks.apply()
    assert not isinstance(hooks.handles[0], ForwardReplaced)
    want = _step(base, [a, b], x)
    hooks.remove()
    hooks.apply()
    assert isinstance(hooks.handles[0], ForwardReplaced)
    got = _step(base, [a, b], x)
    assert _close(got, want) and len(got) == 6
    with torch.no_grad():
        assert torch.equal(base(x), got[0])
    one = torch.nn.functional.linear(x, base.weight, base.bias)
    assert torch.allclose(got[0][:1], (one + a(x))[:1], atol=1e-5) and torch.allclose(got[0][1:], (one + b(x))[1:], atol=1e-5)
    with pytest.raises(TrainingError, match="even batch"):
        base(_input(3, 5, 16))
    b.multiplier = 0.5  # scaled apart: each side's own LoRA on its half, by the hook's way
    assert torch.allclose(base(x)[1:], (one + b(x))[1:], atol=1e-5)
    hooks.remove()
    assert "forward" not in base.__dict__ and not base._forward_hooks


def test_the_differential_b_carries_a_in_the_fused_function():
    """As in a run: A (fp32, frozen) hooked first, B fused, B carrying A's rows."""
    base = torch.nn.Linear(16, 24)
    a, b = _lora(base, rank=4, alpha=2.0, seed=1), _lora(base, rank=8, alpha=1.0, seed=2)
    a.requires_grad_(False)
    a.full_precision = True
    a.multiplier = 0.7
    a.attach()
    b.attach()
    assert isinstance(b._hook, ForwardReplaced) and not isinstance(a._hook, ForwardReplaced)
    x = _input(2, 5, 16)
    apart = _step(base, [b], x)
    b.fold(a)
    assert b.carries(a)
    together = _step(base, [b], x)
    assert _close(together, apart)
    b.multiplier = 0.0  # B at strength 0: A adds itself, as a preview's first column wants
    plain = torch.nn.functional.linear(x, base.weight, base.bias)
    assert torch.allclose(base(x), plain + a(x), atol=1e-5)


class _Block(torch.nn.Module):
    """Two Linear targets (with and without bias) around a GELU."""

    def __init__(self, width: int):
        super().__init__()
        self.a, self.b = torch.nn.Linear(width, 2 * width), torch.nn.Linear(2 * width, width, bias=False)

    def forward(self, x):
        return self.b(torch.nn.functional.gelu(self.a(x)))


def _block_with_loras(width: int, device: str):
    torch.manual_seed(0)
    block = _Block(width).to(device)
    loras = [_lora(block.a, seed=1).to(device), _lora(block.b, rank=2, seed=2).to(device)]
    for lora in loras:
        lora.attach()
    return block, loras


def test_torch_compile_traces_the_fused_forward_and_follows_the_strength():
    """Dynamo's tracing of the replaced forward and the autograd function (``aot_eager``: no
    inductor code, whose CPU backward is what compile is off for on the CPU)."""
    block, loras = _block_with_loras(16, "cpu")
    x = _input(2, 7, 16)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    assert _close(_step(compiled, loras, x), _step(block, loras, x))
    loras[0].multiplier = 0.5
    assert _close(_step(compiled, loras, x), _step(block, loras, x))


def test_a_unet_step_dispatches_far_fewer_operators(tiny):
    """tiny's U-Net forward and backward with a LoRA at every target: fused against hooked."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bench.op_count import NO_KERNEL
    from engine.lora.network import LoRANetwork

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = self.kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            self.kernels += not (func.is_view or func.overloadpacket.__name__ in NO_KERNEL)
            return func(*args, **(kwargs or {}))

    network = LoRANetwork(tiny.unet, tiny.text_encoders, family=tiny.family, rank=4, text_encoder=False)
    latents = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(1, 77, tiny.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    counts, grads = {}, {}
    trains = [p.requires_grad for p in tiny.unet.parameters()]
    tiny.unet.requires_grad_(False)  # as the trainer has it: a LoRA's base is frozen
    for way in ("hooked", "fused"):
        with hooks_only() if way == "hooked" else _nothing():
            network.apply_to()
        network.zero_grad(set_to_none=True)
        with Counter() as counter:
            tiny.unet(latents, 10, cond).sample.square().mean().backward()
        network.remove()
        counts[way] = (counter.ops, counter.kernels)
        grads[way] = [p.grad.clone() for p in network.unet_parameters()]
    for p, flag in zip(tiny.unet.parameters(), trains):
        p.requires_grad_(flag)
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in tiny.unet.modules())
    assert _close(grads["fused"], grads["hooked"], 1e-4)
    ops, kernels = (counts["fused"][i] / counts["hooked"][i] for i in (0, 1))
    assert ops < 0.8 and kernels < 0.95, counts


DEVICE = "cuda"  # the GPU tests' device (switched to "cpu" by hand, they run here too)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_fused_unet_under_fp16_autocast_is_as_close_to_fp64_as_hooked():
    """As `mixed_precision = "fp16"` trains: the base in fp16 under autocast, a LoRA at every
    target; the output and the LoRA's gradients against the same U-Net in fp64."""
    from engine.lora.network import LoRANetwork
    from engine.models.loading import load_base_model

    dtype = torch.float16 if DEVICE == "cuda" else torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = False
    model = load_base_model("tiny", device=DEVICE)
    unet = model.unet.requires_grad_(False)
    torch.manual_seed(0)
    network = LoRANetwork(unet, model.text_encoders, family="sd1", rank=8, alpha=1.0, text_encoder=False)
    with torch.no_grad():
        for lora in network.loras():
            lora.lora_up.weight.normal_(0, 0.1)
    x, t = torch.randn(1, 4, 16, 24, device=DEVICE), torch.tensor([500], device=DEVICE)
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, device=DEVICE)

    def run(way: str, precision: torch.dtype):
        network.zero_grad(set_to_none=True)
        with hooks_only() if way == "hooked" else _nothing():
            network.apply_to()
        try:
            if precision == torch.float64:
                out = unet(x.double(), t, cond.double()).sample
            else:
                with torch.autocast(DEVICE, dtype=precision):
                    out = unet(x.to(precision), t, cond.to(precision)).sample
            out.double().square().mean().backward()
        finally:
            network.remove()
        return [out.detach().double()] + [p.grad.double() for p in network.unet_parameters()]

    unet.double()
    network.double()
    reference = run("fused", torch.float64)
    unet.to(dtype)
    network.float()
    errors = {}
    for way in ("hooked", "fused"):
        got = run(way, dtype)
        errors[way] = (float((got[0] - reference[0]).norm() / reference[0].norm()),
                       max(float((g - w).norm() / w.norm()) for g, w in zip(got[1:], reference[1:]) if float(w.norm()) > 1e-6))
    unet.float()
    print(f"{dtype} autocast on {DEVICE} against fp64 (output, worst LoRA gradient): hooked {errors['hooked']}, fused {errors['fused']}")
    assert all(f <= 1.1 * h + 1e-4 for f, h in zip(errors["fused"], errors["hooked"])), errors


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_torch_compile_of_the_fused_forward_trains_as_eager():
    """`[train] compile` on CUDA (inductor): the compiled block's output and gradients, fused LoRAs
    at two strengths, as eager's (fp32; TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    block, loras = _block_with_loras(64, DEVICE)
    x = _input(2, 7, 64).detach().to(DEVICE).requires_grad_()
    compiled = torch.compile(block)
    assert _close(_step(compiled, loras, x), _step(block, loras, x), 1e-4)
    loras[0].multiplier = 0.5
    assert _close(_step(compiled, loras, x), _step(block, loras, x), 1e-4)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_training_log_says_how_the_loras_run(tmp_path, tiny):
    """One line per run: a GPU run that did not get faster says here whether its LoRAs were fused."""
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.train.trainer import train
    from tests.helpers import copy_example

    plan = make_plan(load_project(copy_example(tmp_path)), max_steps=2)
    said: dict[str, list[str]] = {}
    for way in ("fused", "hooked"):
        logs: list[str] = []
        with hooks_only() if way == "hooked" else _nothing():
            train(plan, "a", model=tiny, log=logs.append)
        said[way] = [line for line in logs if line.startswith("LoRA targets:")]
    assert said["fused"] == ["LoRA targets: 160 of 192 computed inside their Linear's function, 32 by forward hooks (convolutions, other layers)"]
    assert said["hooked"] == ["LoRA targets: 0 of 192 computed inside their Linear's function, 192 by forward hooks (convolutions, other layers)"]
