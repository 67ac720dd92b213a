"""The closed loop's world, one bin at a time: cursor, task, participant and neurons.

`ClosedLoopWorld.next_bin(velocity)` is everything that happens between two bins in a rig:
the velocity the decoder returned for the previous bin moves the cursor (times the gain,
clipped to the workspace; None, a bin the runtime did not answer in time, leaves the cursor
where it was), the task sees the cursor, the participant sees the cursor and target as they
were `visual_delay_s` ago and forms an intention, and the encoder turns that intention into
the next bin of spike counts. The runtime sits between two calls; who calls (a lock-step
source in process, or a live loop over LSL and ZeroMQ) does not matter to the world.

Everything is logged per bin (`log`) for the metrics, the NWB record and the plots.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from replay.cursor_task import CursorTask, TaskSettings
from replay.drift import DriftSpec
from replay.encoder import PLAN_LEAD_S, StreamingEncoder
from replay.participant import Participant, ParticipantSettings
from replay.simulator import make_population
from replay.task_metrics import summarize_trials

LOG_FIELDS = ("t", "cursor", "target", "intention", "counts", "decoded", "answered", "trial")


@dataclass(frozen=True)
class WorldSettings:
    """What defines one closed-loop session besides the decoder."""

    task: TaskSettings = TaskSettings()
    participant: ParticipantSettings = ParticipantSettings()
    seed: int = 0
    population_seed: int = 0
    n_units: int = 142
    bin_width: float = 0.025
    drift: DriftSpec | None = None
    plan_lead_s: float = PLAN_LEAD_S
    assist: float = 0.0  # share of the cursor's velocity the computer gives (see ClosedLoopWorld)

    def __post_init__(self) -> None:
        if not 0.0 <= self.assist <= 1.0:
            raise ValueError(f"assist must be in [0, 1], got {self.assist}")


class ClosedLoopWorld:
    """Cursor + task + participant + encoder; `next_bin` advances them by one bin.

    With `assist` a > 0 the cursor moves with (1 - a) x the decoded velocity + a x the ideal
    one (the intention the bin's spikes carry, `ideal_velocity`): the computer-assisted
    calibration block labs run when a decoder cannot yet control (a = 1: the participant
    watches the cursor go where they mean, a rig's open-loop observation block). The log keeps
    the decoded velocity, unassisted.
    """

    def __init__(self, settings: WorldSettings) -> None:
        self.settings = settings
        bw = settings.bin_width
        self.encoder = StreamingEncoder(make_population(settings.n_units, settings.population_seed),
                                        seed=settings.seed, bin_width=bw, drift=settings.drift,
                                        plan_lead_s=settings.plan_lead_s)
        self._lead_bins = self.encoder.lead // self.encoder.samples  # bins from intention to its spikes
        self.participant = Participant(settings.participant, bin_width=bw, seed=settings.seed)
        self.task = CursorTask(settings.task, seed=settings.seed)
        self.cursor = np.zeros(2)
        self.k = 0  # bins made so far
        self.log: dict[str, list] = {f: [] for f in LOG_FIELDS}

    @property
    def done(self) -> bool:
        return self.task.done

    @property
    def time_s(self) -> float:
        """Start time of the next bin."""
        return self.k * self.settings.bin_width

    def next_bin(self, velocity: np.ndarray | None) -> np.ndarray | None:
        """Apply the previous bin's decoded velocity and make the next bin's counts (None: done)."""
        s = self.settings
        if self.k > 0:
            answered = velocity is not None and bool(np.all(np.isfinite(velocity)))
            v = np.asarray(velocity, dtype=np.float64) if answered else np.zeros(2)
            moved = (1.0 - s.assist) * v + s.assist * self.ideal_velocity() if s.assist else v
            w = s.task.workspace
            self.cursor = np.clip(self.cursor + s.task.cursor_gain * moved * s.bin_width, -w, w)
            self.log["decoded"].append(v if answered else np.full(2, np.nan))
            self.log["answered"].append(answered)
        t = self.time_s
        self.task.update(t, self.cursor)
        if self.task.done:
            return None
        target = self.task.target
        u = self.participant.intend(self.cursor, target)
        if self.participant.new_target:
            self.encoder.add_reach(self.participant.estimate, self.participant.target_seen)
        counts = self.encoder.step(u)
        for f, value in zip(("t", "cursor", "target", "intention", "counts", "trial"),
                            (t, self.cursor.copy(), np.full(2, np.nan) if target is None else target.copy(), u,
                             counts, len(self.task.trials) - 1)):
            self.log[f].append(value)
        self.k += 1
        return counts

    def ideal_velocity(self) -> np.ndarray:
        """The perfect decoder's velocity for the last bin made: the intention issued the
        plan lead before it (what that bin's spikes carry)."""
        issued = self.log["intention"]
        return issued[-1 - self._lead_bins] if len(issued) > self._lead_bins else np.zeros(2)

    def state_message(self) -> dict:
        """The task's state now (the `task` topic's message)."""
        return self.task.state_message(self.time_s, self.k, self.cursor)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-bin log as arrays, one row per bin made (decoded: NaN where not answered)."""
        n = len(self.log["t"])
        out = {f: np.asarray(self.log[f]) for f in ("t", "cursor", "target", "intention", "counts", "trial")}
        dec = np.full((n, 2), np.nan)
        m = min(n, len(self.log["decoded"]))
        if m:
            dec[:m] = np.asarray(self.log["decoded"][:m])
        out["decoded"] = dec
        out["answered"] = np.isfinite(dec).all(axis=1)
        return out

    def metrics(self) -> dict:
        """The task metrics over the finished trials."""
        return summarize_trials(self.task.trials, self.settings.task)
