"""R² scoring on hand-built cases: the definitions in replay/scoring.py, checked by hand."""
from __future__ import annotations

import numpy as np
import pytest

from replay.scoring import per_trial_r2, r2_scores


def _truth(n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(0, 1, n), rng.normal(5, 3, n)], axis=1)


def test_perfect_prediction_scores_one():
    y = _truth()
    s = r2_scores(y.copy(), y)
    assert s["r2_vx"] == pytest.approx(1.0) and s["r2_vy"] == pytest.approx(1.0)
    assert s["r2"] == pytest.approx(1.0) and s["r2_vw"] == pytest.approx(1.0)
    assert s["n_bins"] == len(y)


def test_predicting_the_mean_scores_zero():
    y = _truth()
    s = r2_scores(np.broadcast_to(y.mean(axis=0), y.shape), y)
    assert s["r2_vx"] == pytest.approx(0.0, abs=1e-12)
    assert s["r2"] == pytest.approx(0.0, abs=1e-12) and s["r2_vw"] == pytest.approx(0.0, abs=1e-12)


def test_equal_and_variance_weighted_averages_differ_when_variances_differ():
    y = _truth()  # vy has 9x the variance of vx
    pred = y.copy()
    pred[:, 0] = y[:, 0].mean()  # vx: R² 0; vy perfect
    s = r2_scores(pred, y)
    assert s["r2_vx"] == pytest.approx(0.0, abs=1e-12) and s["r2_vy"] == pytest.approx(1.0)
    assert s["r2"] == pytest.approx(0.5)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    assert s["r2_vw"] == pytest.approx(1 - ss_tot[0] / ss_tot.sum())
    assert s["r2_vw"] > 0.85  # dominated by the high-variance, perfectly decoded vy


def test_hand_computed_value():
    y = np.array([[1.0, 0.0], [2.0, 2.0], [3.0, 4.0], [4.0, 6.0]])
    pred = np.array([[1.5, 0.0], [2.0, 3.0], [2.5, 4.0], [4.0, 5.0]])
    # vx: SS_res 0.5, SS_tot 5 -> 0.9; vy: SS_res 2, SS_tot 20 -> 0.9
    s = r2_scores(pred, y)
    assert s["r2_vx"] == pytest.approx(0.9) and s["r2_vy"] == pytest.approx(0.9)
    assert s["r2_vw"] == pytest.approx(1 - 2.5 / 25)


def test_nan_truth_and_invalid_bins_are_excluded():
    y = _truth()
    pred = y + 0.1
    ref = r2_scores(pred[:150], y[:150])
    y_nan = y.copy()
    y_nan[150:, 1] = np.nan  # NaN in one component drops the whole bin
    pred_bad = pred.copy()
    pred_bad[150:] = 1e6  # garbage on excluded bins must not matter
    assert r2_scores(pred_bad, y_nan) == ref
    valid = np.arange(len(y)) < 150
    assert r2_scores(pred_bad, y, valid) == ref


def test_undefined_cases_are_nan_not_numbers():
    y = np.ones((10, 2))  # zero variance
    s = r2_scores(y.copy(), y)
    assert np.isnan(s["r2"]) and np.isnan(s["r2_vw"])
    s = r2_scores(np.zeros((1, 2)), np.ones((1, 2)))
    assert s["n_bins"] == 1 and np.isnan(s["r2"])
    y = _truth()
    pred = y.copy()
    pred[3, 0] = np.nan  # a diverged decoder must not score
    assert np.isnan(r2_scores(pred, y)["r2"])


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="true must be"):
        r2_scores(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="pred must"):
        r2_scores(np.zeros((4, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="valid must"):
        r2_scores(np.zeros((5, 2)), np.zeros((5, 2)), np.ones(4, bool))


def test_per_trial_statistics():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(100, 2))
    trial = np.repeat([0, 1, 2, 3, -1], 20)
    pred = y.copy()
    pred[20:40] = y[20:40].mean(axis=0)  # trial 1 scores 0, the others 1
    pred[60:80] = 0.0  # trial 3 is poor too
    s = per_trial_r2(pred, y, None, trial)
    scores = sorted([1.0, 0.0, 1.0, r2_scores(pred[60:80], y[60:80])["r2"]])
    assert s["n_trials"] == 4 and s["n_trials_skipped"] == 0
    assert s["trial_r2_median"] == pytest.approx(np.median(scores))
    assert s["trial_r2_p5"] == pytest.approx(np.percentile(scores, 5))
    short = per_trial_r2(pred, y, np.arange(100) >= 15, trial)  # trial 0 keeps 5 bins < 10
    assert short["n_trials"] == 3 and short["n_trials_skipped"] == 1
    none = per_trial_r2(pred, y, None, np.full(100, -1))
    assert none["n_trials"] == 0 and np.isnan(none["trial_r2_median"])
