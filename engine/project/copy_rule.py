"""When a side counts as copied: ``[train] stop_when_copied`` read and judged (no torch).

The copy-machine recipe trains a fixed 4000 steps a side whatever the picture; the method says
quality depends on how far each LoRA overfits its teacher. The trainer measures that every
``copy_check_every_n_steps`` (:mod:`engine.train.copy_check`: the LoRA's predicted picture
against its teacher, in dB) and a rule here may end the side early:

- a number: stop at the first check at or above that many dB;
- ``"plateau"``: stop once the last ``copy_plateau_checks`` checks gained no more than
  ``copy_plateau_gain_db`` over the best before them, after the figure has risen at least
  :data:`MIN_RISE_DB` above the first check;
- ``""`` (or ``false``): never stop early (the recipe, the default).

The rule as text (:meth:`StopRule.text`) is recorded in a LoRA that stopped early, so the LoRA
stays current while the rule is the same and becomes stale when it changes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

PLATEAU = "plateau"
# The [train] keys of the copy checks: they only watch training or end it sooner, so they are
# not part of a run's identity (a checkpoint resumes across them; A and B may differ in them
# and still train as one batch).
COPY_KEYS = ("copy_check_every_n_steps", "stop_when_copied", "copy_plateau_gain_db", "copy_plateau_checks")
MAX_TARGET_DB = 100.0
# A plateau counts once the figure has risen this far above the first check (the base's own at
# step 0): a side whose figure never rose has not copied yet, it is not done. Measured on the toy
# example (docs/BENCHMARKS.md): under its caption, A's figure stayed within 0.3 dB of the base's
# for 1000 steps while its sampled copy still improved.
MIN_RISE_DB = 1.0  # a latent copied to 100 dB is bit-exact; anything above is a typo


def parse_stop_when_copied(value: Any) -> float | str:
    """The TOML (or form) value as the rule keeps it: ``""`` (off), ``"plateau"`` or a dB target
    (``30``, ``30.5``, ``"30 dB"``). Raises ValueError with the line a user reads."""
    if value is False or value == "":
        return ""
    if value is True:
        raise ValueError('must be a dB target (e.g. 30), "plateau", or false')
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "false", "off", "no"):
            return ""
        if text == PLATEAU:
            return PLATEAU
        number = re.fullmatch(r"([-+]?[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(db)?", text)
        if number is None:
            raise ValueError('must be a dB target (e.g. 30), "plateau", or false')
        value = float(number.group(1))
    if not isinstance(value, (int, float)):
        raise ValueError('must be a dB target (e.g. 30), "plateau", or false')
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("a dB target must be a number above 0")
    if value > MAX_TARGET_DB:
        raise ValueError(f"a dB target must be at most {MAX_TARGET_DB:g}")
    return value


@dataclass(frozen=True)
class StopRule:
    """One side's rule, with the check interval it is judged at."""

    every: int  # copy_check_every_n_steps
    target_db: float | None = None
    plateau: bool = False
    gain_db: float = 0.2
    window: int = 5

    @property
    def active(self) -> bool:
        return self.every > 0 and (self.target_db is not None or self.plateau)

    def text(self) -> str:
        """The rule in words, as ``check`` shows it and a stopped LoRA records it."""
        if not self.active:
            return "off"
        if self.plateau:
            return (f"plateau: no gain above {self.gain_db:g} dB over {self.window} checks "
                    f"(one every {self.every} steps)")
        return f"at {self.target_db:g} dB (checked every {self.every} steps)"

    def reached(self, history: list[tuple[int, float]]) -> str | None:
        """Why the side is copied, given its checks so far ((step, dB), oldest first), or None."""
        if not self.active or not history:
            return None
        step, last = history[-1]
        if self.target_db is not None:
            return f"copy {last:.1f} dB ≥ {self.target_db:g} dB at step {step}" if last >= self.target_db else None
        if len(history) <= self.window:
            return None
        before = max(db for _, db in history[:-self.window])
        recent = max(db for _, db in history[-self.window:])
        if max(before, recent) - history[0][1] < MIN_RISE_DB:
            return None  # flat from the start: nothing copied yet (a side whose base already draws it), not a plateau
        if recent - before <= self.gain_db:
            return (f"copy plateau at step {step}: best {max(before, recent):.1f} dB, "
                    f"{recent - before:+.2f} dB over the last {self.window} checks")
        return None


    def first_reached(self, history: list[tuple[int, float]]) -> str | None:
        """The rule judged as training would have, check by check (a resumed run's history
        under a rule that may have changed since): why it stops at the first check that
        reaches it, or None."""
        for end in range(1, len(history) + 1):
            reason = self.reached(history[:end])
            if reason is not None:
                return reason
        return None


def stop_rule(params: Any) -> StopRule:
    """The rule of one side's :class:`engine.project.params.TrainParams`."""
    value = params.stop_when_copied
    return StopRule(
        every=params.copy_check_every_n_steps,
        target_db=value if isinstance(value, float) else None,
        plateau=value == PLATEAU,
        gain_db=params.copy_plateau_gain_db,
        window=params.copy_plateau_checks,
    )
