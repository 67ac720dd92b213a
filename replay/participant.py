"""A simulated BCI user: the piecewise-linear feedback-control model of Willett et al. 2019.

Willett, Pandarinath, ..., Henderson (2019), "Principled BCI decoder design and parameter
selection using a feedback control model", Sci Rep 9:8881, fitted to BrainGate participants
a user who (1) sees the cursor late (a visual feedback delay), (2) estimates where it is now
with an internal forward model of what their own recent commands will have done, and (3)
commands a velocity

    u_t = v_max * f_targ(|e_t| / s) * e_t / |e_t|  -  k_damp * v_hat_t  +  noise_t,
    e_t = target_seen - x_hat_t

where f_targ is a saturating, piecewise-linear function of the distance to the target (the
table below, from the authors' public port, guyhwilson/nonstationarities `simulateBCIFitts`,
where the workspace is a unit square: `s` converts our mm into those units), v_hat_t is the
estimated cursor velocity and k_damp a damping gain on it.

Our forward model: the participant knows that the cursor moves with the velocity it intended
`internal_lag_s` earlier (the encoder's plan lead: intention now is movement later) and
predicts the cursor's present position as the last seen position plus what its commands
issued over the delay window will have added:

    x_hat_t = x_{t - delay} + dt * sum_{j = t - delay}^{t - 1} u_{j - lag}

With a perfect decoder this is exact; with a real one the decoder's errors during the last
`delay` are invisible until they are seen, which is what makes closed-loop control of a noisy
decoder hard. Defaults and where they come from are on `ParticipantSettings`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

# f_targ of Willett et al. 2019 as in their public port (distance in workspace units -> command
# magnitude, ~1 when saturated); the last knot carries the plateau out to any distance.
F_TARG_DISTANCE = np.array([0.0, 3.4325e-4, 0.0274175, 0.1026545, 0.17212075, 0.2618185, 0.37741625,
                            0.511568, 0.65950075, 0.82384525, 0.99964425, 100.0])
F_TARG_GAIN = np.array([0.0, 0.0, 0.500624667, 0.602977667, 0.833672667, 0.834671333, 0.868126333,
                        0.907594, 0.936572667, 1.03224767, 0.997908667, 0.997908667])


@dataclass(frozen=True)
class ParticipantSettings:
    """The user model's parameters (all times in s, distances in mm, speeds in mm/s).

    - visual_delay_s 0.2: Willett et al. 2019 fit visual feedback delays of ~150-250 ms for
      BrainGate participants; 200 ms is the middle of the range the issue asks for.
    - max_speed: the command when f_targ saturates. 200 mm/s keeps intentions inside the
      speeds the simulator's open-loop reaches cover (peaks ~300-450 mm/s), so the decoder is
      asked for velocities it was trained on.
    - distance_scale: the mm that make one unit of the f_targ table. 300 mm: the table's unit
      square holds the authors' targets at up to 0.5 from centre; ours sit at 100 mm in a
      workspace about 300 mm wide.
    - damping 0.2: the velocity term of the model, a light brake on the estimated cursor
      velocity (the fitted f_vel is negative and small at the speeds reached here).
    - motor_noise 15 mm/s, motor_noise_tau_s 0.1: slow (AR(1)) noise on the command; the
      neural noise itself comes from the encoder.
    - internal_lag_s 0.15: the forward model's lag from command to cursor motion, the
      encoder's plan lead (replay.encoder.PLAN_LEAD_S).
    """

    visual_delay_s: float = 0.2
    max_speed: float = 200.0
    distance_scale: float = 300.0
    damping: float = 0.2
    motor_noise: float = 15.0
    motor_noise_tau_s: float = 0.1
    internal_lag_s: float = 0.15

    def __post_init__(self) -> None:
        for name in ("visual_delay_s", "max_speed", "distance_scale", "damping", "motor_noise",
                     "motor_noise_tau_s", "internal_lag_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.distance_scale == 0:
            raise ValueError("distance_scale must be > 0")


class Participant:
    """Sees the cursor and target `visual_delay_s` late, estimates the present, commands a velocity."""

    def __init__(self, settings: ParticipantSettings, *, bin_width: float, seed: int) -> None:
        self.settings = settings
        self.bin_width = bin_width
        self.delay = int(round(settings.visual_delay_s / bin_width))
        self.lag = int(round(settings.internal_lag_s / bin_width))
        self._rng = np.random.default_rng([seed, 6])
        self._a = float(np.exp(-bin_width / settings.motor_noise_tau_s)) if settings.motor_noise_tau_s > 0 else 0.0
        self._noise = np.zeros(2)
        # what the eye has received: (cursor, target) per bin, the oldest first
        self._seen: deque[tuple[np.ndarray, np.ndarray | None]] = deque(maxlen=self.delay + 1)
        self._commands: deque[np.ndarray] = deque([np.zeros(2)] * (self.delay + self.lag + 1),
                                                  maxlen=self.delay + self.lag + 1)
        self.target_seen: np.ndarray | None = None
        self.new_target = False  # True on the bin a new target first reaches the eye
        self.estimate = np.zeros(2)

    def intend(self, cursor: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        """The command (mm/s) for this bin, given the true cursor and target at this bin."""
        s = self.settings
        self._seen.append((np.array(cursor, dtype=np.float64), None if target is None else np.array(target, float)))
        seen_cursor, seen_target = self._seen[0]  # `delay` bins old once the buffer is full
        self.new_target = seen_target is not None and (
            self.target_seen is None or not np.array_equal(seen_target, self.target_seen))
        self.target_seen = seen_target
        cmds = list(self._commands)  # cmds[-1] is the last bin's command
        n_seen = len(self._seen) - 1  # bins between what is seen and now
        in_flight = cmds[len(cmds) - self.lag - n_seen:len(cmds) - self.lag] if n_seen else []
        v_hat = cmds[-self.lag] if self.lag else cmds[-1]
        self.estimate = seen_cursor + self.bin_width * np.sum(in_flight, axis=0) if n_seen else seen_cursor
        u = -s.damping * v_hat
        if seen_target is not None:
            e = seen_target - self.estimate
            dist = float(np.hypot(*e))
            if dist > 1e-9:
                u = u + s.max_speed * np.interp(dist / s.distance_scale, F_TARG_DISTANCE, F_TARG_GAIN) * e / dist
        self._noise = self._a * self._noise + np.sqrt(1 - self._a**2) * s.motor_noise * self._rng.standard_normal(2)
        u = u + self._noise
        self._commands.append(u)
        return u
