"""Fitting the latent reference that `--adapt full` aligns each day's data to.

A factor-analysis model of the artifact's own training block, z-scored with the artifact's
statistics. The data is read through `replay` (the artifact's provenance says which session
and which training block), never through `training`.
"""
from __future__ import annotations

from pathlib import Path

from decoder_runtime.adaptation.latent_align import fit_training_latent, save_latent
from decoder_runtime.adaptation.reference import TrainingReference
from models.artifact import Artifact, ArtifactError


def training_counts(artifact: Artifact, data: Path | None):
    """Counts of the artifact's training block: from `data`, or the session its provenance names."""
    from replay import load_session

    prov = artifact.config.get("provenance", {})
    if data is not None:
        session = load_session(data, bin_width=artifact.bin_width)
    elif prov.get("kind") == "simulated":
        session = load_session(None, task=prov["task"], seed=prov["sim_seed"], bin_width=artifact.bin_width)
    elif prov.get("kind") == "nwb":
        session = load_session(Path(prov["path"]), bin_width=artifact.bin_width)
    else:
        raise ArtifactError(f"{artifact.path}: provenance does not name its training data; pass --data FILE.nwb")
    if session.n_channels != artifact.n_channels:
        raise ArtifactError(f"{session.source}: {session.n_channels} channels, artifact has {artifact.n_channels}")
    trained_on = prov.get("meta", {}).get("notes")
    if data is None and trained_on is not None and session.meta.get("notes") != trained_on:
        raise ArtifactError(f"{session.source} is not the session {artifact.path} was trained on (its NWB notes "
                            "differ: re-simulated by a newer simulator?); pass --data or retrain")
    split = prov.get("split")
    a, b = split["train"] if split else (0, session.n_bins)
    return session.counts[a:b], {"source": session.source, "bins": [int(a), int(b)]}


def fit_reference(artifact: Artifact, data: Path | None = None, k: int = 12) -> dict:
    """Fit and store the latent reference; returns what was recorded in the config."""
    counts, where = training_counts(artifact, data)
    latent = fit_training_latent(counts, TrainingReference.from_artifact(artifact), k=k)
    shared = (latent.loadings**2).sum(1) / ((latent.loadings**2).sum(1) + latent.psi)
    info = {**where, "n_bins": int(counts.shape[0]), "mean_shared_variance": float(shared.mean())}
    save_latent(artifact.path, latent, info)
    return {"k": k, **info}
