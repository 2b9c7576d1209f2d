"""`[train] cuda_graphs`: the step's forward and backward captured once as a CUDA graph and
replayed every step after.

Why: on an H100 a 600×900 SD1.5 step took ~230 ms of which the GPU worked ~48 ms; the rest was
the host launching ~6 000 small kernels (192 LoRA modules, forward and backward;
docs/BENCHMARKS.md). A copy-machine step is the ideal case for a graph: one picture, one
bucket, the same shapes and the same work every step. A replay is one launch.

What is captured is :meth:`StepFunction.compute` (U-Net forward, losses, the one backward).
What is not, and why:
- the draws (:meth:`StepFunction.prepare`): they come from each side's CPU generator, so the
  random streams stay the eager run's (resume, the twin/separate equality); each step's draws
  are copied into the graph's static input tensors;
- the optimizer steps (:meth:`StepFunction.update`): the fp16 grad scaler's inf check reads the
  device, and bitsandbytes' 8-bit step is not capturable; they are a few hundred launches at
  most, against thousands for forward and backward.

The graph writes each parameter's gradient into a tensor of its own memory pool (the gradients
are ``None`` when it is captured, so backward assigns rather than accumulates); after a replay
those tensors are handed back to the parameters for the eager optimizer step.

Where capture is not possible the step runs eagerly and the log says why, once: no CUDA, a
route whose step changes the LoRA's multiplier between forwards, a trained text encoder, several
buckets, torch.compile asked for too, a capture that fails, or inputs whose shapes change.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Protocol

from engine.train.results import Log

# Eager steps before the capture: cuDNN/cuBLAS pick their kernels and the allocator settles
# (PyTorch's CUDA-graph notes warm up for a few iterations on a side stream). They are real
# training steps, so nothing is lost to them.
WARMUP_STEPS = 3


class Graph(Protocol):
    """What :class:`GraphedStep` needs of a graph: capture a function once, replay it."""

    def warming(self) -> AbstractContextManager: ...
    def capture(self, body: Callable[[], None]) -> None: ...
    def replay(self) -> None: ...


class CudaGraph:
    """``torch.cuda.CUDAGraph``: :meth:`capture` records ``body``'s kernels without running
    them; :meth:`replay` runs them on the tensors they were recorded with."""

    def __init__(self) -> None:
        import torch

        self.graph = torch.cuda.CUDAGraph()
        self.side = torch.cuda.Stream()

    def warming(self) -> AbstractContextManager:
        return _side_stream(self.side)

    def capture(self, body: Callable[[], None]) -> None:
        import torch

        with torch.cuda.graph(self.graph):
            body()

    def replay(self) -> None:
        self.graph.replay()


class _side_stream:
    """Eager steps on a side stream, as PyTorch's notes do before a capture."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __enter__(self):
        import torch

        self.stream.wait_stream(torch.cuda.current_stream())
        self.context = torch.cuda.stream(self.stream)
        self.context.__enter__()

    def __exit__(self, *exc) -> None:
        import torch

        self.context.__exit__(*exc)
        torch.cuda.current_stream().wait_stream(self.stream)


class EagerReplay:
    """The CPU's stand-in for a CUDA graph, for the tests: :meth:`capture` runs nothing,
    :meth:`replay` runs the body again, on the same static input tensors. What it checks is the
    plumbing around a graph (the draws copied in, the gradients handed back, the losses copied
    out) on the real trainer, where no GPU is."""

    def warming(self) -> AbstractContextManager:
        return nullcontext()

    def capture(self, body: Callable[[], None]) -> None:
        self.body = body

    def replay(self) -> None:
        self.body()


def graph_type(device: str) -> tuple[type | None, str]:
    """(the graph to capture with on ``device``, "") or (None, why there is none)."""
    if not str(device).startswith("cuda"):
        return None, "there is no CUDA device (training on the CPU)"
    return CudaGraph, ""


def graphed(step, wanted: bool, device: str, problem: str, log: Log):
    """``step`` itself, or a :class:`GraphedStep` around it when ``[train] cuda_graphs`` is on
    and nothing stands in the way (else one log line says why it trains eagerly)."""
    kind, why = graph_type(device)
    if not wanted:
        if kind is not None and not (why or problem):  # the default, off: say what it leaves on the table, once
            log("cuda_graphs = false: this step could be captured as one CUDA graph and replayed ([train] cuda_graphs = true; "
                "SD1.5 600x900 on an H100: 21.8 it/s graphed, 6.6 eager)")
        return step
    why = why or problem
    if kind is None or why:
        log(f"cuda_graphs = true: training eagerly: {why}")
        return step
    return GraphedStep(step, kind(), log)


