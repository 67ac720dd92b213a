"""Bad-bin checks and the policy that decides what the decoder sees instead.

A real rig sends malformed bins now and then; the runtime must flag them and carry on, never
crash or stall, and never feed the decoder's causal state something it cannot undo. Every
bin gets one message; the flags (decoder_runtime.messages.Flag) say what was wrong.

| problem                  | detected when                                   | flag       | policy `impute` (default)                         | policy `hold`        |
| ------------------------ | ----------------------------------------------- | ---------- | ------------------------------------------------- | -------------------- |
| wrong length             | counts are not a [C] vector                      | BAD_LENGTH | whole bin := training mean counts; decoded        | not decoded, held    |
| NaN / inf                | any count non-finite                             | NONFINITE  | those channels := training mean; decoded          | not decoded, held    |
| negative counts          | any count < 0                                    | NEGATIVE   | those channels := training mean; decoded          | not decoded, held    |
| timestamp going backward | t_src <= previous accepted bin's t_src (or NaN)  | BACKWARDS  | always dropped: not decoded, velocity held        | same                 |
| gap                      | t_src - previous > `gap_factor` (1.5) periods    | GAP        | decoded; engine resets state if `--on-gap reset`  | same                 |
| late (a burst)           | arrival lag behind t_src > `late_s`             | LATE       | decoded normally, so the state stays exact        | same                 |

"Training mean" is the artifact's `normalization.x_mean`: after the model's own z-scoring it
is exactly zero, the input the networks saw for dropped electrodes in training. "Held"
means the message repeats the last velocity sent, flagged HELD and DROPPED, and the model's
state does not advance. A backwards timestamp is always dropped because decoding an
out-of-order or duplicated bin would put it into the causal state in the wrong place.
Late bins are decoded (each gets its own message) because skipping them would desync the
state; the latency bound for a burst is kept by the engine's deadline/fallback.
"""
from __future__ import annotations

import math
from enum import Enum

import numpy as np
from numba import njit

from decoder_runtime.messages import Flag

_BAD_LENGTH, _NONFINITE, _NEGATIVE = int(Flag.BAD_LENGTH), int(Flag.NONFINITE), int(Flag.NEGATIVE)
_BACKWARDS, _GAP, _LATE = int(Flag.BACKWARDS), int(Flag.GAP), int(Flag.LATE)
_IMPUTED, _DROPPED = int(Flag.IMPUTED), int(Flag.DROPPED)


@njit(["int64(float32[::1], float32[::1])", "int64(float64[::1], float32[::1])"], cache=True, nogil=True)
def _copy_check(src, dst):  # pragma: no cover - numba
    """Copy a bin and report in one pass: bit 0 = some value non-finite, bit 1 = some negative."""
    bad = 0
    for i in range(src.shape[0]):
        v = src[i]
        dst[i] = v
        if not math.isfinite(v):
            bad |= 1
        elif v < 0:
            bad |= 2
    return bad


class BadBinPolicy(str, Enum):
    IMPUTE = "impute"
    HOLD = "hold"


class Validator:
    """Checks each bin and writes the bin to decode into a preallocated float32[C] buffer."""

    def __init__(self, n_channels: int, period: float, fill: np.ndarray, policy: BadBinPolicy | str = "impute",
                 late_s: float | None = None, gap_factor: float = 1.5) -> None:
        fill = np.asarray(fill, dtype=np.float32)
        if fill.shape != (n_channels,):
            raise ValueError(f"fill (training mean counts) must be [{n_channels}], got shape {fill.shape}")
        self.n_channels = n_channels
        self.policy = BadBinPolicy(policy)
        self.fill = fill
        self.late_s = period if late_s is None else float(late_s)
        self.period = period
        self.gap_s = gap_factor * period
        self.x = np.zeros(n_channels, dtype=np.float32)  # the bin to decode, valid unless DROPPED
        self._shape = (n_channels,)
        self._prev_t = math.nan

    def reset(self) -> None:
        """Forget the previous timestamp (a new session or a restarted source)."""
        self._prev_t = math.nan

    def check(self, counts: np.ndarray, t_src: float, lag_s: float) -> int:
        """Flags for this bin; unless DROPPED is among them, `self.x` holds what to decode."""
        flags = 0
        if self._prev_t == self._prev_t:  # there is a previous bin (not NaN)
            dt = t_src - self._prev_t
            if not dt > 0:  # backwards, repeated, or a NaN timestamp
                return _BACKWARDS | _DROPPED
            if dt > self.gap_s:
                flags = _GAP
        elif t_src != t_src:
            return _BACKWARDS | _DROPPED
        self._prev_t = t_src
        if lag_s > self.late_s:
            flags |= _LATE
        hold = self.policy is BadBinPolicy.HOLD
        if counts.shape != self._shape:
            if hold:
                return flags | _BAD_LENGTH | _DROPPED
            self.x[:] = self.fill
            return flags | _BAD_LENGTH | _IMPUTED
        x = self.x
        try:
            found = _copy_check(counts, x)  # one pass, no allocation: the common case
        except TypeError:  # another dtype or a strided view: convert first, then check in place
            np.copyto(x, counts, casting="unsafe")
            found = _copy_check(x, x)
        if not found:
            return flags
        bad = ~np.isfinite(x)
        if bad.any():
            flags |= _NONFINITE
        negative = (x < 0) & ~bad  # -inf is counted as non-finite only
        if negative.any():
            flags |= _NEGATIVE
            bad |= negative
        if hold:
            return flags | _DROPPED
        x[bad] = self.fill[bad]
        return flags | _IMPUTED
