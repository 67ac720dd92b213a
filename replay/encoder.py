"""The simulator's neurons, one bin at a time, driven by a participant's intended velocity.

A closed loop cannot simulate a whole session up front: the next bin's activity depends on
what the participant saw of the cursor, which depends on what the decoder made of the last
bin. `StreamingEncoder` runs the same generative model as `replay.simulator` (the same
`Population` from the same population seed, the same tuning, latent parts, private noise,
refractory spiking kernel and drift) forward in time, producing one bin of counts per call,
causally: a bin is drawn from the intentions given so far and nothing later.

How intention maps onto each unit's lagged drive (the one real modelling decision here).
In the open-loop simulator unit c's rate at time t reads the hand velocity at t + lag_c
(50-150 ms later): activity leads movement. In closed loop there is no hand; there is the
participant's plan. We take the intention given at time t to be the velocity the participant
wants `plan_lead_s` later (default 150 ms, the population's longest lead), so the intention
issued at t plays the part of the hand velocity at t + plan_lead_s. Unit c at time t must
then read the planned velocity for t + lag_c, which is the intention issued at
t + lag_c - plan_lead_s: the intention delayed by (plan_lead_s - lag_c) >= 0. Every unit keeps
its own lead relative to the others, exactly as in the open-loop data the decoder was trained
on, and nothing reads the future. The price is real and physiological: a decoder trained to
output the movement at t reports the intention issued plan_lead_s earlier, so intention now is
cursor movement plan_lead_s later; the participant's forward model accounts for that.

The latent: its noise-driven parts (the ~1.2 Hz oscillation and the slow arousal process) run
on as in the simulator; its task-driven parts (preparatory state, rotational dynamics kicked
at movement onset) follow reaches announced with `add_reach` (the participant announces one
when it sees a new target: cue now, onset plan_lead_s later), through the simulator's own
`reach_latent`.

Check: driving the encoder with an open-loop session's recorded hand velocity, shifted by
plan_lead_s, gives counts that the session's decoder scores within 0.03 R² of the session
itself (benchmarks/closed_loop_check.py).
"""
from __future__ import annotations

import numpy as np

from replay.drift import DriftSpec, RealisedDrift, realise
from replay.kinematics import DT, SAMPLE_RATE, Reach, smooth_ar1
from replay.simulator import (
    LATENT_NAMES,
    NOISE_A,
    Population,
    _generate_spikes,
    damped_rotation,
    drift_args,
    kinematic_features,
    reach_latent,
    tuning_weights,
)

PLAN_LEAD_S = 0.150  # s: intention now = movement this much later (the simulator's longest lead)
DRIFT_HORIZON_S = 3600.0  # s: how far ahead a drift's random walk is drawn (it holds after that)
_OSC = (np.exp(-DT / 0.4), 2 * np.pi * 1.2 * DT)  # the free oscillation, as in simulate_latent
_SLOW = np.exp(-DT / 8.0)  # the slow arousal process, as in simulate_latent


