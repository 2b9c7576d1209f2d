"""bitsandbytes' per-tensor GPU sync is removed from non-paged 8-bit optimizers, and nothing else changes.

The CPU tests check the mechanism on a stand-in optimizer; the GPU test (run on the GPU
acceptance machine) checks that the weights are bit-for-bit those of bitsandbytes' own class.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
bnb_optimizer = pytest.importorskip("bitsandbytes.optim.optimizer")

from engine.train.optim import without_per_tensor_sync  # noqa: E402


class StandIn(torch.optim.Optimizer):
    """Calls bitsandbytes' module-level sync after every tensor, as Optimizer8bit.step does."""

    def __init__(self, params, lr=0.1, is_paged=False):
        super().__init__(params, {"lr": lr})
        self.is_paged = is_paged

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])
                bnb_optimizer.sync_gpu(p)


@pytest.mark.parametrize("paged, syncs", [(False, 0), (True, 3)])
def test_the_sync_is_skipped_only_for_non_paged_optimizers(monkeypatch, paged, syncs):
    calls = []
    monkeypatch.setattr(bnb_optimizer, "sync_gpu", lambda t: calls.append(t))
    original = bnb_optimizer.sync_gpu
    params = [torch.nn.Parameter(torch.ones(4)) for _ in range(3)]
    for p in params:
        p.grad = torch.full((4,), 2.0)
    optimizer = without_per_tensor_sync(StandIn)(params, lr=0.5, is_paged=paged)
    optimizer.step()
    assert len(calls) == syncs
    assert bnb_optimizer.sync_gpu is original  # restored after the step
    assert all(torch.equal(p, torch.zeros(4)) for p in params)  # the update itself ran


def test_the_sync_is_restored_when_the_step_fails(monkeypatch):
    original = bnb_optimizer.sync_gpu

    class Failing(StandIn):
        def step(self, closure=None):
            raise RuntimeError("boom")

    optimizer = without_per_tensor_sync(Failing)([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(RuntimeError):
        optimizer.step()
    assert bnb_optimizer.sync_gpu is original


def test_the_class_keeps_its_name_for_logs_and_metadata():
    import bitsandbytes.optim as bnb_optim

    from engine.train.optim import _bitsandbytes

    cls = _bitsandbytes("AdamW8bit")
    assert issubclass(cls, bnb_optim.AdamW8bit)
    assert (cls.__name__, cls.__module__) == ("AdamW8bit", bnb_optim.AdamW8bit.__module__)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["AdamW8bit", "Lion8bit"])
def test_weights_are_bit_for_bit_those_of_bitsandbytes(name):
    """LoRA-like tensors: small ones (32-bit state below 4096 elements) and large ones (8-bit
    blockwise); 20 steps with the same gradients; every weight and state equal."""
    import bitsandbytes.optim as bnb_optim

    shapes = [(8, 320), (320, 8), (8, 1280), (1280, 8), (8, 768), (640, 8), (16, 2880)]
    g = torch.Generator(device="cuda").manual_seed(0)
    start = [torch.randn(s, device="cuda", generator=g) * 0.02 for s in shapes]
    own = [torch.nn.Parameter(t.clone()) for t in start]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    reference = getattr(bnb_optim, name)(own, lr=1e-3)
    unsynced = without_per_tensor_sync(getattr(bnb_optim, name))(ours, lr=1e-3)
    for _ in range(20):
        for a, b in zip(own, ours):
            grad = torch.randn(a.shape, device="cuda", generator=g)
            a.grad, b.grad = grad.clone(), grad.clone()
        reference.step()
        unsynced.step()
    torch.cuda.synchronize()
    for a, b in zip(own, ours):
        assert torch.equal(a, b)
    for a, b in zip(own, ours):
        for key, value in reference.state[a].items():
            other = unsynced.state[b][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other
