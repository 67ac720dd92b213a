"""Adaptive per-channel normalisation: map today's count statistics onto training's.

The cheapest adaptation with a track record (per-channel exponential z-scoring, used
block-wise in intracortical speech and handwriting BCIs). Each channel keeps an
exponentially weighted mean and variance of its raw counts with a time constant in seconds;
a bin is mapped by x' = (x - mu_today) / sd_today * sd_train + mu_train, so the decoder's
own (training) z-scoring then sees zero mean and unit variance again. The stats start at
the training values, so the first bins pass through unchanged, and each bin is mapped with
the statistics of the bins *before* it (predictive), so a bin never normalises itself.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from decoder_runtime.adaptation.reference import TrainingReference


@njit(cache=True, nogil=True)
def _norm_step(x, out, mask, state, consts, alpha):  # pragma: no cover - numba
    """state rows: today's mean, variance; consts rows: training mean, s.d., s.d. floor.
    (Few, stacked arguments: each array argument costs ~0.1 us to pass into numba.)"""
    one_minus = 1.0 - alpha
    for c in range(x.shape[0]):
        if mask[c]:
            out[c] = consts[0, c]  # masked upstream: hold the training mean, freeze the stats
            continue
        d = x[c] - state[0, c]
        sd = math.sqrt(state[1, c])
        if sd < consts[2, c]:
            sd = consts[2, c]
        out[c] = d / sd * consts[1, c] + consts[0, c]
        state[0, c] += alpha * d
        state[1, c] = one_minus * (state[1, c] + alpha * d * d)


def alpha_for(tau_s: float, bin_width: float) -> float:
    """Per-bin weight of an exponential average whose memory decays by 1/e in tau_s seconds."""
    if not tau_s > 0:
        raise ValueError(f"time constant must be > 0 seconds, got {tau_s}")
    return 1.0 - math.exp(-bin_width / tau_s)


class RunningNorm:
    """Exponential per-channel mean/variance tracking with a time constant in seconds.

    `min_gain` bounds how far a channel may be scaled up: a channel whose variance fell
    to near zero (it is dying, but not yet masked) is not amplified into pure noise.
    """

    name = "norm"

    def __init__(self, ref: TrainingReference, tau_s: float = 60.0, min_gain: float = 0.1) -> None:
        if not 0 < min_gain <= 1:
            raise ValueError(f"min_gain must be in (0, 1], got {min_gain}")
        self.ref = ref
        self.tau_s = float(tau_s)
        self.alpha = alpha_for(tau_s, ref.bin_width)
        self._consts = np.stack([ref.x_mean, ref.x_std, ref.x_std * min_gain]).astype(np.float64)
        self._state = np.empty((2, ref.n_channels), dtype=np.float64)
        self.mu, self.var = self._state[0], self._state[1]  # views: today's mean and variance
        self._out = np.empty(ref.n_channels, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Warm start: today's statistics begin as training's (identity mapping)."""
        self.mu[:] = self._consts[0]
        self.var[:] = self._consts[1] ** 2

    def process(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Map one bin (float32[C], raw counts); returns a buffer reused on the next call."""
        _norm_step(x, self._out, mask, self._state, self._consts, self.alpha)
        return self._out

    def snapshot(self) -> dict[str, np.ndarray]:
        return {"mu": self.mu.copy(), "var": self.var.copy()}

    def restore(self, snap: dict[str, np.ndarray], freeze_s: float = 0.0) -> None:
        """Put back snapshotted statistics (the guard's rollback). `freeze_s` is part of the
        guard's protocol for stages that refit in blocks; tracking here is continuous."""
        self.mu[:] = snap["mu"]
        self.var[:] = snap["var"]
