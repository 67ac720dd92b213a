"""Shared by the export, backend and artifact tests: a simulated session and real artifacts.

Artifacts are built the way training builds them, minus the gradient steps (random init
with a fixed seed): normalisation from the session's first half, the Wiener and Kalman
filters fitted in closed form, RVQ codebooks initialised by k-means on encoder outputs
(so codewords sit where the encodings are, as after progressive training). Parity does
not depend on trained weights; these inputs and scales are realistic all the same.

Building and exporting is cached per process, so test modules in one pytest run share it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.artifact import save_artifact
from models.base import StreamingDecoder
from models.registry import MODEL_NAMES, build_model
from replay.nwb_reader import read_nwb
from replay.session import BinnedSession
from replay.simulator import simulate_nwb
from training.export import TOLERANCE, export_artifact, parity_error
from training.metrics import stream_predict as eager_reference  # the reference every backend must match

N_UNITS = 48
N_BINS = 2000
# Small sizes for the default test run (each backend's code path is the same at any size);
# default sizes are covered by the slow-marked tests.
SMALL = {
    "lstm": {"hidden": 32, "layers": 2},
    "transformer": {"d_model": 32, "layers": 2, "heads": 4, "d_ff": 64},
    "rvq": {"hidden": 32, "code_dim": 16, "stages": 4, "codes": 32},
    "mamba": {"d_model": 32, "layers": 2, "d_state": 8},
    "wiener": {},
    "kalman": {},
}
assert set(SMALL) == set(MODEL_NAMES)

_cache: dict = {}


def session(base: Path, n_units: int = N_UNITS) -> BinnedSession:
    """A 1-minute simulated maze session (2,400 bins of 25 ms) read back from NWB."""
    key = ("session", n_units)
    if key not in _cache:
        f = base / f"sim-{n_units}u.nwb"
        simulate_nwb(f, task="maze", minutes=1.0, seed=7, n_units=n_units)
        _cache[key] = read_nwb(f)
    return _cache[key]


def prepare(model: StreamingDecoder, s: BinnedSession) -> StreamingDecoder:
    """Normalisation from the first half; closed-form fits / codebook init where the model has them."""
    half = s.n_bins // 2
    counts, vel, valid = s.counts[:half], s.velocity[:half], s.valid[:half]
    model.set_normalization(counts.mean(0), counts.std(0), np.nanmean(vel[valid], 0), np.nanstd(vel[valid], 0))
    z = (counts - model.x_mean.numpy()) / model.x_std.numpy()
    y = (vel - model.y_mean.numpy()) / model.y_std.numpy()
    if model.name in ("wiener", "kalman"):
        model.fit(z, y, valid)
    if model.name == "rvq":
        with torch.no_grad():
            model.init_codebooks_kmeans(model.encode(torch.from_numpy(counts[None])), iters=10)
    return model.eval()


def make_artifact(base: Path, name: str, size: str = "small", export: bool = True) -> Path:
    """An artifact folder for model `name` ("small" or "default" size), exported if asked."""
    key = ("artifact", name, size, export)
    if key not in _cache:
        s = session(base, N_UNITS if size == "small" else 142)
        torch.manual_seed(0)
        model = build_model(name, s.n_channels, **(SMALL[name] if size == "small" else {}))
        path = save_artifact(base / f"{name}-{size}-{'exported' if export else 'plain'}", prepare(model, s),
                             channel_ids=s.unit_ids, bin_width=s.bin_width)
        if export:
            export_artifact(path)
        _cache[key] = path
    return _cache[key]


def bins(base: Path, size: str = "small") -> np.ndarray:
    """The first 2,000 bins of the session the artifacts of this size were built on."""
    return session(base, N_UNITS if size == "small" else 142).counts[:N_BINS]


def stream(step, counts: np.ndarray) -> np.ndarray:
    """Velocity for every bin, one `step(counts[C])` call per bin (state carried by `step`)."""
    return np.stack([np.asarray(step(x), dtype=np.float32).reshape(2) for x in counts])


def assert_parity(got: np.ndarray, ref: np.ndarray, model: StreamingDecoder) -> float:
    """Backend output equals eager torch to TOLERANCE in normalised units (|diff| / y_std).

    Normalised, because velocity in data units (mm/s, |v| ~ 100) differs by ~1e-4 between
    two correct float32 summation orders; returns the normalised error.
    """
    assert got.shape == ref.shape
    err = parity_error(got, ref, model.y_std.numpy())
    assert err <= TOLERANCE, f"max normalised |diff| {err:.3g} > {TOLERANCE} (data units {np.abs(got - ref).max():.3g})"
    return err
