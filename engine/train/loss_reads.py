"""Reading the step's losses from the device without stalling the GPU."""

from __future__ import annotations

import time

# Reading the loss on the host waits for the GPU to finish the step, so the host cannot queue
# the next step's kernels meanwhile. On CUDA the losses stay on the device and are read
# together (one wait) at most this often, and always before anything is written, so a
# checkpoint or LoRA never holds the weights of a diverged step.
LOSS_READ_S = 0.25


def defers_loss_reads(device: str) -> bool:
    """Whether the loop reads losses in batches (CUDA) or every step (CPU: reading is free)."""
    return str(device).startswith("cuda")



class PendingLosses:
    """Losses kept on the device until read together (one host-device wait for all of them).

    On the CPU (``defer`` False) every step is read at once, as before; on CUDA at most every
    :data:`LOSS_READ_S`, and whenever the caller forces it (before anything is written)."""

    def __init__(self, defer: bool) -> None:
        self.defer = defer
        self.items: list = []  # (step, losses on the device (one per side), lr)
        self.last_read = time.monotonic()

    def add(self, step: int, losses, lr: float) -> None:
        self.items.append((step, losses, lr))

    def due(self, force: bool = False) -> bool:
        return bool(self.items) and (not self.defer or force or time.monotonic() - self.last_read >= LOSS_READ_S)

    def read(self) -> list[tuple[int, list[float], float]]:
        import torch

        values = torch.stack([losses for _, losses, _ in self.items]).float().tolist()
        out = [(step, row, lr) for (step, _, lr), row in zip(self.items, values)]
        self.items.clear()
        self.last_read = time.monotonic()
        return out

