"""How a caller steers a training run and hears from it: one object, handed from the job runner
or the CLI through :func:`engine.train.trainer.train` (or :func:`engine.train.twin.train_twin`)
to the loop, instead of six callback arguments repeated in every signature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from engine.train.progress import Progress


@dataclass(frozen=True)
class TrainControls:
    """Every field optional: a run with none trains to the end and says nothing but its log."""

    on_progress: Callable[[Progress], None] | None = None  # each step's progress (a twin's carries B's loss in loss_b)
    should_stop: Callable[[], bool] | None = None  # polled every step: the state is written and the run says "stopped"
    save_requested: Callable[[], bool] | None = None  # a state + LoRA snapshot at the next step
    sample_requested: Callable[[], bool] | None = None  # a preview at the next step, as sample_every_n_steps makes them
    on_start: Callable[[int, int], None] | None = None  # (first step, total) once known: 0, or where a resumed run goes on

    def stop_asked(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def save_asked(self) -> bool:
        return self.save_requested is not None and self.save_requested()

    def sample_asked(self) -> bool:
        return self.sample_requested is not None and self.sample_requested()


NO_CONTROLS = TrainControls()
