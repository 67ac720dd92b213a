"""The gradient training loop every network shares.

Train the way the model is used: each example is a contiguous chunk of the training block,
run from a zero state through `core_forward` exactly as a stream would be, with the first
`burn_in` bins unscored so the loss sees outputs made with a warmed-up state. The model
normalises its own input (`model.normalize`, training statistics installed beforehand),
augmentation acts on the z-scored counts, and the loss is the MSE against z-scored
velocity over scored, valid bins only.

AdamW, linear warm-up then cosine decay per optimiser step, gradient-norm clipping, and
early stopping on validation R² (the validation block run as one cold-started sequence,
which each model's tests prove equal to streaming it through `step`). The weights of the
best validation epoch are restored at the end.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from models.base import StreamingDecoder
from replay.scoring import r2_scores
from replay.session import BinnedSession
from training.augment import AugmentConfig, augment
from training.data import ChunkSampler, loss_mask
from training.metrics import forward_predict


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 16
    chunk_len: int = 160  # bins per training chunk (4 s at 25 ms), burn-in included
    burn_in: int = 32  # leading bins per chunk that carry state but are not scored (0.8 s)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05  # share of optimiser steps spent ramping the LR up
    min_lr_frac: float = 0.05  # cosine decays to this fraction of lr
    grad_clip: float = 1.0
    patience: int = 8  # epochs without a better validation R² before stopping
    seed: int = 0
    device: str = "cpu"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    history: list[dict]  # one record per epoch: epoch, train_loss, val_r2, lr, seconds
    best_epoch: int
    best_val_r2: float
    epochs_run: int
    seconds: float
    stopped_early: bool

    def to_dict(self) -> dict:
        return asdict(self)


EpochCallback = Callable[[dict], None]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _targets(session: BinnedSession, model: StreamingDecoder) -> tuple[np.ndarray, np.ndarray]:
    """z-scored velocity (0 where unscored) and the mask of bins allowed in the loss."""
    mask = loss_mask(session)
    y_mean = model.y_mean.cpu().numpy()
    y_std = model.y_std.cpu().numpy()
    y = np.where(mask[:, None], (np.nan_to_num(session.velocity) - y_mean) / y_std, 0.0)
    return y.astype(np.float32), mask


def chunk_batches(
    train: BinnedSession, model: StreamingDecoder, sampler: ChunkSampler, batch_size: int,
    rng: np.random.Generator,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """One epoch of (raw counts [B, L, C], z-scored velocity [B, L, 2], loss mask [B, L]).

    Reads only `train` (the training block itself), so nothing outside it can reach a batch.
    """
    y, valid = _targets(train, model)
    idx = sampler.epoch(rng)
    scored = sampler.scored()[None, :]
    dev = model.x_mean.device
    for i in range(0, len(idx), batch_size):
        sel = idx[i : i + batch_size]
        yield (
            torch.from_numpy(train.counts[sel]).to(dev),
            torch.from_numpy(y[sel]).to(dev),
            torch.from_numpy(valid[sel] & scored).to(dev),
        )


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1.0)


def _schedule(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warm = max(1, int(cfg.warmup_frac * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def validation_r2(model: StreamingDecoder, val: BinnedSession) -> float:
    """Headline R² of the validation block, cold-started (== streaming it through step)."""
    return r2_scores(forward_predict(model, val.counts), val.velocity, val.valid)["r2"]


def train_network(
    model: StreamingDecoder,
    train: BinnedSession,
    val: BinnedSession,
    cfg: TrainConfig,
    *,
    aux_loss: Callable[[], Tensor] | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train `model` (normalisation already installed) in place; returns its learning history.

    `aux_loss`, if given, is called after each forward and added to the loss (the RVQ
    commitment term). `on_epoch` receives each epoch's record (for progress display).
    """
    model.to(cfg.device)
    sampler = ChunkSampler((0, train.n_bins), cfg.chunk_len, cfg.burn_in)
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = math.ceil(len(sampler.epoch(np.random.default_rng(0))) / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, steps_per_epoch * cfg.epochs))
    history: list[dict] = []
    best = (-math.inf, 0, {k: v.detach().clone() for k, v in model.state_dict().items()})
    start = time.perf_counter()
    stopped_early = False
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        losses = []
        for x, y, mask in chunk_batches(train, model, sampler, cfg.batch_size, rng):
            pred = model.core_forward(augment(model.normalize(x), cfg.augment))
            loss = masked_mse(pred, y, mask)
            if aux_loss is not None:
                loss = loss + aux_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
        val_r2 = validation_r2(model, val)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_r2": val_r2,
                  "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        history.append(record)
        if np.isfinite(val_r2) and val_r2 > best[0]:
            best = (val_r2, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if on_epoch is not None:
            on_epoch(record)
        if not np.isfinite(record["train_loss"]):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {record['train_loss']})")
        if epoch - best[1] >= cfg.patience:
            stopped_early = True
            break
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(history=history, best_epoch=best[1], best_val_r2=float(best[0]),
                       epochs_run=len(history), seconds=time.perf_counter() - start,
                       stopped_early=stopped_early)
