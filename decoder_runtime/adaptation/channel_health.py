"""Online channel health: find dead, stuck and wildly noisy channels and mask them.

A masked channel is filled with its training mean. The networks are trained with
electrode dropout, so "this channel sits at its mean" is a state they have seen; a dead
channel read as a true zero, or a noisy one read at face value, is not. Detection runs on
the raw counts, bin by bin, in one numba kernel over preallocated per-channel state:

- dead: a run of all-zero bins longer than the training rate makes plausible. Under an
  independent-Poisson model a run of n empty bins at mean rate r per bin has probability
  exp(-r n); the channel is declared dead when that falls below `p_dead` (clipped to
  [min, max] seconds). `p_dead` is tiny on purpose: real silences are correlated in time
  (a tuned unit can be silent for seconds while the arm moves against its preferred
  direction). In the simulator's 10-minute default sessions the longest silence of a
  channel reached 1.1x (v3) to 1.5x (v1) its 1e-9 threshold; the default 1e-20 doubles
  the threshold (0.8 s for the busiest channel, 5.7 s median, capped at 30 s).
- stuck: the same non-zero count for `stuck_s` seconds in a row (a flat-lined amplifier or
  a stuck sorter; real spiking never repeats a non-zero count that long).
- noisy: the short-term (tau `noise_tau_s`) variance exceeds `noisy_ratio` times the
  training variance. Added noise spikes are Poisson like real ones, so variance against
  today's own mean cannot tell them apart; the size of the rise is what flags a channel
  (a moderate rise is left to the normaliser).

Unmasking has hysteresis, so a flickering channel does not toggle every bin: a dead channel
needs `recover_bins` non-empty bins without another long silence, a stuck one
`recover_bins` changes of value, a noisy one `recover_s` seconds below half the threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from decoder_runtime.adaptation.reference import TrainingReference
from decoder_runtime.adaptation.running_norm import alpha_for

OK, DEAD, STUCK, NOISY = 0, 1, 2, 3
STATUS_NAMES = {OK: "ok", DEAD: "dead", STUCK: "stuck", NOISY: "noisy"}


# Rows of the packed per-channel state (few arguments: each array passed into numba costs
# ~0.1 us, more than the arithmetic of a 150-channel bin).
I_STATUS, I_ZERO_RUN, I_SAME_RUN, I_COUNT, I_CALM_RUN = range(5)  # int64 state
F_LAST, F_MEAN, F_VAR = range(3)  # float64 state: last value, short-term mean, variance
P_MEAN, P_VAR, P_DEAD_BINS = range(3)  # float64 per-channel constants
S_STUCK_BINS, S_RECOVER_BINS, S_NOISY_RATIO, S_CALM_BINS, S_ALPHA = range(5)  # scalars


@njit(cache=True, nogil=True)
def _health_step(x, out, mask, ist, fst, pch, sc, ev):  # pragma: no cover - numba
    """Advance every channel's detectors by one bin; returns the number of events written.

    Event i is ev[0, i] = channel, ev[1, i] = kind: > 0 "masked as <status>", < 0
    "unmasked, was <-kind>".
    """
    stuck_bins, recover_bins = sc[S_STUCK_BINS], sc[S_RECOVER_BINS]
    noisy_ratio, calm_bins, a = sc[S_NOISY_RATIO], sc[S_CALM_BINS], sc[S_ALPHA]
    n_ev = 0
    for c in range(x.shape[0]):
        v = x[c]
        if v == 0.0:
            ist[I_ZERO_RUN, c] += 1
        else:
            ist[I_ZERO_RUN, c] = 0
        changed = v != fst[F_LAST, c]
        if v != 0.0 and not changed:
            ist[I_SAME_RUN, c] += 1
        else:
            ist[I_SAME_RUN, c] = 0
        fst[F_LAST, c] = v
        d = v - fst[F_MEAN, c]
        fst[F_MEAN, c] += a * d
        fst[F_VAR, c] = (1.0 - a) * (fst[F_VAR, c] + a * d * d)
        noisy_now = fst[F_VAR, c] > noisy_ratio * pch[P_VAR, c]
        calm_now = fst[F_VAR, c] < 0.5 * noisy_ratio * pch[P_VAR, c]

        s = ist[I_STATUS, c]
        new = s
        if s == 0:
            if ist[I_ZERO_RUN, c] >= pch[P_DEAD_BINS, c]:
                new = 1
            elif ist[I_SAME_RUN, c] >= stuck_bins:
                new = 2
            elif noisy_now:
                new = 3
            if new != 0:
                ist[I_COUNT, c] = 0
                ist[I_CALM_RUN, c] = 0
        elif s == 1:  # count non-empty bins; another long silence starts the count again
            if v != 0.0:
                ist[I_COUNT, c] += 1
            elif 2 * ist[I_ZERO_RUN, c] >= pch[P_DEAD_BINS, c]:
                ist[I_COUNT, c] = 0
            if ist[I_COUNT, c] >= recover_bins:
                new = 0
        elif s == 2:  # count changes of value; another long flat run starts again
            if changed:
                ist[I_COUNT, c] += 1
            elif ist[I_SAME_RUN, c] >= stuck_bins:
                ist[I_COUNT, c] = 0
            if ist[I_COUNT, c] >= recover_bins:
                new = 0
        else:  # noisy: calm for calm_bins in a row
            ist[I_CALM_RUN, c] = ist[I_CALM_RUN, c] + 1 if calm_now else 0
            if ist[I_CALM_RUN, c] >= calm_bins:
                new = 0
        if new != s:
            ist[I_STATUS, c] = new
            mask[c] = new != 0
            ev[0, n_ev] = c
            ev[1, n_ev] = new if new != 0 else -s
            n_ev += 1
        out[c] = pch[P_MEAN, c] if mask[c] else v
    return n_ev


@dataclass(frozen=True)
class HealthEvent:
    """One change of a channel's health: which channel, what it became, from what."""

    channel: int
    status: str  # "dead" | "stuck" | "noisy" | "ok"
    previous: str

    @property
    def masked(self) -> bool:
        return self.status != "ok"


