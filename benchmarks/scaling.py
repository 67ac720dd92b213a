"""How step latency grows: with the number of channels (arrays grow) and with model width.

Each sweep is a set of untrained artifacts of one model that differ in one size only,
run interleaved through one backend, exactly like the main step benchmark.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks import BenchError
from benchmarks.artifacts import BenchArtifact, build_untrained
from models.registry import model_class
from replay.session import BinnedSession

DEFAULT_CHANNELS = (96, 1024, 4096)
DEFAULT_WIDTHS = (64, 128, 256, 512)
# The hyperparameter that sets a model's width, first one a model has wins.
WIDTH_PARAMS = ("hidden", "d_model", "width", "dim")


def width_param(model: str, n_channels: int) -> str:
    """The name of the model's width hyperparameter (e.g. the LSTM's `hidden`)."""
    params = model_class(model)(n_channels=n_channels).hparams()
    for name in WIDTH_PARAMS:
        if name in params:
            return name
    raise BenchError(f"model {model!r} has no width hyperparameter among {WIDTH_PARAMS} (its: {sorted(params)})")


def channel_artifacts(out_dir: Path, model: str, session: BinnedSession, channels, seed: int,
                      backend: str) -> list[BenchArtifact]:
    """One artifact per channel count, the model otherwise at its default size."""
    return [build_untrained(out_dir, model, session, n_channels=c, seed=seed, label=f"{model}[C={c}]",
                            backends=[backend]) for c in channels]


def width_artifacts(out_dir: Path, model: str, session: BinnedSession, widths, seed: int,
                    backend: str) -> tuple[str, list[BenchArtifact]]:
    """One artifact per width, on the session's channels; also returns the width's parameter name."""
    param = width_param(model, session.n_channels)
    return param, [build_untrained(out_dir, model, session, hparams={param: w}, seed=seed, backends=[backend])
                   for w in widths]
