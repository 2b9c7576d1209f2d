"""A job's stored progress history (its curve points), as the newest attempt left it.

Points are keyed by step, and every attempt of a job (paused and resumed, failed and retried,
killed and recovered) writes into the same rows. A resumed attempt continues from its
checkpoint's step, which can be earlier than where the last attempt got to (a retry after a
diverged loss resumes from the last good checkpoint, a twin job from the step both sides
share, a job with no usable checkpoint from 0), and it writes every ``stride``-th step only
(long runs), so the abandoned attempt's points past the checkpoint stayed between the new
ones: the curve, and its end, showed the old attempt's loss after the new one had finished.
"""

from __future__ import annotations


def newest_attempt(points: list[dict], started_at: float | None, start_step: int | None) -> list[dict]:
    """``points`` without those an older attempt wrote past the step the newest one resumed
    from (``start_step``; it started at ``started_at``). The history up to that step is the
    one the newest attempt continues, and stays."""
    if started_at is None or not any(p.get("t") is not None and p["t"] >= started_at for p in points):
        return points  # the newest attempt has written nothing yet (it loads its model): the last one's curve
    resumed_at = start_step or 0
    return [p for p in points if p["step"] <= resumed_at or p.get("t") is None or p["t"] >= started_at]