def _tensors(draws: list) -> list:
    """Every tensor of the step's draws, in a fixed order (what the graph reads)."""
    out = []
    for draw in draws:
        out += [draw.noisy, draw.timesteps, draw.cond, draw.target, draw.weights]
        if draw.added is not None:
            out += [draw.added[k] for k in sorted(draw.added)]
    return out


def _signature(draws: list, training: tuple[bool, ...]) -> tuple:
    return training, tuple((tuple(t.shape), t.dtype, t.device) for t in _tensors(draws))


class GraphedStep:
    """A :class:`engine.train.trainer.StepFunction` whose :meth:`compute` is captured after
    :data:`WARMUP_STEPS` eager steps and replayed from then on; called like the step itself."""

    def __init__(self, step, graph: Graph, log: Log) -> None:
        self.step, self.graph, self.log = step, graph, log
        self.defer = step.defer
        self.warm = 0
        self.captured: tuple | None = None  # the signature the graph was captured for
        self.static: list | None = None  # the draws the graph reads (filled in place each step)
        self.grads: list = []  # (parameter, the gradient tensor the graph writes)
        self.out: Any = None  # the losses the graph writes
        self.off = False  # capture failed: eager from here on
        self.said_shapes = False
        step.amp = _uncached(step.amp)  # autocast's weight cache must be off while capturing

    def __call__(self, step: int):
        s = self.step
        draws, training = s.prepare(step), s.training()
        if self.off:
            losses = s.compute(draws, training)
        elif self.captured is None and self.warm < WARMUP_STEPS:
            self.warm += 1
            with self.graph.warming():
                losses = s.compute(draws, training)
        elif self.captured is None:
            losses = self._capture(step, draws, training)
        elif _signature(draws, training) != self.captured:
            if not self.said_shapes:
                self.log(f"cuda_graphs: step {step + 1}'s inputs differ from the captured step's (shapes, or a side "
                         "that stopped): such steps run eagerly")
                self.said_shapes = True
            losses = s.compute(draws, training)
        else:
            losses = self._replay(draws)
        s.check(step, losses)
        s.update()
        return losses

    def _params(self) -> list:
        return [q for run, on in zip(self.step.runs, self.step.training()) if on for q in run.params]

    def _capture(self, step: int, draws: list, training: tuple[bool, ...]):
        s = self.step
        self.static = [_clone_draw(d) for d in draws]
        params = self._params()
        for q in params:  # None: the captured backward assigns each gradient (never accumulates)
            q.grad = None

        def body() -> None:
            assert self.static is not None
            self.out = s.compute(self.static, training)

        try:
            self.graph.capture(body)
        except Exception as exc:  # noqa: BLE001 - whatever stops a capture, the step trains eagerly
            self.off, self.static, self.out = True, None, None
            for q in params:
                q.grad = None
            self.log(f"cuda_graphs: the step could not be captured ({type(exc).__name__}: {str(exc)[:200]}); "
                     "training eagerly")
            return s.compute(draws, training)
        self.captured = _signature(draws, training)
        self.grads = [(q, q.grad) for q in params]
        self.log(f"cuda_graphs: step {step + 1} captured after {self.warm} eager steps; replayed from here on")
        return self._replay(draws, fill=False)  # capturing ran nothing: the captured step is its first replay

    def _replay(self, draws: list, fill: bool = True):
        assert self.static is not None
        if fill:
            for static, new in zip(_tensors(self.static), _tensors(draws)):
                static.copy_(new)
        self.graph.replay()
        for q, grad in self.grads:  # the optimizer step set them to None: hand the graph's back
            if q.grad is None:
                q.grad = grad
        return self.out.clone()  # the next replay overwrites the graph's own


def _clone_draw(draw):
    from dataclasses import replace

    added = None if draw.added is None else {k: v.clone() for k, v in draw.added.items()}
    return replace(draw, noisy=draw.noisy.clone(), timesteps=draw.timesteps.clone(), cond=draw.cond.clone(), added=added,
                   target=draw.target.clone(), weights=draw.weights.clone())


def _uncached(amp):
    """The same autocast without its weight cache (PyTorch: caching must be off in a capture)."""
    import torch

    if not isinstance(amp, torch.autocast) or not amp._enabled:
        return amp
    return torch.autocast(device_type=amp.device, dtype=amp.fast_dtype, enabled=True, cache_enabled=False)
