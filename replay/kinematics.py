"""Simulated hand movements for the two task modes, sampled at 1 kHz like NLB's behaviour.

Movements are built from minimum-jerk submovements (Flash & Hogan 1985), which give the
bell-shaped speed profiles of real reaches; small smooth postural jitter is added on top so
the hand is never perfectly still. Each reach also yields the event times the neural model
needs (target on, go cue, movement onset) and the trial table written to NWB.

- "maze": MC_Maze-like centre-out reaches. Hold at centre, target on, instructed delay,
  go cue, reaction time, a reach (sometimes curved, as around a maze barrier), hold at the
  target, then an un-cued return to the centre outside the trial.
- "rtt": MC_RTT-like continuous random-target tracking on an 8 x 8 grid, no return to the
  centre and no delay; reaches sometimes miss and are corrected by a second submovement.

Units: millimetres and mm/s, as in NLB's files.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

SAMPLE_RATE = 1000.0
DT = 1.0 / SAMPLE_RATE
TASKS = ("maze", "rtt")
# Small out-and-back movements per task: (events per second, s.d. of their size in mm).
# Holds in the maze task keep them rare; continuous tracking is full of them.
WOBBLE = {"maze": (0.5, 3.0), "rtt": (3.0, 8.0)}


@dataclass
class Reach:
    """One planned submovement and the cues that led to it."""

    cue_time: float  # when the target it heads for became known (target on)
    onset: float  # movement onset, seconds
    duration: float
    start: np.ndarray  # planned start point, mm [2]
    end: np.ndarray  # planned end point, mm [2]
    curvature: float = 0.0  # peak sideways deviation as a fraction of the distance

    @property
    def direction(self) -> float:
        d = self.end - self.start
        return float(np.arctan2(d[1], d[0]))


@dataclass
class Kinematics:
    """Hand trajectory on the 1 kHz grid plus the reaches and trials behind it."""

    t: np.ndarray  # float64[N] sample times (k * DT)
    position: np.ndarray  # float64[N, 2] mm
    velocity: np.ndarray  # float64[N, 2] mm/s, the derivative of `position`
    reaches: list[Reach]
    trials: dict[str, np.ndarray]


def simulate_kinematics(task: str, duration: float, rng: np.random.Generator) -> Kinematics:
    """Draw a whole session of `duration` seconds of behaviour for `task`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not duration >= 1.0:
        raise ValueError(f"duration must be at least 1 second, got {duration}")
    n = int(round(duration * SAMPLE_RATE))
    t = np.arange(n) * DT
    reaches, trials = (_maze_plan if task == "maze" else _rtt_plan)(duration, rng)
    position = np.zeros((n, 2))
    steps = np.zeros((n + 1, 2))  # completed displacements, added as steps then cumulated
    for r in reaches:
        _add_min_jerk(position, steps, r)
    rate, amp = WOBBLE[task]
    position += np.cumsum(steps[:n], axis=0) + _postural_jitter(n, rng) + _wobbles(n, rate, amp, rng)
    velocity = np.gradient(position, DT, axis=0)
    return Kinematics(t=t, position=position, velocity=velocity, reaches=reaches, trials=trials)


def _add_min_jerk(position: np.ndarray, steps: np.ndarray, r: Reach) -> None:
    """Superpose one submovement's displacement: 0 before onset, full after it ends.

    Superposition (Flash & Henis 1991) is what lets a correction start before the
    previous submovement has finished, as in continuous tracking.
    """
    i0 = int(np.ceil(r.onset * SAMPLE_RATE))
    if i0 >= position.shape[0]:
        return
    i1 = min(int(np.ceil((r.onset + r.duration) * SAMPLE_RATE)), position.shape[0])
    s = np.clip((np.arange(i0, i1) * DT - r.onset) / r.duration, 0.0, 1.0)
    shape = 10 * s**3 - 15 * s**4 + 6 * s**5
    d = r.end - r.start
    normal = np.array([-d[1], d[0]])
    bend = r.curvature * np.sin(np.pi * s) ** 2
    position[i0:i1] += shape[:, None] * d + bend[:, None] * normal
    steps[i1] += d


def _wobbles(n: int, rate: float, amp: float, rng: np.random.Generator) -> np.ndarray:
    """Small out-and-back movements at random times (Poisson, `rate` per second).

    They are real movements (so tuned units see them) but small and brief, so their
    velocity is hard to decode: part of the behavioural variance no decoder explains,
    as with the corrective and tracking movements in real recordings.
    """
    out = np.zeros((n, 2))
    n_events = rng.poisson(rate * n * DT)
    starts = rng.integers(0, n, n_events)
    lengths = (rng.uniform(0.12, 0.3, n_events) * SAMPLE_RATE).astype(np.int64)
    sizes = rng.normal(0.0, amp, (n_events, 2))
    for i0, length, a in zip(starts, lengths, sizes):
        m = min(length, n - i0)
        out[i0:i0 + m] += np.sin(np.pi * np.arange(m) / length)[:, None] ** 2 * a
    return out