class ChannelHealth:
    """Per-bin dead/stuck/noisy detection with masking to the training mean.

    `process` writes the shared `mask` (True = masked) that later stages honour, and
    returns the bin with masked channels replaced; `drain_events` hands the transitions of
    the last bin to whoever records them.
    """

    name = "health"

    def __init__(
        self,
        ref: TrainingReference,
        *,
        p_dead: float = 1e-20,
        min_dead_s: float = 0.5,
        max_dead_s: float = 30.0,
        stuck_s: float = 1.0,
        noisy_ratio: float = 6.0,
        noise_tau_s: float = 5.0,
        recover_bins: int = 5,
        recover_s: float = 2.0,
    ) -> None:
        if not 0 < p_dead < 1:
            raise ValueError(f"p_dead must be a probability in (0, 1), got {p_dead}")
        if not 0 < min_dead_s <= max_dead_s:
            raise ValueError(f"need 0 < min_dead_s <= max_dead_s, got {min_dead_s}, {max_dead_s}")
        if noisy_ratio <= 2:
            raise ValueError(f"noisy_ratio must be > 2 (unmasking uses half of it), got {noisy_ratio}")
        bw = ref.bin_width
        self.ref = ref
        rate = np.maximum(ref.x_mean, 1e-12)  # counts per bin in training
        dead = np.clip(np.ceil(-math.log(p_dead) / rate), math.ceil(min_dead_s / bw), math.ceil(max_dead_s / bw))
        self._pch = np.stack([ref.x_mean, ref.x_std**2, dead]).astype(np.float64)
        self.dead_bins = self._pch[P_DEAD_BINS].astype(np.int64)
        self.stuck_bins = max(1, math.ceil(stuck_s / bw))
        self.recover_bins = int(recover_bins)
        self.calm_bins = max(1, math.ceil(recover_s / bw))
        self._sc = np.array([self.stuck_bins, recover_bins, noisy_ratio, self.calm_bins, alpha_for(noise_tau_s, bw)],
                            dtype=np.float64)
        c = ref.n_channels
        self._ist = np.zeros((5, c), dtype=np.int64)
        self._fst = np.zeros((3, c), dtype=np.float64)
        self.status = self._ist[I_STATUS]  # view: OK / DEAD / STUCK / NOISY per channel
        self._out = np.empty(c, dtype=np.float32)
        self._ev = np.zeros((2, c), dtype=np.int64)
        self._n_ev = 0
        self.reset()

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Forget everything: all channels healthy, short-term stats at training values."""
        self._ist[:] = 0
        self._fst[F_LAST] = -1.0
        self._fst[F_MEAN] = self._pch[P_MEAN]
        self._fst[F_VAR] = self._pch[P_VAR]
        self._n_ev = 0
        if mask is not None:
            mask[:] = False

    def process(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self._n_ev = _health_step(x, self._out, mask, self._ist, self._fst, self._pch, self._sc, self._ev)
        return self._out

    @property
    def has_events(self) -> bool:
        return self._n_ev > 0

    def drain_events(self) -> list[HealthEvent]:
        """The channel transitions of the last processed bin (empty on almost every bin)."""
        evs = []
        for ch, kind in self._ev[:, : self._n_ev].T:
            if kind > 0:
                evs.append(HealthEvent(int(ch), STATUS_NAMES[int(kind)], "ok"))
            else:
                evs.append(HealthEvent(int(ch), "ok", STATUS_NAMES[int(-kind)]))
        self._n_ev = 0
        return evs

    def masked_channels(self) -> np.ndarray:
        return np.flatnonzero(self.status != OK)
