"""A simulated motor-cortex session written as an NWB file in the NLB MC_Maze layout.

Why a simulator: users and tests need data without a download, and the adaptation work
needs the same array recorded "on another day" with known drift. The default session goes
through the file and the reader exactly like real data does.

What is simulated, per unit c, on a 1 ms grid (log-linear / exponential rate model):

    log rate_c(t) = log r0_c                                     baseline, log-normal
                  + m_c * <u(pd_c), v(t + lag_c)> / V            cosine velocity tuning
                  + k_c * |v(t + lag_c)| / V                      speed tuning
                  + w_c . z(t)                                    shared latent dynamics
                  + e_c(t)                                        private slow noise
    spikes_c ~ inhomogeneous Poisson(rate_c) with a 2 ms absolute refractory period,
               spike times drawn in continuous time

- lag_c in 50..150 ms: activity leads movement;
- z(t): preparatory activity (target direction x a ramp from target onset to movement onset),
  condition-dependent rotational dynamics kicked at each movement onset (two planes at
  ~1.5 and ~2.5 Hz, phase set by the reach direction), a free noise-driven oscillation and a
  slow "arousal" process. Only part of z relates to velocity; the rest is shared variability
  a decoder must see through;
- e_c(t): per-unit AR(1) noise in log rate (tau 60 ms), which makes spike counts
  over-dispersed (Fano factor > 1), as cortical counts are;
- a fraction of units is untuned (baseline + latent only).
`population_seed` fixes everything about the neurons; `seed` fixes behaviour, latent
trajectories and spikes. Drift (see drift.py) multiplies or offsets the rates.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from replay.drift import DriftSpec, RealisedDrift, realise, spec_dict
from replay.kinematics import DT, SAMPLE_RATE, Kinematics, Reach, smooth_ar1, simulate_kinematics

SIMULATOR_VERSION = 3  # bump when the model changes, so cached default sessions re-simulate
V_SCALE = 250.0  # mm/s: velocity normalisation inside the tuning terms
NOISE_STEP = 5  # samples (ms) between updates of the private noise
MAX_RATE = 300.0  # Hz: a soft ceiling, never reached by a healthy unit
REFRACTORY = 0.002  # s: absolute refractory period after each spike
TASK_WORDS = {"maze": "centre-out reaching (maze)", "rtt": "random-target tracking"}
SPIKE_TIME_RESOLUTION = 1e-6  # s: spike times are continuous, stored as float64 (far finer than this)
LATENT_NAMES = ("prep_x", "prep_y", "rot1_a", "rot1_b", "rot2_a", "rot2_b", "osc_a", "osc_b", "slow")


@dataclass
class Population:
    """The neurons: fixed by population_seed alone, so 'another day' re-uses them."""

    baseline_rate: np.ndarray  # float64[C] Hz
    preferred_direction: np.ndarray  # float64[C] radians
    velocity_gain: np.ndarray  # float64[C] m_c (0 for untuned units)
    speed_gain: np.ndarray  # float64[C] k_c
    lag: np.ndarray  # int64[C] ms of lead of activity over movement
    latent_loading: np.ndarray  # float64[C, L]
    noise_sd: np.ndarray  # float64[C] s.d. of private log-rate noise
    tuned: np.ndarray  # bool[C]

    @property
    def n_units(self) -> int:
        return self.baseline_rate.size


@dataclass
class SimulationTruth:
    """Everything the file does not say: ground truth for tests and adaptation studies."""

    task: str
    seed: int
    population_seed: int
    duration: float
    dt: float
    t: np.ndarray  # float64[N] fine time grid (sample k covers [k*dt, (k+1)*dt))
    velocity: np.ndarray  # float64[N, 2] mm/s, exactly what the file's velocity series holds
    position: np.ndarray  # float64[N, 2] mm
    latent: np.ndarray  # float32[N, L] shared latent z(t), names in latent_names
    latent_names: tuple[str, ...]
    population: Population
    drift: RealisedDrift
    trials: dict[str, np.ndarray]
    n_spikes: np.ndarray  # int64[C] spikes written per unit
    meta: dict = field(default_factory=dict)  # the settings, also written to the file's notes


# Population statistics. Tuned (see /work/notes/simulator_readme.md) so a linear decoder
# with 250 ms of history lands where it does on real MC_Maze, and a single bin far below.
TUNED_FRACTION = 0.8
VELOCITY_GAIN = (0.3, 0.15)  # mean, s.d. of m_c (|.|) for tuned units
SPEED_GAIN = (0.2, 0.25)  # mean, s.d. of k_c for tuned units
LATENT_SCALE = (0.35, 0.35, 0.3, 0.3, 0.25, 0.25, 0.2, 0.2, 0.2)  # s.d. of loadings per latent
NOISE_SD = (0.25, 0.5)  # range of private log-rate noise s.d.


def make_population(n_units: int, population_seed: int) -> Population:
    """Draw the neurons: log-normal rates, uniform preferred directions, 50-150 ms leads."""
    if n_units < 1:
        raise ValueError(f"n_units must be >= 1, got {n_units}")
    rng = np.random.default_rng([population_seed, 1])
    rate = np.clip(np.exp(rng.normal(np.log(7.0), 0.85, n_units)), 0.8, 60.0)
    tuned = rng.random(n_units) < TUNED_FRACTION
    m = np.where(tuned, np.abs(rng.normal(*VELOCITY_GAIN, n_units)), 0.0)
    k = np.where(tuned, rng.normal(*SPEED_GAIN, n_units), rng.normal(0.0, 0.05, n_units))
    loading = rng.normal(0.0, 1.0, (n_units, len(LATENT_NAMES))) * np.asarray(LATENT_SCALE)
    return Population(
        baseline_rate=rate,
        preferred_direction=rng.uniform(-np.pi, np.pi, n_units),
        velocity_gain=m,
        speed_gain=k,
        lag=rng.integers(50, 151, n_units).astype(np.int64),
        latent_loading=loading,
        noise_sd=rng.uniform(*NOISE_SD, n_units),
        tuned=tuned,
    )


def simulate_latent(kin: Kinematics, rng: np.random.Generator) -> np.ndarray:
    """float32[N, L]: the shared latent z(t) (see module docstring), each part of order 1."""
    n = kin.t.size
    z = np.zeros((n, len(LATENT_NAMES)))
    for r in kin.reaches:
        i0, block = reach_latent(r, float(np.exp(rng.normal(0, 0.25))), n)
        z[i0:i0 + block.shape[0], 0:6] += block
    z[:, 6:8] = damped_rotation(rng.standard_normal((n, 2)), np.exp(-DT / 0.4), 2 * np.pi * 1.2 * DT)
    z[:, 8] = smooth_ar1(rng.standard_normal((n, 1)), np.exp(-DT / 8.0))[:, 0]
    return z.astype(np.float32)


def reach_latent(r: Reach, amp_factor: float, n: int) -> tuple[int, np.ndarray]:
    """(first sample, float64[len, 6]): one reach's preparatory and rotational latent parts.

    Preparatory state ramps up after the cue, holds to onset and decays after it;
    rotational dynamics are kicked at onset with their phase set by the reach direction
    (Churchland et al. 2012) and amplitude distance / 100 mm x `amp_factor` (the trial-to-
    trial spread). Shared by the whole-session simulator and the streaming encoder. The
    block is cut at sample `n`.
    """
    u = np.array([np.cos(r.direction), np.sin(r.direction)])
    i0, i1 = int(r.cue_time * SAMPLE_RATE), min(int(r.onset * SAMPLE_RATE), n)
    i1 = max(i1, i0)
    i2 = min(i1 + int(0.6 * SAMPLE_RATE), n)
    i3 = min(i1 + int(1.0 * SAMPLE_RATE), n)
    z = np.zeros((max(i2, i3) - i0, 6))
    if i1 > i0:
        ramp = 1.0 - np.exp(-(np.arange(i1 - i0) * DT) / 0.12)
        z[:i1 - i0, 0:2] += ramp[:, None] * u
        level = ramp[-1]
    else:
        level = 0.0
    tau = np.arange(i2 - i1) * DT
    z[i1 - i0:i2 - i0, 0:2] += (level * np.exp(-tau / 0.15))[:, None] * u
    amp = float(np.linalg.norm(r.end - r.start)) / 100.0 * amp_factor
    tau = np.arange(i3 - i1) * DT
    env = amp * (tau / 0.18) * np.exp(1.0 - tau / 0.18)
    for j, (f, off) in enumerate(((1.5, 0.0), (2.5, 1.3))):
        ph = 2 * np.pi * f * tau + r.direction + off
        z[i1 - i0:i3 - i0, 2 + 2 * j] += env * np.cos(ph)
        z[i1 - i0:i3 - i0, 3 + 2 * j] += env * np.sin(ph)
    return i0, z


@numba.njit(cache=True)
def damped_rotation(x: np.ndarray, rho: float, omega: float) -> np.ndarray:
    """A 2-D noise-driven damped oscillator with unit stationary variance per axis."""
    y = np.empty_like(x)
    c, s = rho * np.cos(omega), rho * np.sin(omega)
    g = np.sqrt(1.0 - rho * rho)
    y[0] = x[0]
    for k in range(1, x.shape[0]):
        y[k, 0] = c * y[k - 1, 0] - s * y[k - 1, 1] + g * x[k, 0]
        y[k, 1] = s * y[k - 1, 0] + c * y[k - 1, 1] + g * x[k, 1]
    return y


CHUNK = 8192  # samples per block of the spike generator (bounds memory at ~10 MB)


@numba.njit(cache=True)
def _generate_spikes(rng, t_first, drive, kin_drive, lag, eps, need, ready, noise_sd, noise_a,
                     gain, gain_onset, gain_ramp, shift, shift_at, dead, dead_onset,
                     noisy, noisy_rate, noisy_onset, offset_knots, knot_dt, use_gain, use_offset, dt):
    """Spikes of one block by time rescaling, the rate piecewise constant per dt.

    Unit c's log rate at sample t_first + i is drive[c, i] (baseline and shared latent)
    + kin_drive[c, i + lag[c]] (tuning to the movement lag[c] samples ahead) + private
    noise. `use_gain` / `use_offset` say whether the gain / baseline-offset drift is on at all
    (computed once by `drift_args`, not per block: a streamed bin is a tiny block). Each unit integrates its rate and fires when the integral passes an Exp(1) draw
    (`need`), the spike placed exactly where the integral crosses it inside the step:
    continuous-time spike times from one random number per spike rather than per step.
    After a spike the unit integrates nothing until `ready` (an absolute refractory
    period), as sorted units show almost no sub-millisecond intervals. Unit-major loops keep
    memory access sequential. `eps`, `need` and `ready` carry state between blocks.
    Returns (unit index, spike time), in time order within each unit.
    """
    n_units, n = drive.shape
    cap = 1024 + n_units * n // 8
    units = np.empty(cap, dtype=np.int32)
    times = np.empty(cap, dtype=np.float64)
    n_out = 0
    g_noise = np.sqrt(1.0 - noise_a * noise_a)
    n_knots = offset_knots.shape[0]
    for c in range(n_units):
        for i in range(n):
            t = t_first + i
            t0 = t * dt
            if t % NOISE_STEP == 0:
                eps[c] = noise_a * eps[c] + g_noise * noise_sd[c] * rng.standard_normal()
            x = drive[c, i] + kin_drive[c, i + lag[c]] + eps[c]
            if t0 >= shift_at:
                x += shift[c]
            rate = min(np.exp(x), MAX_RATE)
            if use_gain and t0 >= gain_onset:
                ramp = 1.0 if gain_ramp <= 0.0 else min((t0 - gain_onset) / gain_ramp, 1.0)
                rate *= 1.0 + (gain[c] - 1.0) * ramp
            if use_offset:
                kpos = t0 / knot_dt
                ki = min(int(kpos), n_knots - 2)
                kf = min(kpos - ki, 1.0)
                rate += offset_knots[ki, c] * (1.0 - kf) + offset_knots[ki + 1, c] * kf
            if noisy[c] and t0 >= noisy_onset:
                rate += noisy_rate
            if rate <= 0.0:
                continue
            start = max(t0, ready[c])
            end = t0 + dt
            while start < end:
                avail = rate * (end - start)
                if avail < need[c]:
                    need[c] -= avail
                    break
                s = start + need[c] / rate
                need[c] = rng.exponential()
                start = s + REFRACTORY
                ready[c] = start
                if dead[c] and s >= dead_onset:
                    continue
                if n_out == units.shape[0]:
                    units2 = np.empty(2 * n_out, dtype=np.int32)
                    times2 = np.empty(2 * n_out, dtype=np.float64)
                    units2[:n_out] = units
                    times2[:n_out] = times
                    units, times = units2, times2
                units[n_out] = c
                times[n_out] = s
                n_out += 1
    return units[:n_out], times[:n_out]


@numba.njit(cache=True)
def _project(w: np.ndarray, x_t: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """[C, n] = w[C, F] @ x_t[F, n] + offset[:, None], with F small.

    A plain loop rather than BLAS: with a handful of features BLAS gains nothing, and its
    threads spin against everything else on a 2-core machine.
    """
    out = np.empty((w.shape[0], x_t.shape[1]))
    for c in range(w.shape[0]):
        out[c, :] = offset[c]
        for f in range(w.shape[1]):
            out[c, :] += w[c, f] * x_t[f, :]
    return out


def tuning_weights(pop: Population) -> tuple[np.ndarray, np.ndarray]:
    """(w_kin float64[C, 3], base float64[C]): how each unit's log rate reads the movement
    features (`kinematic_features`) and its baseline log rate (noise-corrected so the mean
    rate stays at r0)."""
    w_kin = np.column_stack([pop.velocity_gain * np.cos(pop.preferred_direction),
                             pop.velocity_gain * np.sin(pop.preferred_direction), pop.speed_gain])
    return w_kin, np.log(pop.baseline_rate) - 0.5 * pop.noise_sd**2


def kinematic_features(velocity: np.ndarray) -> np.ndarray:
    """float64[N, 3]: (vx, vy, speed) / V_SCALE, the terms cosine and speed tuning read."""
    speed = np.linalg.norm(velocity, axis=1)
    return np.column_stack([velocity / V_SCALE, speed / V_SCALE])


NOISE_A = float(np.exp(-NOISE_STEP * DT / 0.06))  # AR(1) coefficient of the private noise per update


def drift_args(drift: RealisedDrift) -> tuple:
    """The drift arguments of `_generate_spikes`, in its order (gain ... use_offset)."""
    spec = drift.spec
    return (drift.gain, float(spec.gain_onset), float(spec.gain_ramp), drift.shift,
            np.inf if spec.shift_at is None else float(spec.shift_at),
            drift.dead, float(spec.dead_onset), drift.noisy, float(spec.noisy_rate),
            float(spec.noisy_onset), drift.offset_knots, float(drift.knot_dt),
            bool(np.any(drift.gain != 1.0)), bool(np.any(drift.offset_knots != 0.0)))


def simulate_spikes(pop: Population, kin: Kinematics, latent: np.ndarray, drift: RealisedDrift,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """One sorted float64 array of spike times per unit.

    The deterministic part of every log rate is computed blockwise (`_project`); the
    per-sample, per-unit noise and spike drawing run in the numba kernel.
    """
    n = kin.t.size
    features = kinematic_features(kin.velocity)
    w_kin, base = tuning_weights(pop)
    zero = np.zeros(pop.n_units)
    lat_t = np.ascontiguousarray(np.asarray(latent, dtype=np.float64).T)
    max_lag = int(pop.lag.max())
    pad_t = np.ascontiguousarray(np.concatenate([features, np.repeat(features[-1:], max_lag, axis=0)]).T)
    eps = np.zeros(pop.n_units)
    need = rng.exponential(size=pop.n_units)
    ready = np.zeros(pop.n_units)
    drifting = drift_args(drift)
    out_u, out_t = [], []
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        u, t = _generate_spikes(
            rng, a, _project(pop.latent_loading, lat_t[:, a:b], base), _project(w_kin, pad_t[:, a:b + max_lag], zero),
            pop.lag, eps, need, ready, pop.noise_sd, NOISE_A, *drifting, DT)
        out_u.append(u)
        out_t.append(t)
    units, times = np.concatenate(out_u), np.concatenate(out_t)
    order = np.argsort(units, kind="stable")  # blocks are in time order, so times stay sorted
    units, times = units[order], times[order]
    ends = np.searchsorted(units, np.arange(pop.n_units), side="right")
    return np.split(times, ends[:-1])


def simulate_nwb(
    path: str | os.PathLike,
    task: str = "maze",
    minutes: float = 10.0,
    seed: int = 0,
    population_seed: int | None = None,
    n_units: int = 142,
    drift: DriftSpec | None = None,
) -> SimulationTruth:
    """Simulate a session and write it to `path` in the NLB layout; return the ground truth.

    maze writes `processing/behavior/hand_pos` and `hand_vel` (MC_Maze), rtt writes
    `finger_pos` and `finger_vel` (MC_RTT), both at 1 kHz, plus units and a trials table.
    """
    population_seed = seed if population_seed is None else population_seed
    duration = float(minutes) * 60.0
    pop = make_population(n_units, population_seed)
    kin = simulate_kinematics(task, duration, np.random.default_rng([seed, 2]))
    latent = simulate_latent(kin, np.random.default_rng([seed, 3]))
    realised = realise(drift, n_units, duration, seed)
    spikes = simulate_spikes(pop, kin, latent, realised, np.random.default_rng([seed, 4]))
    truth = SimulationTruth(
        task=task, seed=seed, population_seed=population_seed, duration=duration, dt=DT,
        t=kin.t, velocity=kin.velocity, position=kin.position, latent=latent,
        latent_names=LATENT_NAMES, population=pop, drift=realised, trials=kin.trials,
        n_spikes=np.array([s.size for s in spikes], dtype=np.int64),
        meta={"task": task, "seed": seed, "population_seed": population_seed, "minutes": float(minutes),
              "n_units": n_units, "simulator_version": SIMULATOR_VERSION, "drift": spec_dict(drift)},
    )
    _write_nwb(Path(path), truth, spikes)
    return truth


def _units_table(spikes: list[np.ndarray], duration: float):
    """The units table built from whole arrays (hdmf converts per element otherwise: slow)."""
    from hdmf.common import ElementIdentifiers, VectorData, VectorIndex
    from pynwb.misc import Units

    n = len(spikes)
    times = VectorData(name="spike_times", description="spike times, seconds",
                       data=np.concatenate(spikes) if n else np.zeros(0))
    obs = VectorData(name="obs_intervals", description="observation intervals, seconds",
                     data=np.tile([0.0, duration], (n, 1)))
    return Units(name="units", description="simulated single units", resolution=SPIKE_TIME_RESOLUTION,
                 id=ElementIdentifiers(name="id", data=np.arange(n)),
                 columns=[times, VectorIndex(name="spike_times_index", target=times,
                                             data=np.cumsum([s.size for s in spikes])),
                          obs, VectorIndex(name="obs_intervals_index", target=obs,
                                           data=np.arange(1, n + 1))])


def _write_nwb(path: Path, truth: SimulationTruth, spikes: list[np.ndarray]) -> None:
    """Write atomically (temp file + rename), so a reader never sees half a file."""
    from hdmf.common import VectorData
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject

    stamp = _dt.datetime(2024, 1, 1, tzinfo=_dt.timezone.utc)  # fixed: same seed, same file
    nwb = NWBFile(
        experiment_description=f"simulated {TASK_WORDS[truth.task]} task, motor-cortex population tuned to hand velocity",
        keywords=["simulation", "motor cortex", "brain-computer interface", "spike counts", truth.task],
        subject=Subject(subject_id=f"sim-population-{truth.population_seed}", species="Macaca mulatta", sex="U",
                        age="P4Y/P20Y", description="simulated: no animal was recorded; a model of an adult "
                                                    "rhesus macaque's motor cortex (hence the adult age range and "
                                                    "unknown sex); the population seed fixes the neurons"),
        session_description=f"spikestream simulated motor cortex, {truth.task} task",
        identifier=f"spikestream-sim-{truth.task}-s{truth.seed}-p{truth.population_seed}",
        session_start_time=stamp,
        file_create_date=stamp,
        notes=json.dumps(truth.meta, sort_keys=True),  # the settings, for provenance
        source_script="spikestream replay.simulator",
        source_script_file_name="replay/simulator.py",
    )
    prefix = "hand" if truth.task == "maze" else "finger"
    behavior = nwb.create_processing_module("behavior", "simulated hand kinematics, 1 kHz")
    behavior.add(TimeSeries(name=f"{prefix}_pos", data=truth.position, unit="mm",
                            rate=SAMPLE_RATE, starting_time=0.0, description="hand position x, y"))
    behavior.add(TimeSeries(name=f"{prefix}_vel", data=truth.velocity, unit="mm/s",
                            rate=SAMPLE_RATE, starting_time=0.0,
                            description="hand velocity x, y (derivative of position)"))
    nwb.units = _units_table(spikes, truth.duration)
    tr = truth.trials
    if tr["start_time"].size:
        extra = [k for k in tr if k not in ("start_time", "stop_time")]
        cols = [VectorData(name=k, description=f"simulated {k}", data=tr[k]) for k in extra]
        nwb.trials = TimeIntervals(
            name="trials", description="simulated trials",
            columns=[VectorData(name="start_time", description="trial start", data=tr["start_time"]),
                     VectorData(name="stop_time", description="trial stop", data=tr["stop_time"]),
                     *cols])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