class StreamingEncoder:
    """Counts of one bin per `step(intention)`, from the simulator's population, causally."""

    def __init__(self, population: Population, *, seed: int, bin_width: float = 0.025,
                 drift: DriftSpec | None = None, plan_lead_s: float = PLAN_LEAD_S) -> None:
        self.population = population
        self.bin_width = float(bin_width)
        self.samples = int(round(bin_width * SAMPLE_RATE))
        if self.samples < 1 or abs(self.samples * DT - bin_width) > 1e-9:
            raise ValueError(f"bin width must be a whole number of ms, got {bin_width}")
        self.lead = int(round(plan_lead_s * SAMPLE_RATE))
        if self.lead < int(population.lag.max()):
            raise ValueError(f"plan_lead_s {plan_lead_s} is shorter than the longest unit lead "
                             f"({population.lag.max()} ms): the encoder would need the future")
        n = population.n_units
        self.drift: RealisedDrift = realise(drift, n, DRIFT_HORIZON_S, seed)
        self._drift_args = drift_args(self.drift)
        self._rng_spikes = np.random.default_rng([seed, 4])
        self._rng_latent = np.random.default_rng([seed, 3])
        self._rng_reach = np.random.default_rng([seed, 5])
        self._w_kin, self._base = tuning_weights(population)
        # features of the intentions issued over the last `lead` samples plus this bin's
        self._feat = np.zeros((3, self.lead + self.samples))
        self._eps = np.zeros(n)
        self._need = self._rng_spikes.exponential(size=n)
        self._ready = np.zeros(n)
        self._osc = self._rng_latent.standard_normal((1, 2))
        self._slow = self._rng_latent.standard_normal((1, 1))
        self._reaches: list[tuple[int, np.ndarray]] = []  # (first sample, latent block[len, 6])
        self.t = 0  # first sample of the next bin (ms since the session started)

    @property
    def time_s(self) -> float:
        """Start time of the next bin, seconds."""
        return self.t * DT

    def add_reach(self, start: np.ndarray, end: np.ndarray, *, cue_s: float | None = None,
                  onset_s: float | None = None) -> None:
        """Announce a reach from `start` to `end` (mm): its preparatory state ramps up from the
        cue (default: now, when the target is seen) to the movement onset (default: now +
        plan lead, when the intention issued now becomes movement), where it kicks the
        rotational latent, exactly as the simulator does for an open-loop reach."""
        now = self.time_s
        r = Reach(cue_time=now if cue_s is None else cue_s, onset=now + self.lead * DT if onset_s is None else onset_s,
                  duration=0.0, start=np.asarray(start, float), end=np.asarray(end, float))
        if np.linalg.norm(r.end - r.start) > 0:
            amp = float(np.exp(self._rng_reach.normal(0, 0.25)))
            self._reaches.append(reach_latent(r, amp, np.iinfo(np.int64).max // 2))

    def _latent(self) -> np.ndarray:
        """float64[samples, L]: the shared latent over the next bin."""
        s, t = self.samples, self.t
        z = np.zeros((s, len(LATENT_NAMES)))
        keep = []
        for i0, block in self._reaches:
            a, b = max(t, i0), min(t + s, i0 + block.shape[0])
            if b > a:
                z[a - t:b - t, 0:6] += block[a - i0:b - i0]
            if i0 + block.shape[0] > t + s:
                keep.append((i0, block))
        self._reaches = keep
        osc = damped_rotation(np.vstack([self._osc, self._rng_latent.standard_normal((s, 2))]), *_OSC)[1:]
        slow = smooth_ar1(np.vstack([self._slow, self._rng_latent.standard_normal((s, 1))]), _SLOW)[1:]
        self._osc, self._slow = osc[-1:], slow[-1:]
        z[:, 6:8] = osc
        z[:, 8] = slow[:, 0]
        return z

    def step(self, intention: np.ndarray) -> np.ndarray:
        """float32[C] counts of the next bin; `intention` is [2] (held over the bin) or
        [samples, 2] (per ms), in mm/s: the velocity wanted `plan_lead_s` from now."""
        v = np.asarray(intention, dtype=np.float64)
        v = np.broadcast_to(v, (self.samples, 2)) if v.shape == (2,) else v
        if v.shape != (self.samples, 2) or not np.all(np.isfinite(v)):
            raise ValueError(f"intention must be finite, shape (2,) or ({self.samples}, 2), got {v.shape}")
        s = self.samples
        self._feat[:, :-s] = self._feat[:, s:]
        self._feat[:, -s:] = kinematic_features(v).T
        # plain matmuls: at one bin's size they beat simulator._project's per-row loop
        drive = self.population.latent_loading @ self._latent().T + self._base[:, None]
        kin_drive = self._w_kin @ self._feat
        # unit c at sample t + i reads kin_drive[c, i + lag_c]: the intention issued lead - lag_c ago
        units, _ = _generate_spikes(self._rng_spikes, self.t, drive, kin_drive, self.population.lag,
                                    self._eps, self._need, self._ready, self.population.noise_sd, NOISE_A,
                                    *self._drift_args, DT)
        self.t += s
        return np.bincount(units, minlength=self.population.n_units).astype(np.float32)
