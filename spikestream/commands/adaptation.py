"""`spikestream adapt-fit`, and the `--adapt` options the runtime's commands share.

The fit itself is `decoder_runtime.adaptation.fit.fit_reference`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

# Written out so `--help` needs no heavy import (tests/test_cli.py checks it against the library).
METHODS = ("none", "health", "norm", "norm+health", "full")

console = Console()

AdaptOpt = Annotated[Optional[str], typer.Option(
    "--adapt", help=f"test-time adaptation: {' | '.join(METHODS)} (default: the artifact's config, else none)")]
AdaptTauOpt = Annotated[Optional[float], typer.Option(
    "--adapt-tau", help="running-normalisation time constant in seconds (default 60)")]


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
    from decoder_runtime.adaptation import AdaptSettings
    from decoder_runtime.adaptation.fit import fit_reference
    from models.artifact import ArtifactError, load_artifact, update_config

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