def _postural_jitter(n: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth, small (~1 mm, ~10 mm/s) wander: a twice low-passed noise, so differentiable."""
    a = np.exp(-DT / 0.08)
    x = smooth_ar1(rng.standard_normal((n, 2)), a)
    x = smooth_ar1(x, a)
    return x * (1.2 / max(float(x.std()), 1e-12))


@numba.njit(cache=True)
def smooth_ar1(x: np.ndarray, a: float) -> np.ndarray:
    """Causal first-order low-pass along axis 0: y[k] = a*y[k-1] + sqrt(1-a^2)*x[k]."""
    y = np.empty_like(x)
    g = np.sqrt(1.0 - a * a)
    y[0] = x[0]
    for k in range(1, x.shape[0]):
        y[k] = a * y[k - 1] + g * x[k]
    return y


def _reach_duration(distance: float, rng: np.random.Generator) -> float:
    """Fitts-like: longer reaches take longer, with trial-to-trial spread."""
    return 0.28 + distance / 450.0 + rng.uniform(-0.04, 0.1)


def _maze_plan(duration: float, rng: np.random.Generator) -> tuple[list[Reach], dict[str, np.ndarray]]:
    """Centre-out trials with instructed delays, reaches to 12 directions, returns to centre."""
    centre = np.zeros(2)
    angles = np.deg2rad(np.arange(0, 360, 30))
    reaches: list[Reach] = []
    rows: dict[str, list] = {k: [] for k in (
        "start_time", "stop_time", "target_on_time", "go_cue_time", "move_onset_time",
        "delay", "rt", "target_pos", "reach_angle", "curvature")}
    t = 0.3
    while True:
        start = t
        target_on = start + rng.uniform(0.3, 0.6)
        delay = 0.0 if rng.random() < 0.1 else rng.uniform(0.25, 0.9)
        go = target_on + delay
        rt = rng.uniform(0.22, 0.4)
        onset = go + rt
        angle = angles[rng.integers(angles.size)] + rng.normal(0, np.deg2rad(4))
        dist = rng.uniform(70.0, 130.0)
        target = centre + dist * np.array([np.cos(angle), np.sin(angle)])
        curv = rng.normal(0.0, 0.25) if rng.random() < 0.5 else 0.0
        dur = _reach_duration(dist * (1 + abs(curv)), rng)
        stop = onset + dur + rng.uniform(0.3, 0.6)
        back_onset = stop + rng.uniform(0.1, 0.25)
        back_dur = _reach_duration(dist, rng) + rng.uniform(0.1, 0.3)
        next_t = back_onset + back_dur + rng.uniform(0.2, 0.5)
        if next_t > duration:
            break
        reaches.append(Reach(target_on, onset, dur, centre.copy(), target, curv))
        # The return is self-paced: its "cue" is the end of the target hold.
        reaches.append(Reach(stop, back_onset, back_dur, target, centre.copy(), 0.0))
        for k, v in zip(rows, (start, stop, target_on, go, onset, delay, rt, target,
                               np.rad2deg(angle) % 360, curv)):
            rows[k].append(v)
        t = next_t
    return reaches, _columns(rows)


def _rtt_plan(duration: float, rng: np.random.Generator) -> tuple[list[Reach], dict[str, np.ndarray]]:
    """Random targets on an 8 x 8 grid, reached one after another without pause at centre."""
    grid = np.linspace(-70.0, 70.0, 8)
    reaches: list[Reach] = []
    rows: dict[str, list] = {k: [] for k in (
        "start_time", "stop_time", "go_cue_time", "move_onset_time", "rt", "target_pos",
        "n_submovements")}
    here = np.zeros(2)
    t = 0.3
    while True:
        target = here
        while np.allclose(target, here):
            target = np.array([grid[rng.integers(8)], grid[rng.integers(8)]])
        rt = rng.uniform(0.15, 0.3)
        onset = t + rt
        dist = float(np.linalg.norm(target - here))
        dur = _reach_duration(dist, rng)
        plan = [Reach(t, onset, dur, here, target, rng.normal(0.0, 0.1))]
        if rng.random() < 0.35:  # primary submovement misses; a correction overlaps its end
            miss = target + rng.normal(0.0, 0.12 * dist, size=2)
            plan[0].end = miss
            c_onset = onset + dur * rng.uniform(0.6, 0.85)
            c_dur = _reach_duration(float(np.linalg.norm(target - miss)), rng) * 0.8
            plan.append(Reach(t, c_onset, c_dur, miss, target, 0.0))
        acquired = max(r.onset + r.duration for r in plan) - rng.uniform(0.03, 0.1)
        stop = acquired + rng.uniform(0.0, 0.15)
        if stop > duration:
            break
        reaches.extend(plan)
        for k, v in zip(rows, (t, stop, t, onset, rt, target, len(plan))):
            rows[k].append(v)
        here, t = target, stop
    return reaches, _columns(rows)


def _columns(rows: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.int64 if k == "n_submovements" else np.float64)
            for k, v in rows.items()}
