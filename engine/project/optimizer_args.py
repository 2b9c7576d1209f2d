"""What ``[train] optimizer_args`` can be told apart from without making the optimizer.

Read by ``copylora check`` and the project form (no torch there) and by the optimizer's builder
(engine.train.optim): a key every optimizer takes the same way, refused before minutes of loading
a model, with a line that says what to write instead.
"""

from __future__ import annotations

from typing import Any


def optimizer_arg_problem(key: str, value: Any) -> str | None:
    """Why ``key = value`` cannot be an optimizer argument, or None where only the optimizer can tell."""
    if key == "lr":  # torch's own words: "got multiple values for keyword argument 'lr'"
        return "lr is [train] learning_rate (the schedule starts from it); remove it here"
    if key == "betas" and not (isinstance(value, (list, tuple)) and len(value) == 2
                               and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value)):
        # bitsandbytes takes any betas when made and fails at its first step (an IndexError for [0.9])
        return f"betas are two numbers in [0, 1), e.g. [0.9, 0.999], got {value!r}"
    return None
