"""Time left in a run: the one ETA the trainers, the progress adapter and the worker's job context report."""
from __future__ import annotations

__all__ = ["eta_s"]


def eta_s(elapsed_s: float, done: float, total: float) -> float | None:
    """Seconds left when ``done`` of ``total`` steps took ``elapsed_s`` seconds, at that pace; None before the first
    step is done or without a total."""
    if not total or done <= 0:
        return None
    return elapsed_s / done * max(float(total) - float(done), 0.0)
