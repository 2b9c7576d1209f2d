"""Short text forms of numbers, sizes, times and progress, shared by every screen.

Times are formatted from a timestamp the caller passes in, never from the clock, so snapshot
tests (which fix the timestamps and ``TZ``) render the same text on every run.
"""

from __future__ import annotations

import time

from engine.train.progress import format_duration

BAR_FULL, BAR_EMPTY = "━", "╌"

# A job's (shown) status -> its Rich style, for the app's tables and `copylora queue` alike.
STATUS_STYLE = {"running": "bold cyan", "queued": "", "paused": "yellow", "done": "green", "failed": "bold red",
                "cancelled": "dim", "interrupted": "bold yellow"}


def bar(fraction: float, width: int) -> str:
    """A text progress bar: readable in any terminal and any colour system."""
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return BAR_FULL * filled + BAR_EMPTY * (width - filled)


def block_bar(fraction: float, width: int) -> str:
    """A solid bar with eighth-block precision, for gauges and the stats summary."""
    eighths = int(round(max(0.0, min(1.0, fraction)) * width * 8))
    full, part = divmod(eighths, 8)
    text = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return text + "·" * (width - len(text))


def size_text(nbytes: int | None) -> str:
    if not nbytes:
        return "—"
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns at GB


def when_text(timestamp: float | None) -> str:
    """An absolute local time (not "5 minutes ago": that would change under a snapshot)."""
    if not timestamp:
        return "—"
    return time.strftime("%b %d %H:%M", time.localtime(timestamp))


def eta_text(seconds: float | None) -> str:
    return format_duration(seconds) if seconds is not None else "--:--"


def rate_text(it_per_s: float | None) -> str:
    """Steps per second with its unit, or seconds per step when slower than one a second
    (a full-size model on a CPU): "12.5 it/s", "4.6 s/it"."""
    if not it_per_s:
        return "—"
    return f"{it_per_s:.1f} it/s" if it_per_s >= 1 else f"{1 / it_per_s:.1f} s/it"


def loss_text(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "—"


def job_loss_text(job) -> str:
    """A training job's smoothed loss for a table cell ("" for other jobs): a twin job (A and
    B in one batch) shows both, "A 0.1234 B 0.1456"."""
    if job.kind != "train" or job.smooth_loss is None:
        return ""
    if getattr(job, "smooth_loss_b", None) is not None:
        return f"A {job.smooth_loss:.4f} B {job.smooth_loss_b:.4f}"
    return f"{job.smooth_loss:.4f}"


def job_copy_text(job) -> str:
    """A training job's newest copy check for a table cell ("" before the first or for other
    jobs): "27.4 dB", or a twin job's "A 27.4 B 26.9"."""
    if job.kind != "train" or getattr(job, "copy_db", None) is None:
        return ""
    if getattr(job, "copy_db_b", None) is not None:
        return f"A {job.copy_db:.1f} B {job.copy_db_b:.1f}"
    return f"{job.copy_db:.1f} dB"


def copy_trend(points: list[dict], key: str = "copy_db", within: float = 0.1) -> str:
    """↑, ↓ or → from the last two copy checks in a job's history points (each point carries
    the newest figure, so a new check is a new value); "" with fewer than two checks."""
    checks: list[float] = []
    for point in points:
        value = point.get(key)
        if value is not None and (not checks or value != checks[-1]):
            checks.append(value)
    if len(checks) < 2:
        return ""
    change = checks[-1] - checks[-2]
    return "↑" if change > within else "↓" if change < -within else "→"


def figure(value: float) -> str:
    """A measured number in at most 8 characters with 3 significant digits: 0.522, 1.74,
    0.00123, and powers of ten for the very small or large (4.1e-06, 2.3e+05), where fixed
    notation would show "0" or run past its column."""
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.3g}"
    return f"{value:.1e}"


def mb_text(mb: float | None) -> str:
    if mb is None:
        return "—"
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def project_label(project_path: str) -> str:
    """A job's project as its folder name: absolute tmp paths never reach the screen."""
    return project_path.rstrip("/").rsplit("/", 1)[-1]


def slurm_pending(job) -> bool:
    """Submitted to Slurm, waiting for a node: its speed, ETA and running time are an earlier
    run's, or none (the Queue table, the Monitor and `copylora queue` say "pending")."""
    return bool(job.live and job.slurm and job.slurm.get("state") == "PENDING")
