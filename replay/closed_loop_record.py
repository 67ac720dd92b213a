"""Reading a closed-loop session record back, and the intention labels recalibration trains on.

The record is the NWB file `spikestream closed-loop --record` writes (layout in
benchmarks/closed_loop_outputs.py): counts per bin, the decoded velocity (NaN where the runtime
did not answer in time), cursor and target per bin, a trials table, and the run's settings as
JSON. `read_record` gives it back as arrays; `refit_labels` turns it into what the participant
meant, the way ReFIT does (Gilja et al. 2012, Nat Neurosci 15:1752):

- while a target is up and the cursor is outside it, the intended velocity is the decoded
  velocity turned toward the target, its speed kept (the user wanted to go there, as fast as
  the decoder went);
- while the cursor is inside the target, the intended velocity is zero (the user is holding);
- the first `onset_skip_s` after each target appears are left out: the participant has not seen
  the new target yet (visual feedback delay), so their intention still points at the old one;
- bins with no target (between trials, after the last) and bins the runtime did not answer are
  left out: there is nothing to rotate, or no decoder output to rotate.

`intention_labels` is the check on ReFIT that only a simulation allows: the participant's true
command, shifted to the bin whose spikes carry it (the encoder's plan lead, which the
participant's forward model shares as `internal_lag_s`). No rig has it; it tells what
recalibration could reach if the labels were exactly right.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class RecordError(ValueError):
    """The file is not a readable closed-loop record."""


@dataclass
class ClosedLoopRecord:
    """One closed-loop session as recorded (row k = bin k; times = bin start, seconds)."""

    path: Path
    t: np.ndarray  # float64[T]
    counts: np.ndarray  # float32[T, C]
    decoded: np.ndarray  # float64[T, 2], NaN where not answered in time
    cursor: np.ndarray  # float64[T, 2] at the start of the bin
    target: np.ndarray  # float64[T, 2], NaN where no target
    intention: np.ndarray  # float64[T, 2]: the simulated participant's truth (for checks only)
    trial_start: np.ndarray  # float64[n_trials]
    trial_stop: np.ndarray
    outcome: np.ndarray  # str[n_trials]
    settings: dict
    summary: dict

    @property
    def bin_width(self) -> float:
        return float(np.median(np.diff(self.t))) if self.t.size > 1 else float(self.settings.get("bin_width", 0.025))

    @property
    def target_radius(self) -> float:
        return float(self.settings["task_settings"]["target_radius"])

    @property
    def visual_delay_s(self) -> float:
        return float(self.settings["participant"]["visual_delay_s"])

    def on_target(self) -> np.ndarray:
        """bool[T]: the cursor inside the target at the start of each bin (False with no target)."""
        return np.linalg.norm(self.target - self.cursor, axis=1) <= self.target_radius

    @property
    def plan_lead_bins(self) -> int:
        return int(round(float(self.settings["participant"]["internal_lag_s"]) / self.bin_width))


def read_record(path: str | Path) -> ClosedLoopRecord:
    """The record at `path`; RecordError (one line) if it is not a closed-loop record."""
    from pynwb import NWBHDF5IO

    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such file")
    try:
        with NWBHDF5IO(str(path), "r") as io:
            nwb = io.read()
            counts = nwb.acquisition["counts"]
            module = nwb.processing["closed_loop"]
            series = {name: np.asarray(module[name].data[:], dtype=np.float64)
                      for name in ("decoded_velocity", "cursor", "target", "intention")}
            trials = nwb.trials
            if trials is None or len(trials) == 0:
                raise RecordError(f"{path}: the record has no trials")
            rec = ClosedLoopRecord(
                path=path, t=np.asarray(counts.timestamps[:], dtype=np.float64),
                counts=np.asarray(counts.data[:], dtype=np.float32), decoded=series["decoded_velocity"],
                cursor=series["cursor"], target=series["target"], intention=series["intention"],
                trial_start=np.asarray(trials["start_time"].data[:], dtype=np.float64),
                trial_stop=np.asarray(trials["stop_time"].data[:], dtype=np.float64),
                outcome=np.asarray(trials["outcome"].data[:]).astype(str),
                settings=json.loads(nwb.scratch["closed_loop_settings"].data),
                summary=json.loads(nwb.scratch["closed_loop_summary"].data))
    except RecordError:
        raise
    except (KeyError, OSError, ValueError, TypeError) as e:
        raise RecordError(f"{path}: not a spikestream closed-loop record ({type(e).__name__}: {e})") from None
    n = rec.counts.shape[0]
    if any(a.shape != (n, 2) for a in (rec.decoded, rec.cursor, rec.target, rec.intention)):
        raise RecordError(f"{path}: per-bin series disagree in length with the {n} bins of counts")
    return rec


def refit_labels(decoded: np.ndarray, cursor: np.ndarray, target: np.ndarray, radius: float,
                 t: np.ndarray, trial_start: np.ndarray, onset_skip_s: float) -> tuple[np.ndarray, np.ndarray]:
    """ReFIT intention labels per bin (float64[T, 2]) and the mask of bins that carry one.

    See the module docstring for the rules. A decoded velocity of zero outside the target
    stays zero (it has no direction to keep a speed along)."""
    decoded = np.asarray(decoded, dtype=np.float64)
    to_target = np.asarray(target, dtype=np.float64) - np.asarray(cursor, dtype=np.float64)
    dist = np.linalg.norm(to_target, axis=1)
    speed = np.linalg.norm(decoded, axis=1)
    has_target = np.isfinite(to_target).all(axis=1)
    answered = np.isfinite(decoded).all(axis=1)
    since = np.asarray(t, dtype=np.float64)[:, None] - np.asarray(trial_start, dtype=np.float64)[None, :]
    just_shown = ((since >= -1e-9) & (since < onset_skip_s - 1e-9)).any(axis=1)
    keep = has_target & answered & ~just_shown
    inside = keep & (dist <= radius)
    labels = np.zeros_like(decoded)
    out = keep & ~inside & (dist > 0)
    labels[out] = to_target[out] / dist[out, None] * speed[out, None]
    labels[~keep] = np.nan
    return labels, keep


def intention_labels(intention: np.ndarray, target: np.ndarray, lead_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The simulated participant's true command as labels: bin k gets the command issued
    `lead_bins` earlier (what its spikes encode); bins with no target, or whose command predates
    the session, carry none."""
    labels = np.full_like(np.asarray(intention, dtype=np.float64), np.nan)
    labels[lead_bins:] = intention[: len(intention) - lead_bins]
    keep = np.isfinite(target).all(axis=1) & np.isfinite(labels).all(axis=1)
    labels[~keep] = np.nan
    return labels, keep
