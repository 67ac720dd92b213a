"""Predictions over a block of bins and the metrics reported for them.

Two ways to predict, one number:

- `stream_predict` runs the model exactly as the runtime does: `init_state(1)`, then one
  `step` per bin in order, eager torch, float32. Every held-out metric in an artifact and
  every `spikestream evaluate` figure comes from it.
- `forward_predict` runs `forward` on the block as one sequence from a cold start. Each
  model's tests assert forward == step-from-init_state (≤ 1e-4), so this is the same
  prediction at a fraction of the cost; training uses it for validation (early stopping)
  only, never for a reported number.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.base import StreamingDecoder
from replay.scoring import per_trial_r2, r2_scores
from replay.session import BinnedSession


def _device(model: StreamingDecoder) -> torch.device:
    return model.x_mean.device


@torch.inference_mode()
def stream_predict(model: StreamingDecoder, counts: np.ndarray) -> np.ndarray:
    """float32[T, 2]: velocity from streaming counts[T, C] through `step` from `init_state(1)`.

    Runs on one intra-op thread: a single bin's ops are far too small to split, and on a
    shared machine a second thread's synchronisation made steps 30x slower (measured).
    """
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(1)
    try:
        dev = _device(model)
        x = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32)).to(dev)
        out = torch.empty(x.shape[0], 2, dtype=torch.float32, device=dev)
        state = model.init_state(1)
        for i in range(x.shape[0]):
            y, state = model.step(x[i : i + 1], state)
            out[i] = y[0]
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return out.cpu().numpy()


@torch.inference_mode()
def forward_predict(model: StreamingDecoder, counts: np.ndarray) -> np.ndarray:
    """float32[T, 2]: `forward` over counts[T, C] as one cold-started sequence (== stream_predict)."""
    was_training = model.training
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32)).to(_device(model))
    y = model(x.unsqueeze(0))[0]
    model.train(was_training)
    return y.cpu().numpy()


def block_metrics(pred: np.ndarray, session: BinnedSession) -> dict:
    """R² (per component, equal-average headline, variance-weighted) + per-trial median / p5."""
    out = r2_scores(pred, session.velocity, session.valid)
    if session.trials:
        out.update(per_trial_r2(pred, session.velocity, session.valid, session.trial_of_bin()))
    return out


def stream_metrics(model: StreamingDecoder, session: BinnedSession) -> tuple[dict, np.ndarray]:
    """Metrics of `session` (usually a held-out block) streamed through `step`; and the predictions."""
    pred = stream_predict(model, session.counts)
    return block_metrics(pred, session), pred


def evaluate_artifact(path: str | Path, session: BinnedSession) -> dict:
    """Re-score an artifact on a whole session: THE definition `spikestream evaluate` prints.

    Exactly: the artifact is loaded on CPU (`models.artifact.load_artifact(path, "cpu")`,
    eval mode); `state = model.init_state(1)`; then for every bin t = 0 .. T-1 of the session,
    in order, with no warm-up, reset or skipped bin, `y_t, state = model.step(counts[t]
    as float32 [1, C], state)` in eager torch under `torch.inference_mode()`; the predictions
    float32[T, 2] are scored by `replay.scoring.r2_scores(pred, session.velocity,
    session.valid)` (float64; bins with NaN velocity or valid False excluded). The headline is
    `r2`, the equal average of the vx and vy R². Per-trial median / 5th percentile come from
    `replay.scoring.per_trial_r2` when the session has trials. The artifact's fallback
    (Wiener) decoder is scored the same way.

    A runtime replaying the same session at full speed through the torch eager backend
    computes the same predictions, so it must reproduce `r2` to float rounding (1e-6).
    """
    from models.artifact import load_artifact

    artifact = load_artifact(path, device="cpu")
    if session.n_channels != artifact.n_channels:
        raise ValueError(f"{path}: model expects {artifact.n_channels} channels but the session has "
                         f"{session.n_channels}")
    out = {"path": str(path), "model": artifact.config["model"]["name"], "n_bins": session.n_bins,
           "source": session.source,
           "channel_ids_match": list(artifact.config.get("channel_ids", [])) == session.unit_ids.tolist()}
    out["metrics"], _ = stream_metrics(artifact.model, session)
    if artifact.fallback is not None:
        out["fallback"] = {"model": artifact.config["fallback"]["name"],
                           "metrics": stream_metrics(artifact.fallback, session)[0]}
    return out
