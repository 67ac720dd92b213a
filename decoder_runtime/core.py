"""What happens to one bin's counts: validate -> adapt -> step -> observe, in one place.

`BinCore.decode` is the whole per-bin decision, run by the engine for every bin of a live
session and by `decode_offline` for every offline number the project publishes (`evaluate`,
training's held-out R², the drift table, the closed-loop fast mode), so an accuracy figure
is always measured through the code that runs in a session. The engine wraps it with what
only a live session has: a source's clock, the deadline, publishing and recording.

Per bin, top to bottom:
1. validate: flags, and the bin to decode in `validator.x` (unless DROPPED, then the last
   velocity is held and the state does not move);
2. adapt: `adapter.process` (test-time adaptation), its flags; after a GAP with
   `on_gap reset`, the model and fallback restart from their initial state, since a state
   that skipped real time describes a moment that has passed;
3. step, bounded by `until_ns`: the stepper (inline, guarded, or on a worker); if the model
   misses, the fallback decoder (the artifact's Wiener filter, which sees every decoded bin)
   answers, else the last velocity is held -- when a guarded inline step overruns, that answer
   is `answer_late`'s, on the guard's thread, while the step runs on;
4. observe: the adapter sees the velocity about to be sent (its guard can roll it back).
The stage stamps go into the row the caller passes, so the engine's per-bin log and the
record see exactly when each stage ended.
"""
from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from decoder_runtime.adaptation.base import Adapter
from decoder_runtime.messages import Flag
from decoder_runtime.stepping import ANSWERED, GuardedStepper, InlineStepper
from decoder_runtime.timing import ADAPTED, STAGES, STEP_BEGIN, STEP_END, STEPPED, VALIDATED
from decoder_runtime.validate import Validator

if TYPE_CHECKING:
    from decoder_runtime.fallback import WienerFallback

_GAP, _DROPPED, _HELD, _RESET = int(Flag.GAP), int(Flag.DROPPED), int(Flag.HELD), int(Flag.RESET)
_DEADLINE, _FALLBACK = int(Flag.DEADLINE), int(Flag.FALLBACK)


class GapPolicy(str, Enum):
    RESET = "reset"
    KEEP = "keep"


class BinCore:
    """validate -> adapt -> step -> observe for one bin; the result is in `vx`, `vy`."""

    def __init__(self, validator: Validator, stepper: InlineStepper | GuardedStepper, *,
                 adapter: Adapter | None = None, fallback: WienerFallback | None = None,
                 on_gap: GapPolicy | str = GapPolicy.RESET) -> None:
        self.validator = validator
        self.stepper = stepper
        self.adapter = adapter or Adapter()
        self.fallback = fallback
        self.reset_on_gap = GapPolicy(on_gap) is GapPolicy.RESET
        self.vx = self.vy = 0.0
        self._flags = 0  # the bin's flags up to its step (answer_late's)

    def start(self) -> None:
        """Start of a session: every stage forgets earlier bins; the stepper warms up."""
        self.adapter.reset()
        self.validator.reset()
        if self.fallback is not None:
            self.fallback.reset()
        self.stepper.start()
        self.vx = self.vy = 0.0

    def finish(self, timeout_s: float = 5.0) -> None:
        self.stepper.finish(timeout_s)

    def decode(self, n: int, counts: np.ndarray, t_src: float, lag_s: float, flags: int, until_ns: int,
               stamps: np.ndarray) -> int | None:
        """Decode bin n; returns its flags, leaves its velocity in (vx, vy), stamps stages into `stamps`.
        None: the guard answered the bin at its deadline (`answer_late`), the model's step ran on."""
        mono = time.monotonic_ns
        validator, adapter, stepper, fallback = self.validator, self.adapter, self.stepper, self.fallback
        # 1. validate
        flags |= validator.check(counts, t_src, lag_s, flags)  # a source's own GAP moves the timeline
        stamps[VALIDATED] = t = mono()
        if flags & _DROPPED:  # not decoded: hold the last velocity, the state does not move
            stamps[ADAPTED] = stamps[STEPPED] = t
            stamps[STEP_BEGIN] = stamps[STEP_END] = 0
            return flags | _HELD
        # 2. adapt
        x = adapter.process(validator.x)
        flags |= adapter.flags
        stamps[ADAPTED] = mono()
        if flags & _GAP and self.reset_on_gap:
            stepper.reset()
            if fallback is not None:
                fallback.reset()
            flags |= _RESET
        # 3. step, bounded by until_ns
        if fallback is not None:
            fallback.push(x)
        self._flags = flags
        y = stepper.step(n, x, until_ns)
        if y is ANSWERED:
            return None
        return self._conclude(y, flags | stepper.flags, stamps)

    def answer_late(self, stamps: np.ndarray) -> int:
        """The bin whose guarded inline step overran its deadline, answered without the model (on the
        guard's thread, the step still running): the rest of `decode` with no velocity from it."""
        return self._conclude(None, self._flags, stamps)

    def _conclude(self, y: np.ndarray | None, flags: int, stamps: np.ndarray) -> int:
        """The end of `decode`: the model's velocity, or on a miss the fallback's; then observe."""
        if y is not None:
            stamps[STEP_BEGIN], stamps[STEP_END] = self.stepper.begin, self.stepper.end
        else:  # the model missed the deadline: answer on time without it
            stamps[STEP_BEGIN] = stamps[STEP_END] = 0
            flags |= _DEADLINE
            if self.fallback is not None:
                y = self.fallback.predict()
                flags |= _FALLBACK
        # 4. observe
        if y is not None:
            self.vx, self.vy = y.tolist()
            self.adapter.observe(y)
        else:
            flags |= _HELD
        stamps[STEPPED] = time.monotonic_ns()
        return flags


def decode_offline(core: BinCore, counts: np.ndarray,
                   t: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(velocity float32[T, 2] sent, flags int32[T], stage stamps int64[T, 8]) of counts[T, C]
    stamped t[T], bin by bin.

    The same `BinCore.decode` a session runs, without a source clock (no bin is late) and
    without a deadline (an inline stepper never misses one). Without `t`, bins are taken as
    consecutive (one period apart).
    """
    n = len(counts)
    if t is None:
        t = (np.arange(n) + 1) * core.validator.period
    vel = np.empty((n, 2), dtype=np.float32)
    flags = np.empty(n, dtype=np.int32)
    core.stepper.model_vel = np.full((n, 2), np.nan, dtype=np.float32)
    stamps = np.zeros((n, len(STAGES)), dtype=np.int64)
    core.start()
    try:
        for k in range(n):
            flags[k] = core.decode(k, counts[k], float(t[k]), 0.0, 0, 0, stamps[k])
            vel[k] = core.vx, core.vy
    finally:
        core.finish()
    return vel, flags, stamps
