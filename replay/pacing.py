"""Real-time pacing of a recorded session: a drift-free schedule.

Bin k is released at `t0 + k * period / speed`, every deadline computed from the start
time rather than by sleeping one period after the previous bin: a late bin (a slow step, a
scheduler hiccup) then delays only itself, and the bins after it catch up, so the error
never accumulates over a long session.

Waiting sleeps until `spin_s` (1 ms) before the deadline and spins the rest: `time.sleep`
alone is late by ~190 us on average with a 108 us spread on our VMs, sleep-then-spin by
26 us (spread) / 95 us (p99) (REFERENCE.md). `speed=None` (or inf) releases every bin at
once ("max"): lateness is then reported as 0.
"""
from __future__ import annotations

import math
import time

import numpy as np


def parse_speed(text: str | float | None) -> float | None:
    """'1', '2.5', 'max' -> speed factor, None meaning as fast as possible."""
    if text is None:
        return None
    if isinstance(text, str) and text.strip().lower() in ("max", "inf", "fast"):
        return None
    try:
        speed = float(text)
    except ValueError:
        raise ValueError(f"speed must be a positive number or 'max', got {text!r}") from None
    if math.isinf(speed):
        return None
    if not speed > 0:
        raise ValueError(f"speed must be a positive number or 'max', got {text!r}")
    return speed


class Pacer:
    """Releases bin k at its scheduled time and says how late the release was."""

    def __init__(self, period: float, speed: float | None = 1.0, spin_s: float = 0.001) -> None:
        if not period > 0:
            raise ValueError(f"period must be > 0 seconds, got {period}")
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 or None (max), got {speed}")
        self.period = float(period)
        self.speed = None if speed is None or math.isinf(speed) else float(speed)
        self.step_ns = 0.0 if self.speed is None else self.period * 1e9 / self.speed
        self.spin_ns = int(spin_s * 1e9)
        self.t0_ns = 0

    @property
    def paced(self) -> bool:
        return self.speed is not None

    def start(self, t0_ns: int | None = None) -> int:
        """Fix the schedule's origin (now, by default); bin 0 is due at t0."""
        self.t0_ns = time.monotonic_ns() if t0_ns is None else int(t0_ns)
        return self.t0_ns

    def deadline_ns(self, k: int) -> int:
        """When bin k is due: computed from t0 and k alone, never from earlier releases."""
        return self.t0_ns + round(k * self.step_ns)

    def wait(self, k: int) -> int:
        """Block until bin k is due; returns how late the release was, in ns (>= 0)."""
        if self.speed is None:
            return 0
        due = self.t0_ns + round(k * self.step_ns)
        now = time.monotonic_ns()
        if due - now > self.spin_ns:
            time.sleep((due - now - self.spin_ns) * 1e-9)
        while (now := time.monotonic_ns()) < due:
            pass
        return now - due


def pacing_stats(lateness_ns: np.ndarray) -> dict:
    """Summary of release errors in us: mean, std, p50, p99, max (NaN for no bins)."""
    x = np.asarray(lateness_ns, dtype=np.float64) / 1e3
    if x.size == 0:
        return {k: float("nan") for k in ("mean_us", "std_us", "p50_us", "p99_us", "max_us")}
    return {
        "mean_us": float(x.mean()),
        "std_us": float(x.std()),
        "p50_us": float(np.percentile(x, 50)),
        "p99_us": float(np.percentile(x, 99)),
        "max_us": float(x.max()),
    }
