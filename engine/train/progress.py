"""Training progress as plain events, with the smoothing and timing the monitors need.

The trainer emits one :class:`Progress` per step through a callback; whoever listens decides
how often to persist or draw it (the queue writes a few per second at most). The ETA comes
from here, measured over a recent window, so every client shows the same figure.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Progress:
    step: int  # steps done so far
    total: int
    loss: float
    smooth_loss: float
    lr: float
    it_per_s: float
    eta_s: float
    elapsed_s: float
    vram_peak_mb: float | None = None
    # Twin training (A and B as one batch): ``loss``/``smooth_loss`` are A's, these B's.
    loss_b: float | None = None
    smooth_loss_b: float | None = None
    # Copy fidelity (engine.train.copy_check): each side's newest figure in dB (A's, or the one
    # side's, in copy_db), and the step it was measured at (None before the first check).
    copy_db: float | None = None
    copy_db_b: float | None = None
    copy_step: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class ProgressMeter:
    """Exponential moving average of the loss and a windowed steps/second.

    ``alpha`` 0.05 ~ the last 20 steps: the raw loss of a single-image run jumps with the random
    timestep, so the smoothed curve is the one to read.
    """

    def __init__(self, total: int, start_step: int = 0, alpha: float = 0.05, window: int = 50) -> None:
        self.total = total
        self.alpha = alpha
        self.smooth: float | None = None
        self.started = time.perf_counter()
        self.times: deque[tuple[int, float]] = deque(maxlen=window)
        self.times.append((start_step, self.started))

    def update(self, step: int, loss: float, lr: float, vram_peak_mb: float | None = None) -> Progress:
        now = time.perf_counter()
        if math.isfinite(loss):
            self.smooth = loss if self.smooth is None else (1 - self.alpha) * self.smooth + self.alpha * loss
        self.times.append((step, now))
        first_step, first_time = self.times[0]
        rate = (step - first_step) / (now - first_time) if now > first_time and step > first_step else 0.0
        eta = (self.total - step) / rate if rate > 0 else math.inf
        return Progress(
            step=step,
            total=self.total,
            loss=loss,
            smooth_loss=self.smooth if self.smooth is not None else loss,
            lr=lr,
            it_per_s=rate,
            eta_s=eta,
            elapsed_s=now - self.started,
            vram_peak_mb=vram_peak_mb,
        )


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
