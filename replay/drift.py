"""Seeded non-stationarities for simulated sessions, for the adaptation work to train against.

A `DriftSpec` says what should go wrong and when; `realise` turns it, for one population and
one seed, into the per-unit numbers the spike generator applies. Every effect acts on the
firing rate only (behaviour is untouched), as electrode drift does on a real array.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DRIFT_KINDS = ("random_walk", "linear")


@dataclass(frozen=True)
class DriftSpec:
    """What drifts, by how much and from when (times in seconds from session start).

    - baseline_drift: an additive, unit-specific change of firing rate in Hz that does not
      scale with tuning. "random_walk": its s.d. across units is `baseline_drift` Hz after one
      minute and grows with sqrt(time); "linear": each unit's slope is drawn with s.d.
      `baseline_drift` Hz per minute.
    - gain_change: every unit's whole rate is multiplied by gain_change * exp(N(0,
      gain_spread)), reached linearly over `gain_ramp` seconds after `gain_onset`.
    - dead_fraction: that fraction of units emits no spike from `dead_onset` on.
    - noisy_fraction: that fraction of units (disjoint from the dead) gains `noisy_rate` Hz
      of untuned Poisson spikes from `noisy_onset` on, like a channel picking up noise.
    - shift_at: at that time every unit's rate steps by a factor exp(N(0, shift_size)), as
      after an array micro-movement; None means no shift.
    `seed` fixes which units are hit and by how much; None uses the session's seed.
    """

    baseline_drift: float = 0.0
    baseline_kind: str = "random_walk"
    baseline_onset: float = 0.0
    gain_change: float = 1.0
    gain_spread: float = 0.0
    gain_onset: float = 0.0
    gain_ramp: float = 0.0
    dead_fraction: float = 0.0
    dead_onset: float = 0.0
    noisy_fraction: float = 0.0
    noisy_rate: float = 40.0
    noisy_onset: float = 0.0
    shift_at: float | None = None
    shift_size: float = 0.5
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.baseline_kind not in DRIFT_KINDS:
            raise ValueError(f"baseline_kind must be one of {DRIFT_KINDS}, got {self.baseline_kind!r}")
        for name in ("dead_fraction", "noisy_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.dead_fraction + self.noisy_fraction > 1.0:
            raise ValueError("dead_fraction + noisy_fraction must be <= 1 (the sets are disjoint)")
        for name in ("baseline_drift", "gain_spread", "gain_ramp", "noisy_rate", "shift_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.gain_change > 0:
            raise ValueError(f"gain_change must be > 0 (a factor), got {self.gain_change}")

    @property
    def active(self) -> bool:
        return (self.baseline_drift > 0 or self.gain_change != 1.0 or self.gain_spread > 0
                or self.dead_fraction > 0 or self.noisy_fraction > 0 or self.shift_at is not None)


KNOT_DT = 1.0  # seconds between knots of the baseline-drift curve (linearly interpolated)


@dataclass
class RealisedDrift:
    """The drift one session actually got; the arrays are per unit."""

    spec: DriftSpec
    gain: np.ndarray  # float64[C] final multiplicative gain
    shift: np.ndarray  # float64[C] log-rate step at spec.shift_at (zeros if no shift)
    dead: np.ndarray  # bool[C]
    noisy: np.ndarray  # bool[C]
    offset_knots: np.ndarray  # float64[K, C] additive Hz at times k * KNOT_DT
    knot_dt: float = KNOT_DT
    summary: dict = field(default_factory=dict)

    def offset_at(self, t: np.ndarray) -> np.ndarray:
        """float64[len(t), C] additive baseline offset (Hz) at times t, as the generator uses."""
        k = np.clip(np.asarray(t, dtype=np.float64) / self.knot_dt, 0, self.offset_knots.shape[0] - 1)
        i = np.minimum(k.astype(np.int64), self.offset_knots.shape[0] - 2)
        f = (k - i)[:, None]
        return self.offset_knots[i] * (1 - f) + self.offset_knots[i + 1] * f


def realise(spec: DriftSpec | None, n_units: int, duration: float, seed: int) -> RealisedDrift:
    """Draw the per-unit effects of `spec` for a session (None: no drift at all)."""
    spec = spec or DriftSpec()
    rng = np.random.default_rng([spec.seed if spec.seed is not None else seed, 0xD41F7])
    order = rng.permutation(n_units)
    n_dead = int(round(spec.dead_fraction * n_units))
    n_noisy = int(round(spec.noisy_fraction * n_units))
    dead = np.zeros(n_units, dtype=bool)
    dead[order[:n_dead]] = True
    noisy = np.zeros(n_units, dtype=bool)
    noisy[order[n_dead:n_dead + n_noisy]] = True
    gain = spec.gain_change * np.exp(rng.normal(0.0, spec.gain_spread, n_units))
    shift = rng.normal(0.0, spec.shift_size, n_units) if spec.shift_at is not None else np.zeros(n_units)
    n_knots = int(np.ceil(duration / KNOT_DT)) + 2
    minutes = np.clip(np.arange(n_knots) * KNOT_DT - spec.baseline_onset, 0.0, None) / 60.0
    if spec.baseline_kind == "linear":
        offset = minutes[:, None] * rng.normal(0.0, spec.baseline_drift, n_units)[None, :]
    else:
        steps = rng.normal(0.0, 1.0, (n_knots, n_units)) * np.sqrt(np.diff(minutes, prepend=0.0))[:, None]
        offset = spec.baseline_drift * np.cumsum(steps, axis=0)
    summary = {
        "dead_units": np.flatnonzero(dead).tolist(),
        "noisy_units": np.flatnonzero(noisy).tolist(),
        "gain_mean": float(gain.mean()),
        "shift_sd": float(shift.std()),
        "final_offset_sd_hz": float(offset[-1].std()),
    }
    return RealisedDrift(spec=spec, gain=gain, shift=shift, dead=dead, noisy=noisy,
                         offset_knots=offset, summary=summary)


def spec_dict(spec: DriftSpec | None) -> dict:
    """The spec as plain values (for provenance in NWB notes and session meta)."""
    return asdict(spec) if spec is not None else {}
