"""One side's TensorBoard log: the loss and learning rate of every step, under kohya's tag names
(``loss/current``, ``loss/average``, ``lr/unet``, ``lr/textencoder``) so that a kohya user's
TensorBoard layouts and habits carry over. Written through ``torch.utils.tensorboard``."""

from __future__ import annotations

from collections import deque
from typing import Callable

from engine.errors import CopyloraError
from engine.project.training_logs import INSTALL, run_folder, tensorboard_wanted


class StepLog:
    def __init__(self, writer, window: int, text_lr_ratio: float | None) -> None:
        self.writer = writer
        self.recent: deque[float] = deque(maxlen=max(1, window))  # kohya's average: the last epoch's steps
        self.text_lr_ratio = text_lr_ratio  # text-encoder lr / U-Net lr (a schedule scales both alike)

    def step(self, step: int, loss: float, lr: float) -> None:
        self.recent.append(loss)
        self.writer.add_scalar("loss/current", loss, step)
        self.writer.add_scalar("loss/average", sum(self.recent) / len(self.recent), step)
        self.writer.add_scalar("lr/unet", lr, step)
        if self.text_lr_ratio is not None:
            self.writer.add_scalar("lr/textencoder", lr * self.text_lr_ratio, step)

    def close(self) -> None:
        self.writer.close()


def open_step_log(plan, side: str, started: float, log: Callable[[str], None]) -> StepLog | None:
    """The side's log when its [train] asks for TensorBoard (log_with / logging_dir), else None."""
    sp = plan.side(side)
    p = sp.params
    if not tensorboard_wanted(p):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CopyloraError(f"log_with = \"tensorboard\" needs the tensorboard package, which is not installed: {INSTALL}") from None
    folder = run_folder(plan.project, side, started)
    log(f"TensorBoard log of {side.upper()}: {folder} (tensorboard --logdir {folder.parent.parent})")
    text_ratio = None if p.network_train_unet_only else (p.text_encoder_lr or p.learning_rate) / (p.unet_lr or p.learning_rate)
    return StepLog(SummaryWriter(str(folder), flush_secs=10), sp.steps_per_epoch, text_ratio)
