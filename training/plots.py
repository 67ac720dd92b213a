"""The two pictures saved with every run: how training went, and what the decoder outputs.

Rendered with matplotlib's Agg backend (no display needed, safe in CI and over ssh).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

LEARNING_CURVE = "learning_curve.png"
VELOCITY = "velocity.png"


def learning_curve(history: list[dict], path: Path, title: str, best_epoch: int | None = None) -> Path:
    """Training loss and validation R² per epoch (one figure, two axes)."""
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(epochs, [r["train_loss"] for r in history], color="tab:blue", label="train loss (z-MSE)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["val_r2"] for r in history], color="tab:orange", marker=".", label="validation R²")
    ax2.set_ylabel("validation R²", color="tab:orange")
    if best_epoch:
        ax2.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def velocity_trace(
    t: np.ndarray, pred: np.ndarray, true: np.ndarray, path: Path, title: str, bin_width: float,
    seconds: float = 20.0,
) -> Path:
    """Predicted vs true vx and vy over the first `seconds` of a held-out block."""
    n = min(len(t), max(1, int(round(seconds / bin_width))))
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), dpi=110, sharex=True)
    for j, (ax, comp) in enumerate(zip(axes, ("vx", "vy"))):
        ax.plot(t[:n], true[:n, j], color="black", linewidth=1.0, label="true")
        ax.plot(t[:n], pred[:n, j], color="tab:red", linewidth=1.0, alpha=0.8, label="decoded (streamed)")
        ax.set_ylabel(comp)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (s)")
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
