"""Predictions over a block of bins and the metrics reported for them.

Two ways to predict, one number:

- `stream_predict` runs the model through the runtime's own per-bin core
  (`decoder_runtime.core.BinCore`: validate -> adapt -> step -> observe, the code a session
  runs), with the eager torch backend from `init_state(1)`, one `step` per bin in order,
  float32. Every held-out metric in an artifact and every `spikestream evaluate` figure
  comes from it.
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


def stream_predict(model: StreamingDecoder, counts: np.ndarray, t: np.ndarray | None = None,
                   bin_width: float = 0.025) -> np.ndarray:
    """float32[T, 2]: velocity from streaming counts[T, C] through the runtime's core from `init_state(1)`.

    `t` (bin end times, s) lets the core see a session's gaps exactly as a replay does; without
    it the bins are consecutive.

    Runs on one intra-op thread: a single bin's ops are far too small to split, and on a
    shared machine a second thread's synchronisation made steps 30x slower (measured).
    """
    from decoder_runtime.assemble import offline_core
    from decoder_runtime.backends.torch_eager import TorchBackend
    from decoder_runtime.core import decode_offline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backend = TorchBackend.for_module(model, device=str(_device(model)))
        core = offline_core(backend, model.x_mean.cpu().numpy(), period=bin_width)
        vel, _, _ = decode_offline(core, np.ascontiguousarray(counts, dtype=np.float32), t)
    finally:
        torch.set_num_threads(threads)
    return vel


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
    pred = stream_predict(model, session.counts, session.t, session.bin_width)
    return block_metrics(pred, session), pred


def evaluate_artifact(path: str | Path, session: BinnedSession) -> dict:
    """Re-score an artifact on a whole session: THE definition `spikestream evaluate` prints.

    Exactly: the artifact is loaded on CPU (`models.artifact.load_artifact(path, "cpu")`,
    eval mode); every bin t = 0 .. T-1 of the session goes, in order, with no warm-up, reset
    or skipped bin, through the runtime's per-bin core (`decoder_runtime.core.BinCore`:
    validation, no adaptation, then `y_t, state = model.step(counts[t] as float32 [1, C],
    state)` from `init_state(1)` in eager torch under `torch.inference_mode()`); the predictions
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
