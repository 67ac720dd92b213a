"""Check the streaming encoder against the simulator it streams: same population, same decoder,
same R² (issue 13's acceptance check).

An open-loop session is simulated and written as usual; its recorded hand velocity, shifted
by the encoder's plan lead (the intention issued at t is the movement at t + lead), drives a
`StreamingEncoder` of the same population, with the session's reaches announced at their
cues (with their cue and onset times). One artifact decodes both count streams through the runtime's own backend, bin by bin.
If the encoder is the simulator's model, the two R² agree to within run-to-run spread.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from replay.encoder import StreamingEncoder
from replay.kinematics import SAMPLE_RATE, simulate_kinematics
from replay.nwb_reader import read_nwb
from replay.scoring import r2_scores
from replay.simulator import make_population, simulate_nwb


def decode(backend, counts: np.ndarray) -> np.ndarray:
    """float32[T, 2]: the backend stepped through `counts` from a reset state."""
    backend.reset()
    return np.stack([np.asarray(backend.step(np.ascontiguousarray(c, dtype=np.float32)), dtype=np.float32)
                     for c in counts])


def encoder_counts(seed: int, population_seed: int, minutes: float, n_units: int, bin_width: float,
                   n_bins: int) -> np.ndarray:
    """float32[n_bins, C]: the encoder driven by session `seed`'s hand velocity, lead-shifted."""
    kin = simulate_kinematics("maze", minutes * 60.0, np.random.default_rng([seed, 2]))
    enc = StreamingEncoder(make_population(n_units, population_seed), seed=seed + 10_000, bin_width=bin_width)
    s, lead = enc.samples, enc.lead
    vel = np.concatenate([kin.velocity, np.repeat(kin.velocity[-1:], lead + s, axis=0)])
    cues = sorted((int(r.cue_time * SAMPLE_RATE), i) for i, r in enumerate(kin.reaches))
    out = np.zeros((n_bins, enc.population.n_units), dtype=np.float32)
    j = 0
    for k in range(n_bins):
        while j < len(cues) and cues[j][0] < enc.t + s:  # a reach is announced at its cue
            r = kin.reaches[cues[j][1]]
            enc.add_reach(r.start, r.end, cue_s=r.cue_time, onset_s=r.onset)
            j += 1
        out[k] = enc.step(vel[k * s + lead:(k + 1) * s + lead])
    return out


def encoder_check(artifact_path: Path, *, seed: int = 7, population_seed: int = 0, minutes: float = 4.0,
                  backend: str = "torch") -> dict:
    """R² of one artifact on an open-loop session and on the encoder driven by its velocity."""
    from decoder_runtime.backends import make_backend
    from models.artifact import load_artifact

    art = load_artifact(artifact_path)
    be = make_backend(art, backend, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "openloop.nwb"
        simulate_nwb(path, task="maze", minutes=minutes, seed=seed, population_seed=population_seed,
                     n_units=art.n_channels)
        session = read_nwb(path, bin_width=art.bin_width)
    enc = encoder_counts(seed, population_seed, minutes, art.n_channels, art.bin_width, session.n_bins)
    r2_session = r2_scores(decode(be, session.counts), session.velocity, session.valid)
    r2_encoder = r2_scores(decode(be, enc), session.velocity, session.valid)
    return {"artifact": str(artifact_path), "seed": seed, "population_seed": population_seed, "minutes": minutes,
            "r2_session": r2_session["r2"], "r2_encoder": r2_encoder["r2"],
            "difference": r2_encoder["r2"] - r2_session["r2"],
            "mean_rate_session_hz": float(session.counts.mean() / art.bin_width),
            "mean_rate_encoder_hz": float(enc.mean() / art.bin_width)}
