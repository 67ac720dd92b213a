"""Artifacts to benchmark without training anything.

A step's latency depends on the architecture, its sizes and the backend, never on the
values of the weights, so the bench builds each model at its default size with a fixed
seed (random init), installs normalisation statistics from the session it will stream
(so inputs and outputs have realistic scale), saves a real artifact and exports it, so
every backend runs exactly what it would run for a trained model. Reports say the
weights are untrained.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.artifact import load_artifact, save_artifact
from models.registry import MODEL_NAMES, build_model, model_class
from replay.session import BinnedSession

UNTRAINED_NOTE = ("weights are untrained (random init, fixed seed) with normalisation from the session; "
                  "step latency does not depend on weight values")


@dataclass(frozen=True)
class BenchArtifact:
    """An artifact folder and the label it carries in tables."""

    label: str  # e.g. "lstm" or "lstm[hidden=512]" or a trained artifact's model_id
    model: str  # registry name
    path: Path
    untrained: bool
    export_error: str | None = None  # why exports are missing, when they are


def importable_models(names: tuple[str, ...] = MODEL_NAMES) -> tuple[list[str], dict[str, str]]:
    """The registry's models whose modules import here, and why the others do not."""
    ok, missing = [], {}
    for name in names:
        try:
            model_class(name)
        except (ImportError, AttributeError) as e:
            missing[name] = f"{type(e).__name__}: {e}"
        else:
            ok.append(name)
    return ok, missing


def widen(counts: np.ndarray, n_channels: int, seed: int = 0) -> np.ndarray:
    """counts[T, C] -> counts[T, n_channels] drawn from the session's own channels.

    Larger arrays are simulated by re-using recorded channels (in a shuffled order), so
    the values stay realistic spike counts; latency only sees the shape.
    """
    t, c = counts.shape
    if n_channels <= c:
        return np.ascontiguousarray(counts[:, :n_channels])
    rng = np.random.default_rng(seed)
    cols = np.concatenate([np.arange(c), rng.integers(0, c, size=n_channels - c)])
    return np.ascontiguousarray(counts[:, rng.permutation(cols)])


def _set_normalization(model, counts: np.ndarray, velocity: np.ndarray | None) -> None:
    if velocity is not None and np.isfinite(velocity).any():
        v = velocity[np.isfinite(velocity).all(axis=1)]
        y_mean, y_std = v.mean(axis=0), v.std(axis=0)
    else:
        y_mean, y_std = np.zeros(2), np.ones(2)
    model.set_normalization(counts.mean(axis=0), counts.std(axis=0), y_mean, y_std)


def export(path: Path, backends: list[str] | None = None) -> str | None:
    """Export an artifact for the backends asked for, one format at a time; returns what failed.

    A backend named like an export format (torchscript, onnx) runs that file; None means all
    formats. A model that one exporter cannot express is still benchmarked on every backend
    that does not need that file, and the report says what was missing and why.
    """
    try:
        from training.export import FORMATS, export_artifact
    except ImportError as e:
        return f"training.export is not available ({e})"
    failed = []
    for fmt in (f for f in FORMATS if backends is None or f in backends):
        try:
            export_artifact(path, formats=(fmt,))
        except Exception as e:  # an exporter failure is reported per model, never fatal to the bench
            failed.append(f"{fmt}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return "; ".join(failed) or None


def build_untrained(
    out_dir: Path, model: str, session: BinnedSession, *, n_channels: int | None = None,
    hparams: dict | None = None, seed: int = 0, label: str | None = None, backends: list[str] | None = None,
) -> BenchArtifact:
    """Build, normalise, save and export one untrained model; returns where it lives."""
    counts = session.counts if n_channels is None else widen(session.counts, n_channels, seed)
    hparams = dict(hparams or {})
    label = label or (model + ("" if not hparams else "[" + ",".join(f"{k}={v}" for k, v in hparams.items()) + "]")
                      + ("" if n_channels is None else f"[C={n_channels}]"))
    torch.manual_seed(seed)
    net = build_model(model, counts.shape[1], **hparams).eval()
    _set_normalization(net, counts, session.velocity)
    folder = out_dir / re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")
    save_artifact(
        folder, net, channel_ids=np.arange(counts.shape[1]), bin_width=session.bin_width,
        provenance={"benchmark": UNTRAINED_NOTE, "session": session.source, "seed": seed},
    )
    return BenchArtifact(label=label, model=model, path=folder, untrained=True,
                         export_error=export(folder, backends))


def from_path(path: Path) -> BenchArtifact:
    """A user's (trained) artifact, checked by loading it once."""
    art = load_artifact(path)
    return BenchArtifact(label=art.model_id, model=art.config["model"]["name"], path=Path(path), untrained=False)
