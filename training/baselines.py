"""The linear baselines, fitted on the same split and statistics as the networks.

A network's R² means little without them: the Wiener filter (ridge regression on 250 ms =
10 bins of history) is what the research's networks had to beat, and the Kalman filter is
the classic online BCI decoder. Both are fitted in closed form on the training block only;
the Wiener ridge strength is chosen on the validation block (never on the test block), so
the baseline is as strong as the networks' own early stopping lets them be.
"""
from __future__ import annotations

import numpy as np

from models.base import StreamingDecoder
from models.linear import KalmanDecoder, WienerDecoder
from replay.session import BinnedSession
from training.data import Normalization
from training.train import validation_r2

WIENER_HISTORY = 10  # bins: 250 ms at 25 ms, the research's context length
RIDGE_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)
BASELINES = ("wiener", "kalman")


def _z(session: BinnedSession, model: StreamingDecoder) -> tuple[np.ndarray, np.ndarray]:
    """A block's counts and velocity z-scored with the statistics installed in `model`."""
    x_mean, x_std, y_mean, y_std = (getattr(model, k).cpu().numpy() for k in ("x_mean", "x_std", "y_mean", "y_std"))
    return (session.counts - x_mean) / x_std, (session.velocity - y_mean) / y_std


def fit_wiener(
    train: BinnedSession, val: BinnedSession, norm: Normalization, history: int = WIENER_HISTORY,
    ridge_grid: tuple[float, ...] = RIDGE_GRID,
) -> tuple[WienerDecoder, dict]:
    """Wiener filter on the training block, ridge picked by validation R²; and the val scores."""
    scores: dict[float, float] = {}
    best: tuple[float, WienerDecoder | None] = (-np.inf, None)
    for ridge in ridge_grid:
        model = WienerDecoder(train.n_channels, history=history, ridge=ridge)
        model.set_normalization(*norm.as_args())
        model.fit(*_z(train, model), train.valid)
        scores[ridge] = validation_r2(model, val)
        if scores[ridge] > best[0] or best[1] is None:
            best = (scores[ridge], model)
    model = best[1]
    return model, {"ridge": model.ridge, "val_r2_by_ridge": {str(k): v for k, v in scores.items()}}


def fit_kalman(train: BinnedSession, norm: Normalization) -> KalmanDecoder:
    """Steady-state Kalman filter on the training block."""
    model = KalmanDecoder(train.n_channels)
    model.set_normalization(*norm.as_args())
    model.fit(*_z(train, model), train.valid)
    return model


def fit_baseline(
    name: str, train: BinnedSession, val: BinnedSession, norm: Normalization
) -> tuple[StreamingDecoder, dict]:
    """`wiener` or `kalman` fitted on the training block; returns (model, details)."""
    if name == "wiener":
        return fit_wiener(train, val, norm)
    if name == "kalman":
        return fit_kalman(train, norm), {}
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
