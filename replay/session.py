"""The binned session: the one data shape every other part of spikestream reads.

Training, evaluation, replay and the benchmarks all consume this, so that the numbers a
user reads offline come from exactly the arrays the runtime later streams.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_BIN_WIDTH = 0.025


@dataclass
class BinnedSession:
    """Spike counts per bin with the behaviour they should decode to.

    `velocity` holds NaN where behaviour was missing; `valid` is the mask that says so,
    kept explicit so no consumer ever mistakes a gap for zero velocity.
    """

    counts: np.ndarray  # float32[T, C] spike counts per bin
    t: np.ndarray  # float64[T] bin end times, seconds
    bin_width: float
    unit_ids: np.ndarray  # int64[C]
    velocity: np.ndarray | None = None  # float32[T, 2], NaN where masked
    valid: np.ndarray | None = None  # bool[T]: behaviour present for this bin
    trials: dict[str, np.ndarray] | None = None  # columns, incl. start_time/stop_time
    source: str = ""  # provenance: file path or simulator settings
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = np.ascontiguousarray(self.counts, dtype=np.float32)
        self.t = np.asarray(self.t, dtype=np.float64)
        self.unit_ids = np.asarray(self.unit_ids, dtype=np.int64)
        if self.counts.ndim != 2:
            raise ValueError(f"counts must be [T, C], got shape {self.counts.shape}")
        if self.t.shape != (self.counts.shape[0],):
            raise ValueError(f"t must be [T]={self.counts.shape[0]}, got {self.t.shape}")
        if self.unit_ids.shape != (self.counts.shape[1],):
            raise ValueError(f"unit_ids must be [C]={self.counts.shape[1]}, got {self.unit_ids.shape}")
        if self.velocity is not None:
            self.velocity = np.asarray(self.velocity, dtype=np.float32)
            if self.velocity.shape != (self.counts.shape[0], 2):
                raise ValueError(f"velocity must be [T, 2], got {self.velocity.shape}")
            if self.valid is None:
                self.valid = np.isfinite(self.velocity).all(axis=1)
        if self.valid is not None:
            self.valid = np.asarray(self.valid, dtype=bool)

    @property
    def n_bins(self) -> int:
        return self.counts.shape[0]

    @property
    def n_channels(self) -> int:
        return self.counts.shape[1]

    @property
    def duration(self) -> float:
        return self.n_bins * self.bin_width

    def trial_of_bin(self) -> np.ndarray:
        """int64[T]: index of the trial each bin's end time falls in, -1 outside trials."""
        out = np.full(self.n_bins, -1, dtype=np.int64)
        if not self.trials:
            return out
        for i, (a, b) in enumerate(zip(self.trials["start_time"], self.trials["stop_time"])):
            out[(self.t > a) & (self.t <= b)] = i
        return out

    def slice(self, start: int, stop: int) -> "BinnedSession":
        """A contiguous block of bins (the only kind of split spikestream makes)."""
        return BinnedSession(
            counts=self.counts[start:stop],
            t=self.t[start:stop],
            bin_width=self.bin_width,
            unit_ids=self.unit_ids,
            velocity=None if self.velocity is None else self.velocity[start:stop],
            valid=None if self.valid is None else self.valid[start:stop],
            trials=self.trials,
            source=self.source,
            meta=dict(self.meta, slice=(start, stop)),
        )
