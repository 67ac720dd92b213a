"""The guard: adaptation may never make the decoded velocity implausible for long.

Adaptation without labels can go wrong silently (a mis-fit alignment, a normaliser chasing
a transient). The guard watches the one thing it can judge without labels, the decoder's
own output, against the training velocity scale in the artifact: an exponentially
weighted mean and variance over `window_s` seconds, checked every `check_s`:

- collapse: output variance below `lo` x the training velocity variance;
- explosion: output variance above `hi` x it;
- offset: output mean more than `max_offset` training s.d. from the training mean.

While the output stays plausible for `good_s`, the adaptive stages' parameters are
snapshotted as "last good". When it turns implausible, every stage is restored to the last
good snapshot (at first, the warm start: no adaptation), the learned stage is frozen for
`freeze_s`, and a rollback event is raised. `max_rollbacks` rollbacks within
`rollback_window_s` restore the warm start and disable the learned stages (channel-health
masking stays on) for the rest of the session.

What it cannot do: tell whether adaptation or the drift itself made the output implausible.
Either way it returns to the last parameters that gave plausible output, and in the end to
no adaptation. Its thresholds are deliberately wide: it catches runaway adaptation, not a
subtle loss of accuracy (in the drift benchmark it never fired).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from decoder_runtime.adaptation.reference import TrainingReference
from decoder_runtime.adaptation.running_norm import alpha_for


class Restorable(Protocol):
    name: str

    def snapshot(self) -> Any: ...

    def restore(self, snap: Any, freeze_s: float = 0.0) -> None: ...


@dataclass(frozen=True)
class GuardEvent:
    kind: str  # "rollback" | "disabled"
    reason: str  # which test failed, with the numbers
    restored_to_bin: int  # bin at which the restored parameters were snapshotted (0: warm start)


class OutputGuard:
    """Judges the decoded velocity per bin and rolls the adaptive stages back when needed."""

    name = "guard"

    def __init__(
        self,
        ref: TrainingReference,
        stages: list[Restorable],
        *,
        window_s: float = 20.0,
        check_s: float = 1.0,
        lo: float = 0.05,
        hi: float = 4.0,
        max_offset: float = 1.5,
        good_s: float = 30.0,
        freeze_s: float = 60.0,
        max_rollbacks: int = 3,
        rollback_window_s: float = 300.0,
    ) -> None:
        if not 0 <= lo < 1 < hi:
            raise ValueError(f"need 0 <= lo < 1 < hi, got lo={lo}, hi={hi}")
        bw = ref.bin_width
        self.stages = stages
        self.alpha = alpha_for(window_s, bw)
        self.check_bins = max(1, math.ceil(check_s / bw))
        self.good_bins = max(self.check_bins, math.ceil(good_s / bw))
        self.rollback_window_bins = math.ceil(rollback_window_s / bw)
        self.lo, self.hi, self.max_offset = lo, hi, max_offset
        self.freeze_s, self.max_rollbacks = freeze_s, max_rollbacks
        self._y_mean = [float(v) for v in ref.y_mean]
        self._y_var = [float(v) ** 2 for v in ref.y_std]
        self.reset()

    def reset(self) -> None:
        """Warm start: output stats at training values, last good = the stages as they are now."""
        self._m = list(self._y_mean)
        self._v = list(self._y_var)
        self._bin = 0
        self._good_run = 0
        self._rollbacks: list[int] = []
        self.disabled = False
        self._warm = (0, [s.snapshot() for s in self.stages])
        self._last_good = self._warm

    def observe(self, y: np.ndarray) -> GuardEvent | None:
        """Feed one decoded velocity [2]; returns an event on the bin a rollback happens."""
        a = self.alpha
        for j in range(len(self._m)):
            d = float(y[j]) - self._m[j]
            self._m[j] += a * d
            self._v[j] = (1.0 - a) * (self._v[j] + a * d * d)
        self._bin += 1
        if self.disabled or self._bin % self.check_bins:
            return None
        reason = self.implausible()
        if reason is None:
            self._good_run += self.check_bins
            if self._good_run >= self.good_bins:
                self._last_good = (self._bin, [s.snapshot() for s in self.stages])
                self._good_run = 0
            return None
        return self._rollback(reason)

    def implausible(self) -> str | None:
        """Which plausibility test the current output statistics fail, or None."""
        ratio = sum(v / t for v, t in zip(self._v, self._y_var)) / len(self._v)
        if not math.isfinite(ratio):
            return "non-finite output"
        if ratio < self.lo:
            return f"variance collapsed to {ratio:.3g} x training (< {self.lo})"
        if ratio > self.hi:
            return f"variance exploded to {ratio:.3g} x training (> {self.hi})"
        off = max(abs(m - t) / math.sqrt(v) for m, t, v in zip(self._m, self._y_mean, self._y_var))
        if off > self.max_offset:
            return f"mean offset {off:.3g} training s.d. (> {self.max_offset})"
        return None

    def _rollback(self, reason: str) -> GuardEvent:
        self._rollbacks = [b for b in self._rollbacks if self._bin - b < self.rollback_window_bins] + [self._bin]
        self.disabled = len(self._rollbacks) >= self.max_rollbacks
        at, snaps = self._warm if self.disabled else self._last_good
        for stage, snap in zip(self.stages, snaps):
            stage.restore(snap, self.freeze_s)
        self._m = list(self._y_mean)
        self._v = list(self._y_var)
        self._good_run = 0
        if self.disabled:
            n = len(self._rollbacks)
            return GuardEvent("disabled", f"{n} rollbacks within the rollback window; last: {reason}", at)
        return GuardEvent("rollback", reason, at)
