"""PNG figures for the report: latency CDFs, per-bin latency over time, scaling curves.

Latencies span several decades (tens of µs to tens of ms in a stall), so every latency
axis is logarithmic and CDFs use a logit axis that gives the tail as much room as the median; the over-time plots draw each bin as a point so single spikes
(the jitter a rig feels) stay visible instead of being averaged into a line.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402


def _grid(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _cdf(ax: plt.Axes, us: np.ndarray, label: str) -> None:
    """Empirical CDF on a logit axis, so p50, p90, p99 and p99.9 sit evenly spaced and the tail shows."""
    x = np.sort(us)
    y = (np.arange(x.size) + 0.5) / x.size
    ax.plot(x, y, label=label, lw=1.3)
    ax.set_yscale("logit")
    ticks = [t for t in (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999) if 1 / x.size < 1 - t]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _by(rows: list[dict], field: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r[field]), []).append(r)
    return out


def step_plots(rows: list[dict], raw: dict[str, np.ndarray], out_dir: Path, deadlines_us,
               name: str = "step") -> list[Path]:
    """Per device: a CDF figure and an over-time figure, one panel per model, a line per backend.

    Files are NAME_cdf_DEVICE.png and NAME_over_time_DEVICE.png; a paced run's rows are
    titled with their pace.
    """
    paths = []
    for device, dev_rows in _by(rows, "device").items():
        models = _by(dev_rows, "model")
        tag = device.replace(":", "")
        fig, axes = _grid(len(models))
        for ax, (model, mrows) in zip(axes, models.items()):
            for r in mrows:
                _cdf(ax, raw[r["name"]] / 1e3, r["backend"])
            for d in deadlines_us:
                ax.axvline(d, color="grey", ls=":", lw=0.8)
            ax.set(xscale="log", xlabel="step latency (µs)", ylabel="fraction of bins ≤ x", title=_title(model, device, mrows))
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / f"{name}_cdf_{tag}.png"))
        fig, axes = _grid(len(models))
        for ax, (model, mrows) in zip(axes, models.items()):
            for r in mrows:
                us = raw[r["name"]] / 1e3
                ax.plot(np.arange(us.size), us, ".", ms=1.2, alpha=0.5, label=r["backend"])
            ax.set(yscale="log", xlabel="bin", ylabel="step latency (µs)", title=_title(model, device, mrows))
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8, markerscale=8)
        paths.append(_save(fig, out_dir / f"{name}_over_time_{tag}.png"))
    return paths


def _title(model: str, device: str, rows: list[dict]) -> str:
    pace = rows[0].get("pace_hz")
    return f"{model} on {device}" + (f" at {pace:g} Hz" if pace else "")


def scaling_plot(channel_rows: list[dict], width_rows: list[dict], out_dir: Path) -> list[Path]:
    """p50 and p99 against channel count and against width, log-log."""
    panels = [(rows, field) for rows, field in ((channel_rows, "channels"), (width_rows, "width")) if rows]
    if not panels:
        return []
    fig, axes = _grid(len(panels))
    for ax, (rows, field) in zip(axes, panels):
        x = [r[field] for r in rows]
        for stat in ("p50", "p99", "p99.9"):
            ax.plot(x, [r["summary"][stat] for r in rows], "o-", label=stat)
        r0 = rows[0]
        ax.set(xscale="log", yscale="log", ylabel="step latency (µs)",
               xlabel=field if field == "channels" else f"width ({r0['width_param']})",
               title=f"{r0['model_kind']} · {r0['backend']} on {r0['device']} ({r0['summary']['n']:,} bins each)")
        ax.set_xticks(x, [str(v) for v in x])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return [_save(fig, out_dir / "scaling.png")]


def distribution_plot(rows: list[dict], raw: dict[str, np.ndarray], out_dir: Path, name: str, title: str,
                      label: Callable[[dict], str]) -> list[Path]:
    """One CDF panel and one over-time panel for a small set of related measures (e2e, overhead)."""
    if not rows:
        return []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for r in rows:
        us = raw[r["name"]] / 1e3
        _cdf(ax1, us, label(r))
        ax2.plot(np.arange(us.size), us, ".", ms=1.2, alpha=0.5, label=label(r))
    ax1.set(xscale="log", xlabel="latency (µs)", ylabel="fraction of bins ≤ x", title=title)
    ax2.set(yscale="log", xlabel="bin", ylabel="latency (µs)", title=f"{title}, per bin")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7, markerscale=8)
    return [_save(fig, out_dir / f"{name}.png")]
