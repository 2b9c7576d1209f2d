"""What a training run returns or raises, shared by the loop, its sides and its callers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import CopyloraError

Log = Callable[[str], None]


class TrainingError(CopyloraError):
    pass


@dataclass(frozen=True)
class TrainResult:
    status: str  # "done" or "stopped"
    step: int
    total: int
    lora_path: Path | None
    state_path: Path | None
    seconds: float
    optimizer: str
    final_loss: float | None
    vram_peak_mb: float | None = None  # torch's peak allocation during the loop (CUDA only)
    copied_at: int | None = None  # the step its stop_when_copied rule ended it at (its LoRA is of that step)

