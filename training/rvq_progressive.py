"""Progressive training of the RVQ codec decoder, the only way its codebooks stay alive.

Trained end to end from random codebooks, residual VQ collapses onto a handful of codes
(the research this builds on found so, and so does everyone who has trained one). So:

1. pre-train the encoder and velocity head with the quantiser bypassed;
2. initialise every codebook stage by k-means on the pre-trained encoder's outputs over the
   training block (stage s on the residual left by stages < s), streamed as one sequence
   from a cold start so the points are the ones the runtime will see;
3. fine-tune with the quantiser on (straight-through gradients, commitment loss, EMA
   codebook updates and dead-code revival inside the model).

The report carries the pre-trained encoder's own held-out R² (the ceiling quantisation is
measured against) and per-stage code utilisation / perplexity on the held-out block. A
collapsed codebook is a failed run, flagged as such, never a result.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from models.rvq import RVQDecoder
from replay.session import BinnedSession
from training.metrics import stream_metrics
from training.train import EpochCallback, TrainConfig, TrainResult, train_network

UTILISATION_TARGET = 0.5  # share of each stage's codes in use on held-out data
COLLAPSE_FRACTION = 0.1  # a stage using fewer than 10% of its codes (at least 2) has collapsed


@dataclass(frozen=True)
class RVQSchedule:
    finetune_epochs: int = 10
    finetune_lr_frac: float = 0.3  # fine-tuning LR as a fraction of pre-training LR
    kmeans_iters: int = 25

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _sequence(model: RVQDecoder, session: BinnedSession) -> torch.Tensor:
    return torch.from_numpy(session.counts).to(model.x_mean.device).unsqueeze(0)


def codebook_report(model: RVQDecoder, session: BinnedSession) -> dict:
    """Per-stage utilisation and perplexity of the codes chosen over `session`, with verdicts."""
    model.eval()
    usage = model.code_usage(_sequence(model, session))
    codes_used = [round(u * model.codes) for u in usage["utilisation"]]
    floor = max(2, math.ceil(COLLAPSE_FRACTION * model.codes))
    collapsed = [s for s, n in enumerate(codes_used) if n < floor]
    return {
        "utilisation": usage["utilisation"],
        "perplexity": usage["perplexity"],
        "codes_used": codes_used,
        "codes_per_stage": model.codes,
        "collapsed_stages": collapsed,
        "collapsed": bool(collapsed),
        "utilisation_target": UTILISATION_TARGET,
        "utilisation_target_met": all(u >= UTILISATION_TARGET for u in usage["utilisation"]),
    }


def train_rvq(
    model: RVQDecoder,
    train: BinnedSession,
    val: BinnedSession,
    test: BinnedSession,
    cfg: TrainConfig,
    schedule: RVQSchedule = RVQSchedule(),
    on_epoch: EpochCallback | None = None,
) -> tuple[TrainResult, dict]:
    """Pre-train, k-means initialise, fine-tune; returns the combined history and the RVQ report."""
    model.use_quantizer = False
    pre = train_network(model, train, val, cfg, on_epoch=on_epoch)
    encoder_metrics, _ = stream_metrics(model, test)

    model.eval()
    with torch.no_grad():
        outputs = model.encode(_sequence(model, train))
    model.init_codebooks_kmeans(outputs, iters=schedule.kmeans_iters, seed=cfg.seed)
    model.use_quantizer = True
    init_usage = codebook_report(model, train)

    def renumbered(record: dict) -> None:
        record.update(epoch=record["epoch"] + pre.epochs_run, phase="finetune",
                      seconds=record["seconds"] + pre.seconds)
        if on_epoch is not None:
            on_epoch(record)

    fine_cfg = replace(cfg, epochs=schedule.finetune_epochs, lr=cfg.lr * schedule.finetune_lr_frac,
                       seed=cfg.seed + 1)
    fine = train_network(model, train, val, fine_cfg, aux_loss=model.pop_aux_loss, on_epoch=renumbered)
    for r in pre.history:
        r["phase"] = "pretrain"
    result = TrainResult(
        history=pre.history + fine.history,
        best_epoch=fine.best_epoch + pre.epochs_run,
        best_val_r2=fine.best_val_r2,
        epochs_run=pre.epochs_run + fine.epochs_run,
        seconds=pre.seconds + fine.seconds,
        stopped_early=fine.stopped_early,
    )
    report = {
        "schedule": schedule.to_dict(),
        "pretrain": {"epochs_run": pre.epochs_run, "best_epoch": pre.best_epoch, "best_val_r2": pre.best_val_r2,
                     "seconds": pre.seconds},
        "encoder_test_r2": encoder_metrics["r2"],
        "encoder_test_metrics": encoder_metrics,
        "kmeans_init_train_usage": {k: init_usage[k] for k in ("utilisation", "perplexity")},
        "test_usage": codebook_report(model, test),
    }
    report["collapsed"] = report["test_usage"]["collapsed"]
    return result, report


def quantisation_gap(report: dict, test_r2: float) -> dict:
    """How far the quantised decoder's held-out R² falls below its own pre-trained encoder's."""
    gap = float(report["encoder_test_r2"] - test_r2)
    return {"r2_gap_to_encoder": gap, "within_0.02_of_encoder": bool(np.isfinite(gap) and gap <= 0.02)}
