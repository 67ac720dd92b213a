"""R² of decoded velocity: the one scoring function training, evaluation and replay share.

It lives in `replay` and needs only numpy so the runtime can import exactly the function
training used: a number printed at run time and one printed offline can then only differ
because the predictions differ, never because the arithmetic does.

Definitions (computed in float64 over the scored bins only):

- scored bins: truth finite in both components and `valid` True (when a mask is given);
  bins with NaN truth or an invalid mask are excluded, never treated as zero velocity.
- per component j: ``r2_j = 1 - sum_t (pred_tj - true_tj)^2 / sum_t (true_tj - mean_t true_tj)^2``,
  the mean taken over the scored bins (sklearn's ``r2_score``).
- ``r2``: the equal average of ``r2_vx`` and ``r2_vy``; the headline, as the Neural Latents
  Benchmark reports it.
- ``r2_vw``: variance-weighted, ``1 - sum_j SS_res_j / sum_j SS_tot_j``, as FALCON reports
  it (sklearn's ``multioutput="variance_weighted"``).

A component whose truth has zero variance over the scored bins has an undefined R²: it is
NaN, not forced to 0 or 1. A non-finite prediction on a scored bin makes the R² NaN too (a
diverged decoder must not read as a number).
"""
from __future__ import annotations

import numpy as np

COMPONENTS = ("vx", "vy")


def scored_mask(true: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """bool[T]: the bins R² is computed over (finite truth, and valid where a mask is given)."""
    true = np.asarray(true)
    mask = np.isfinite(true).all(axis=1)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != mask.shape:
            raise ValueError(f"valid must be bool[T]={mask.shape[0]}, got shape {valid.shape}")
        mask &= valid
    return mask


def r2_scores(pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """R² per component, their equal average (`r2`, the headline) and variance-weighted (`r2_vw`).

    `pred` and `true` are [T, 2]; `valid` is an optional bool[T]. Also returns `n_bins`, the
    number of bins scored. See the module docstring for the exact definitions.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if true.ndim != 2 or true.shape[1] != len(COMPONENTS):
        raise ValueError(f"true must be [T, 2], got shape {true.shape}")
    if pred.shape != true.shape:
        raise ValueError(f"pred must have the shape of true {true.shape}, got {pred.shape}")
    mask = scored_mask(true, valid)
    n = int(mask.sum())
    out: dict = {"n_bins": n}
    if n < 2:
        out.update({f"r2_{c}": float("nan") for c in COMPONENTS}, r2=float("nan"), r2_vw=float("nan"))
        return out
    p, y = pred[mask], true[mask]
    ss_res = ((p - y) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)
        vw = 1.0 - ss_res.sum() / ss_tot.sum() if (ss_tot > 0).all() else np.nan
    for c, v in zip(COMPONENTS, per):
        out[f"r2_{c}"] = float(v)
    out["r2"] = float(per.mean())
    out["r2_vw"] = float(vw)
    return out


def per_trial_r2(
    pred: np.ndarray,
    true: np.ndarray,
    valid: np.ndarray | None,
    trial_of_bin: np.ndarray,
    min_bins: int = 10,
) -> dict:
    """Distribution of the headline R² computed within each trial (its own mean as baseline).

    Mean metrics can be ruled by rare outliers, so the median and the 5th percentile are
    reported beside the whole-block number. Trials with fewer than `min_bins` scored bins or
    an undefined R² are left out and counted in `n_trials_skipped`. Returns NaN statistics
    (and `n_trials` 0) when the block has no trials.
    """
    trial_of_bin = np.asarray(trial_of_bin)
    mask = scored_mask(true, valid)
    values = []
    skipped = 0
    for k in np.unique(trial_of_bin[trial_of_bin >= 0]):
        sel = (trial_of_bin == k) & mask
        if sel.sum() < min_bins:
            skipped += 1
            continue
        r2 = r2_scores(pred[sel], true[sel])["r2"]
        if np.isfinite(r2):
            values.append(r2)
        else:
            skipped += 1
    v = np.asarray(values, dtype=np.float64)
    return {
        "trial_r2_median": float(np.median(v)) if v.size else float("nan"),
        "trial_r2_p5": float(np.percentile(v, 5)) if v.size else float("nan"),
        "n_trials": int(v.size),
        "n_trials_skipped": int(skipped),
    }


def held_out_block(config: dict, n_bins: int, nwb_identifier: str | None) -> tuple[int, int] | None:
    """The artifact's test block when the session scored is the one it was trained on.

    R² over a whole training session mixes in bins the model was fitted to, which flatters it;
    the held-out figure must stand beside it. `config` is the artifact's config.json.
    """
    prov = config.get("provenance") or {}
    same = prov.get("n_bins") == n_bins and (prov.get("meta") or {}).get("nwb_identifier") == nwb_identifier
    test = (prov.get("split") or {}).get("test")
    return (int(test[0]), int(test[1])) if same and test else None


def replay_scores(sent: np.ndarray, model: np.ndarray, true: np.ndarray, valid: np.ndarray | None,
                  held_out: tuple[int, int] | None) -> dict:
    """R² of a replay: of the velocity sent, of the model's own output, and of the held-out block."""
    n = sent.shape[0]
    valid = None if valid is None else valid[:n]
    out = {"r2": r2_scores(sent, true[:n], valid), "r2_model": r2_scores(model, true[:n], valid)}
    if held_out is not None and n > held_out[0]:
        a, b = held_out[0], min(held_out[1], n)
        out["r2_held_out"] = {**r2_scores(sent[a:b], true[a:b], None if valid is None else valid[a:b]), "bins": [a, b]}
    return out
