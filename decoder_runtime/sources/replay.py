"""Replay: a recorded session's bins, released on a drift-free schedule (replay.pacing).

Bin k is released at t0 + k * bin_width / speed (speed None: as fast as possible). Its
`lag_s` is the release's lateness against that schedule, so a loop that stalls sees the
bins after the stall flagged LATE until it has caught up.

The bins are any sequence of count vectors with their timestamps, so a test or a tool can
replay hand-made bins (including malformed ones) through exactly the path a session takes.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from replay.pacing import Pacer, pacing_stats
from replay.session import BinnedSession


class ReplaySource:
    """Plays `counts[k]` with timestamp `t[k]`, paced at `speed` x real time."""

    def __init__(self, counts: Sequence[np.ndarray] | np.ndarray, t: Sequence[float] | np.ndarray, period: float,
                 speed: float | None = 1.0, n_channels: int | None = None, label: str = "") -> None:
        if len(counts) != len(t):
            raise ValueError(f"counts ({len(counts)} bins) and t ({len(t)}) must have the same length")
        self._counts = counts
        self._t = np.asarray(t, dtype=np.float64)
        self.n_bins = len(self._t)
        self.n_channels = int(n_channels if n_channels is not None else np.shape(counts[0])[0])
        self.period = float(period)
        self.pacer = Pacer(period, speed)
        self.lateness_ns = np.zeros(self.n_bins, dtype=np.int64)
        self.label = label
        self.events: deque[str] = deque()  # a replay has nothing to report between bins
        self._k = 0
        self.finished = self.n_bins == 0

    @classmethod
    def from_session(cls, session: BinnedSession, speed: float | None = 1.0) -> "ReplaySource":
        return cls(session.counts, session.t, session.bin_width, speed, session.n_channels, session.source)

    def start(self) -> None:
        self.pacer.start()

    def pull(self, timeout_s: float) -> tuple[np.ndarray, float, float, int] | None:
        """The next bin when it is due; None (after sleeping `timeout_s`) if it is due later than that."""
        k = self._k
        if k >= self.n_bins:
            self.finished = True
            return None
        if self.pacer.paced and self.pacer.deadline_ns(k) - time.monotonic_ns() > timeout_s * 1e9:
            if timeout_s > 0:  # a poll (timeout 0) returns at once: sleep(0) would yield the core
                time.sleep(timeout_s)
            return None
        late = self.pacer.wait(k)
        self.lateness_ns[k] = late
        self._k = k + 1
        self.finished = self._k >= self.n_bins
        return self._counts[k], float(self._t[k]), late * 1e-9, 0

    def pacing(self) -> dict:
        """Release-error statistics (us) over the bins released so far ({} when not paced)."""
        return pacing_stats(self.lateness_ns[:self._k]) if self.pacer.paced else {}

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"kind": "replay", "session": self.label, "n_bins": self.n_bins, "speed": self.pacer.speed or "max",
                "bin_width": self.period}
