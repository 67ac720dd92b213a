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
| jump ahead (unconfirmed) | t_src - previous > `gap_factor` (1.5) periods    | JUMP       | decoded on the running state; not the timeline yet | same                |
| gap                      | the bin after a jump (ahead or backwards)        | GAP        | decoded; engine resets state if `--on-gap reset`  | same                 |
|                          | continues from it, or the source reports one     |            |                                                   |                      |
| late (a burst)           | arrival lag behind t_src > `late_s`             | LATE       | decoded normally, so the state stays exact        | same                 |

"Training mean" is the artifact's `normalization.x_mean`: after the model's own z-scoring it
is exactly zero, the input the networks saw for dropped electrodes in training. "Held"
means the message repeats the last velocity sent, flagged HELD and DROPPED, and the model's
state does not advance. A backwards timestamp is always dropped because decoding an
out-of-order or duplicated bin would put it into the causal state in the wrong place.
Late bins are decoded (each gets its own message) because skipping them would desync the
state; the latency bound for a burst is kept by the engine's deadline/fallback.

Why a jump is not at once a gap: a single bin stamped far ahead (a clock glitch, a corrupted
stamp: +3 s, +1000 s) would otherwise become the timeline, and every later, correctly stamped
bin would be "backwards" and dropped until the clock caught up, freezing the output. So a
forward jump is decoded but held apart (JUMP) and the next bin decides, with no waiting: if it
continues from the jumped stamp (within `gap_factor` periods) the jump was real and sustained,
that bin is a GAP and the timeline moves on; if it continues the old timeline, the jump was one
bad stamp and cost that bin nothing but its flag. A backwards stamp is judged the same way
(dropped; a GAP if the next bin continues from it, e.g. a source clock that was set back). A source that knows a gap happened (an LSL
stream that dropped and came back, or was re-resolved) flags GAP itself, and the timeline
moves at once.
"""
from __future__ import annotations

import math
from enum import Enum

import numpy as np
from numba import njit

from decoder_runtime.messages import Flag

_BAD_LENGTH, _NONFINITE, _NEGATIVE = int(Flag.BAD_LENGTH), int(Flag.NONFINITE), int(Flag.NEGATIVE)
_BACKWARDS, _GAP, _LATE = int(Flag.BACKWARDS), int(Flag.GAP), int(Flag.LATE)
_IMPUTED, _DROPPED, _JUMP = int(Flag.IMPUTED), int(Flag.DROPPED), int(Flag.JUMP)


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
        self._hold = self.policy is BadBinPolicy.HOLD
        self.fill = fill
        self.late_s = period if late_s is None else float(late_s)
        self.period = float(period)
        self.gap_s = gap_factor * period
        self.x = np.zeros(n_channels, dtype=np.float32)  # the bin to decode, valid unless DROPPED
        self._shape = (n_channels,)
        self._prev_t = math.nan
        self._jump_t = math.nan  # the previous bin's stamp if it was out of line (NaN: it was not)

    def reset(self) -> None:
        """Forget the previous timestamp (a new session or a restarted source)."""
        self._prev_t = self._jump_t = math.nan

    def _timeline(self, t_src: float, source_flags: int) -> int:
        """GAP, JUMP, BACKWARDS|DROPPED or 0 for this stamp, and move the timeline (module doc)."""
        candidate, self._jump_t = self._jump_t, math.nan
        if not -math.inf < t_src < math.inf:  # NaN or inf: never a timeline, but it took a slot
            self._jump_t = math.inf
            return _BACKWARDS | _DROPPED
        if source_flags & _GAP or self._prev_t != self._prev_t:  # the source saw a gap, or first bin
            self._prev_t = t_src
            return 0
        dt = t_src - self._prev_t
        # after an out-of-line bin, the timeline's next stamp is one period further on
        if 0 < dt <= self.gap_s + (self.period if candidate == candidate else 0.0):  # the timeline goes on
            self._prev_t = t_src
            return 0
        if 0 < t_src - candidate <= self.gap_s:  # continues from the previous bin's jump: sustained
            self._prev_t = t_src
            return _GAP
        self._jump_t = t_src  # out of line: the next bin decides whether the timeline moved
        return _JUMP if dt > 0 else _BACKWARDS | _DROPPED

    def check(self, counts: np.ndarray, t_src: float, lag_s: float, source_flags: int = 0) -> int:
        """Flags for this bin; unless DROPPED is among them, `self.x` holds what to decode.

        `source_flags` are the flags the source set on the bin: a GAP there moves the timeline
        to this bin at once."""
        flags = self._timeline(t_src, source_flags)
        if flags & _DROPPED:
            return flags
        if lag_s > self.late_s:
            flags |= _LATE
        hold = self._hold
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
