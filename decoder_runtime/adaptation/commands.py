"""`spikestream adapt-fit`, and the `--adapt` options the runtime's commands share.

adapt-fit writes the latent reference the ``full`` method aligns to: a factor-analysis
model of the artifact's own training block, z-scored with the artifact's statistics. It
reads the data through `replay` (the artifact's provenance says which session and which
training block), never through `training`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from decoder_runtime.adaptation import METHODS, AdaptationChain, AdaptSettings, build_adapter
from decoder_runtime.adaptation.latent_align import fit_training_latent, save_latent
from decoder_runtime.adaptation.reference import TrainingReference
from models.artifact import Artifact, ArtifactError, load_artifact, update_config

console = Console()

AdaptOpt = Annotated[Optional[str], typer.Option(
    "--adapt", help=f"test-time adaptation: {' | '.join(METHODS)} (default: the artifact's config, else none)")]
AdaptTauOpt = Annotated[Optional[float], typer.Option(
    "--adapt-tau", help="running-normalisation time constant in seconds (default 60)")]


def adapter_from_options(artifact: Artifact, adapt: str | None, adapt_tau: float | None) -> AdaptationChain:
    """The chain for `--adapt/--adapt-tau` over the artifact's own adaptation settings."""
    return build_adapter(artifact, AdaptSettings.resolve(artifact.config, method=adapt, tau_s=adapt_tau))


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


def adapt_fit(
    artifact: Annotated[Path, typer.Argument(help="model artifact folder")],
    data: Annotated[Optional[Path], typer.Option("--data", help="training NWB (default: the artifact's provenance)")] = None,
    k: Annotated[int, typer.Option("--k", help="latent dimensions")] = 12,
    default: AdaptOpt = None,
    tau: AdaptTauOpt = None,
) -> None:
    """Fit the training latent that `--adapt full` aligns each day's data to, into the artifact.

    With --adapt / --adapt-tau, also store them as the artifact's default adaptation settings
    (what `serve` and `replay` use when not told otherwise).
    """
    try:
        art = load_artifact(artifact)
        info = fit_reference(art, data, k)
        if default is not None or tau is not None:
            stored = load_artifact(artifact).config.get("adaptation", {})
            settings = AdaptSettings.resolve({"adaptation": stored}, method=default, tau_s=tau)
            update_config(artifact, adaptation={**stored, "method": settings.method, "tau_s": settings.tau_s})
    except (ArtifactError, ValueError, OSError) as e:
        console.print(f"[red]adapt-fit: {e}[/red]")
        raise typer.Exit(1) from None
    console.print(f"{artifact}: latent reference k={info['k']} from {info['n_bins']} training bins of "
                  f"{info['source']} (mean shared variance per channel {info['mean_shared_variance']:.3f})")
    if default is not None or tau is not None:
        console.print(f"default adaptation: {settings.method}, tau {settings.tau_s:g} s")
