"""The adapter chain: health -> normalisation -> latent alignment, watched by the guard.

Order matters. Health runs first, on raw counts, because "dead", "stuck" and "noisy" are
judgements about the recording, not about normalised numbers; it writes the shared mask.
Normalisation then maps live channels onto training statistics (masked ones sit at the
training mean with frozen stats). The latent stage sees the normalised bin, which is what
its reference was fitted on, and imputes masked channels. The guard sees only the decoder's
output (fed back through `observe`) and can roll the two learned stages back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from decoder_runtime.adaptation.base import Adapter
from decoder_runtime.adaptation.channel_health import ChannelHealth
from decoder_runtime.adaptation.guard import OutputGuard
from decoder_runtime.adaptation.latent_align import LatentAlign
from decoder_runtime.adaptation.reference import TrainingReference
from decoder_runtime.adaptation.running_norm import RunningNorm
from decoder_runtime.messages import Flag

_ADAPT, _IMPUTED = int(Flag.ADAPT), int(Flag.IMPUTED)  # plain ints: IntFlag arithmetic costs ~1 us


@dataclass(frozen=True)
class AdaptationEvent:
    """One thing adaptation did, for the message flags and the session record."""

    bin: int  # index of the bin (0-based, counted since reset) on which it happened
    kind: str  # "masked" | "unmasked" | "latent_fit" | "rollback" | "disabled"
    channel: int  # the channel concerned, -1 when not about one channel
    detail: str  # e.g. "dead", "ok (was noisy)", a guard reason

    def __str__(self) -> str:
        who = f" channel {self.channel}" if self.channel >= 0 else ""
        return f"adapt bin {self.bin}: {self.kind}{who}: {self.detail}"


class AdaptationChain(Adapter):
    """Runs the configured stages on each bin, sets the bin's flags, logs what happened.

    Per bin: `process(counts) -> counts'` before the decoder step, `observe(velocity)`
    after it (feeds the guard). `flags` gets Flag.ADAPT while a learned stage is live and
    Flag.IMPUTED while any channel is masked. Each event goes to `events` (text, drained by
    the engine into its log and record) and to `history` (structured, kept since reset).
    """

    def __init__(
        self,
        ref: TrainingReference,
        *,
        health: ChannelHealth | None = None,
        norm: RunningNorm | None = None,
        latent: LatentAlign | None = None,
        guard: OutputGuard | None = None,
    ) -> None:
        self.ref = ref
        self.health, self.norm, self.latent, self.guard = health, norm, latent, guard
        self.learned = [s for s in (norm, latent) if s is not None]
        self.mask = np.zeros(ref.n_channels, dtype=bool)
        self._in = np.empty(ref.n_channels, dtype=np.float32)
        self.history: list[AdaptationEvent] = []
        super().__init__()
        self.name = "+".join(s.name for s in (health, norm, latent) if s is not None) or "none"
        self.warm_up()

    def warm_up(self) -> None:
        """Run every per-bin kernel once (numba compiles or loads it on first call), then
        reset: no bin of a session ever pays for that."""
        self.reset()
        self.process(self.ref.x_mean.astype(np.float32))
        self.observe(self.ref.y_mean.astype(np.float32))
        self.reset()

    @property
    def changed(self) -> bool:
        return bool(self.learned) and not (self.guard is not None and self.guard.disabled)

    def reset(self) -> None:
        super().reset()
        self.mask[:] = False
        for stage in (self.norm, self.latent, self.guard):
            if stage is not None:
                stage.reset()
        if self.health is not None:
            self.health.reset(self.mask)
        self.n_masked = 0
        self._bin = -1
        self._n_swaps = 0
        self.history = []

    def process(self, counts: np.ndarray) -> np.ndarray:
        """One raw bin float32[C] -> the bin to decode (a buffer reused on the next call)."""
        self._bin += 1
        x = counts
        if x.dtype != np.float32:
            self._in[:] = x
            x = self._in
        if self.health is not None:
            x = self.health.process(x, self.mask)
            if self.health.has_events:
                self._health_events()
        live = self.changed
        if live:
            for stage in self.learned:
                x = stage.process(x, self.mask)
            if self.latent is not None and self.latent.n_swaps != self._n_swaps:
                self._n_swaps = self.latent.n_swaps
                self._emit("latent_fit", -1, self.latent.params.describe())
        self.flags = (_ADAPT if live else 0) | (_IMPUTED if self.n_masked else 0)
        return x

    def observe(self, velocity: np.ndarray) -> None:
        """The decoder's output for the bin just processed (feeds the guard)."""
        if self.guard is None:
            return
        ev = self.guard.observe(velocity)
        if ev is not None:
            self._emit(ev.kind, -1, f"{ev.reason}; restored parameters from bin {ev.restored_to_bin}")

    def _emit(self, kind: str, channel: int, detail: str) -> None:
        ev = AdaptationEvent(self._bin, kind, channel, detail)
        self.history.append(ev)
        self.events.append(str(ev))

    def _health_events(self) -> None:
        for ev in self.health.drain_events():
            if ev.masked:
                self._emit("masked", ev.channel, ev.status)
            else:
                self._emit("unmasked", ev.channel, f"ok (was {ev.previous})")
        self.n_masked = int(self.mask.sum())
