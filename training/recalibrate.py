"""Closed-loop recalibration: a better decoder from a session's own record (ReFIT).

In a rig the first decoder comes from open-loop data; once the participant controls a cursor,
what they meant is known better than where the cursor went: toward the target. ReFIT
(Gilja et al. 2012) relabels the closed-loop bins with that intention
(replay.closed_loop_record.refit_labels) and trains again on them. Here:

- the record becomes a BinnedSession whose velocity is the labels and whose `valid` mask is
  the bins that carry one; it is split chronologically (train / val / test, 70/10/20, by
  time) with the same `training.data` code as every training run, and the Wiener filter and
  Kalman filter are fitted on its training block by the same `training.runs.prepare`;
- Wiener and Kalman parents are replaced by those refits: a closed-form fit has no use for
  its old weights. Our Kalman filter's state is velocity only (models/linear.py), so
  ReFIT-KF's second change, treating the cursor position as known exactly (zero position
  uncertainty), has nothing to act on: the position the participant sees enters only through
  the labels;
- networks are fine-tuned from the parent's weights with the same training loop
  (`training.train.train_network`, early stopping on the record's validation block); a few
  hundred seconds of closed loop are too little to learn a network from scratch. Their input
  normalisation becomes the record's (its training block's count statistics, as every model
  fitted here gets), so a drifted day is re-standardised and the runtime's adaptation, whose
  reference is the artifact's normalisation, starts from this day; the velocity
  normalisation stays the parent's (same units);
- held-out: the record's test block streamed through `step`, scored against the labels, for the
  new decoder and for the parent beside it; provenance names the record (path, sha256), the
  parent artifact and the label rule.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.artifact import load_artifact, save_artifact, sha256
from replay.closed_loop_record import (
    ClosedLoopRecord, RecordError, intention_labels, read_record, refit_labels,
)
from replay.session import BinnedSession
from training.baselines import BASELINES
from training.metrics import stream_metrics, stream_predict
from training.runs import jsonable, prepare
from training.train import TrainConfig, seed_everything, train_network

RULES = {
    "refit": "ReFIT (Gilja et al. 2012): decoded velocity rotated toward the target, speed kept; zero inside "
             "the target; first onset_skip_s after target onset, no-target and unanswered bins left out; "
             "then the decoder's speed kept too (one output gain, see speed_gain)",
    "refit-labels-only": "the ReFIT labels as in 'refit', without the output gain (the paper's recipe as is)",
    "intention": "the simulated participant's true command, shifted by its plan lead (a check only a "
                 "simulation allows; no rig has these labels)",
}
METHODS = tuple(RULES)


@dataclass(frozen=True)
class RecalibrationSpec:
    """What one recalibration does (the CLI's options)."""

    record: Path
    parent: Path
    out: Path
    method: str = "refit"
    onset_skip_s: float | None = None  # None: the record participant's visual delay
    successful_only: bool = False  # label only the bins of trials that ended in success
    epochs: int = 15  # fine-tuning epochs for networks (early stopping on the record's val block)
    lr: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown recalibration method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.onset_skip_s is not None and self.onset_skip_s < 0:
            raise ValueError(f"onset_skip_s must be >= 0, got {self.onset_skip_s}")


def label_session(rec: ClosedLoopRecord, spec: RecalibrationSpec, unit_ids: np.ndarray) -> tuple[BinnedSession, dict]:
    """The record as a training session labelled with intention, and counts of what was kept."""
    if rec.settings.get("task_settings", {}).get("task", "center-out") != "center-out":
        raise RecordError(f"{rec.path}: recalibration needs a center-out record (targets with a radius)")
    skip = rec.visual_delay_s if spec.onset_skip_s is None else spec.onset_skip_s
    if spec.method == "intention":
        labels, keep = intention_labels(rec.intention, rec.target, rec.plan_lead_bins)
    else:
        labels, keep = refit_labels(rec.decoded, rec.cursor, rec.target, rec.target_radius, rec.t,
                                    rec.trial_start, skip)
    to_target = np.isfinite(rec.target).all(axis=1)
    answered = np.isfinite(rec.decoded).all(axis=1)
    stats = {"bins": int(rec.counts.shape[0]), "no_target": int(np.count_nonzero(~to_target)),
             "unanswered": int(np.count_nonzero(to_target & ~answered)),
             "skipped_after_onset": int(np.count_nonzero(to_target & answered & ~keep)),
             "onset_skip_s": skip, "target_radius": rec.target_radius}
    failed = 0
    if spec.successful_only:
        for start, stop, outcome in zip(rec.trial_start, rec.trial_stop, rec.outcome):
            if outcome != "success":
                span = (rec.t >= start - 1e-9) & (rec.t < stop - 1e-9)
                failed += int(np.count_nonzero(keep & span))
                keep &= ~span
        labels[~keep] = np.nan
    bw = rec.bin_width
    session = BinnedSession(counts=rec.counts, t=rec.t + bw, bin_width=bw, unit_ids=np.asarray(unit_ids),
                            velocity=labels.astype(np.float32), valid=keep, source=str(rec.path),
                            meta={"closed_loop_record": str(rec.path)})
    inside = keep & rec.on_target()
    stats.update(failed_trial_bins_dropped=failed, labelled=int(keep.sum()), zeroed_on_target=int(inside.sum()))
    return session, stats


def speed_gain(model, train: BinnedSession, rec: ClosedLoopRecord, block: tuple[int, int]) -> float:
    """The output gain that gives the retrained decoder the labels' speed on the training block.

    ReFIT keeps the decoded speed in its labels, but a decoder fitted to noisy labels regresses
    toward zero: on our records a refitted decoder was 25-30 % slower than the labels on the
    very bins it was fitted on, and each round compounded it (control got slower round by
    round). One scalar on the output restores the speed ReFIT meant to keep: the mean label
    speed over the labelled bins outside the target, divided by the decoder's there."""
    pred = stream_predict(model, train.counts, train.t, train.bin_width)
    a, b = block
    outside = train.valid & ~rec.on_target()[a:b]
    got = float(np.linalg.norm(pred[outside], axis=1).mean()) if outside.any() else 0.0
    want = float(np.linalg.norm(train.velocity[outside], axis=1).mean()) if outside.any() else 0.0
    return want / got if got > 0 and want > 0 else 1.0


def recalibrate(spec: RecalibrationSpec, on_epoch=None) -> dict:
    """Write the recalibrated artifact to `spec.out`; returns its summary (held-out, provenance)."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # as `train`: more intra-op threads made training slower on shared CPUs
    parent = load_artifact(spec.parent)
    rec = read_record(spec.record)
    if rec.counts.shape[1] != parent.n_channels:
        raise RecordError(f"{spec.record}: {rec.counts.shape[1]} channels, but {spec.parent} decodes "
                          f"{parent.n_channels}")
    session, label_stats = label_session(rec, spec, np.asarray(parent.config["channel_ids"]))
    kind = parent.config["model"]["name"]
    provenance = jsonable({  # population_seed first: closed-loop reads the first one it finds
        "population_seed": rec.settings.get("population_seed"),
        "kind": "closed-loop recalibration", "method": spec.method,
        "rule": RULES[spec.method],
        "record": {"path": str(Path(spec.record).resolve()), "sha256": sha256(Path(spec.record)),
                   "summary": {k: rec.summary.get(k) for k in ("model_id", "mode", "success_rate",
                                                                 "time_to_target_s", "n_trials")}},
        "parent": {"path": str(Path(spec.parent).resolve()), "model_id": parent.model_id,
                   "provenance": parent.config.get("provenance")},
        "labels": label_stats, "spec": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(spec).items()},
    })
    shared = prepare(session, provenance)
    test = shared.blocks["test"]
    parent_test, _ = stream_metrics(parent.model.cpu().eval(), test)
    training: dict = {"split": shared.split.to_dict()}
    if kind in BASELINES:
        model = shared.wiener if kind == "wiener" else shared.kalman
        training["fit"] = shared.baseline_details[kind]
    else:
        model = parent.model
        x_mean, x_std, _, _ = shared.norm_args  # this day's input statistics; the velocity units stay
        model.set_normalization(x_mean, x_std, model.y_mean.cpu().numpy(), model.y_std.cpu().numpy())
        seed_everything(spec.seed)
        cfg = TrainConfig(epochs=spec.epochs, lr=spec.lr, seed=spec.seed, patience=max(3, spec.epochs // 3))
        result = train_network(model, shared.blocks["train"], shared.blocks["val"], cfg,
                               aux_loss=getattr(model, "pop_aux_loss", None), on_epoch=on_epoch)
        training.update(config=cfg.to_dict(), epochs_run=result.epochs_run, best_epoch=result.best_epoch,
                        history=result.history, val_r2_best=result.best_val_r2)
    model = model.cpu().eval()
    gain = speed_gain(model, shared.blocks["train"], rec, shared.split.train) if spec.method == "refit" else 1.0
    if gain != 1.0:
        model.set_normalization(model.x_mean.numpy(), model.x_std.numpy(), model.y_mean.numpy() * gain,
                                model.y_std.numpy() * gain)
    training["output_gain"] = gain
    new_test, _ = stream_metrics(model, test)
    training["seconds"] = time.perf_counter() - t0
    metrics = {"test": new_test, "parent_test": parent_test, "baselines_test": shared.baseline_metrics,
               "definition": "the record's test block (last 20 %) streamed through step from init_state(1), "
                             "scored against the intention labels on labelled bins"}
    save_artifact(spec.out, model, channel_ids=parent.config["channel_ids"], bin_width=parent.bin_width,
                  fallback=None if kind == "wiener" else shared.wiener, provenance=provenance,
                  metrics=jsonable(metrics), training=jsonable(training))
    return jsonable({"model": kind, "out": str(spec.out), "parent": str(spec.parent), "record": str(spec.record),
                     "labels": label_stats, "output_gain": gain, "test_r2": new_test["r2"],
                     "parent_test_r2": parent_test["r2"], "seconds": training["seconds"],
                     "split": shared.split.to_dict()})
