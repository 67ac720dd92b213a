"""Test-time adaptation without labels, behind the engine's adapt step.

`build_adapter(artifact, AdaptSettings.resolve(artifact.config, method="full"))` returns an
`AdaptationChain`; the engine calls `process(counts)` before each decoder step and
`observe(velocity)` after it. Methods, cheapest first:

- ``none``: pass-through;
- ``health``: mask dead / stuck / noisy channels to the training mean;
- ``norm``: per-channel exponential running normalisation onto training statistics;
- ``norm+health``: both;
- ``full``: both, plus latent-space alignment to the training latent (needs the reference
  written by ``spikestream adapt-fit``).

Any method with a learned stage (norm, latent) runs under the output guard unless turned off.
Settings come from the artifact's ``config["adaptation"]`` and are overridden by the CLI.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from decoder_runtime.adaptation.chain import AdaptationChain, AdaptationEvent
from decoder_runtime.adaptation.channel_health import ChannelHealth
from decoder_runtime.adaptation.guard import OutputGuard
from decoder_runtime.adaptation.latent_align import LatentAlign, LatentModel, load_latent
from decoder_runtime.adaptation.reference import TrainingReference
from decoder_runtime.adaptation.running_norm import RunningNorm
from models.artifact import Artifact, ArtifactError

METHODS: dict[str, tuple[str, ...]] = {
    "none": (),
    "health": ("health",),
    "norm": ("norm",),
    "norm+health": ("health", "norm"),
    "full": ("health", "norm", "latent"),
}
REFERENCE_KEYS = ("latent",)  # entries of config["adaptation"] that are data, not settings


@dataclass(frozen=True)
class AdaptSettings:
    """Every knob of the chain, with the defaults the drift benchmark was run with."""

    method: str = "none"
    tau_s: float = 60.0  # running-normalisation time constant, seconds
    guard: bool = True  # watch the output and roll learned stages back
    noisy_ratio: float = 6.0  # short-term variance / training variance that counts as noisy
    stuck_s: float = 1.0
    p_dead: float = 1e-20
    latent_period_s: float = 30.0  # how often the latent is refitted
    latent_window_blocks: int = 4  # refit on this many periods of data
    impute: bool = True  # latent stage fills masked channels from the latent
    threaded: bool = True  # latent fits in a worker thread (False: inline, deterministic)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown adaptation method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not self.tau_s > 0:
            raise ValueError(f"adaptation time constant must be > 0 s, got {self.tau_s}")

    @classmethod
    def resolve(cls, config: dict | None = None, **overrides) -> "AdaptSettings":
        """Artifact defaults (config["adaptation"]), then the caller's non-None overrides."""
        known = {f.name for f in fields(cls)}
        stored = dict((config or {}).get("adaptation", {}))
        unknown = set(stored) - known - set(REFERENCE_KEYS)
        if unknown:
            raise ArtifactError(f"config['adaptation'] has unknown settings {sorted(unknown)}; known: {sorted(known)}")
        base = cls(**{k: v for k, v in stored.items() if k in known})
        bad = set(overrides) - known
        if bad:
            raise ValueError(f"unknown adaptation settings {sorted(bad)}")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def build_chain(ref: TrainingReference, settings: AdaptSettings, latent: LatentModel | None = None) -> AdaptationChain:
    """The chain for `settings` on a decoder whose training statistics are `ref`."""
    parts = METHODS[settings.method]
    health = ChannelHealth(ref, p_dead=settings.p_dead, stuck_s=settings.stuck_s,
                           noisy_ratio=settings.noisy_ratio) if "health" in parts else None
    norm = RunningNorm(ref, tau_s=settings.tau_s) if "norm" in parts else None
    align = None
    if "latent" in parts:
        if latent is None:
            raise ArtifactError(
                f"adaptation method {settings.method!r} needs the artifact's latent reference; "
                "run `spikestream adapt-fit ARTIFACT --data TRAINING.nwb` first")
        align = LatentAlign(ref, latent, period_s=settings.latent_period_s,
                            window_blocks=settings.latent_window_blocks, impute=settings.impute,
                            threaded=settings.threaded)
    learned = [s for s in (norm, align) if s is not None]
    guard = OutputGuard(ref, learned) if learned and settings.guard else None
    return AdaptationChain(ref, health=health, norm=norm, latent=align, guard=guard)


def build_adapter(artifact: Artifact, settings: AdaptSettings) -> AdaptationChain:
    """The chain for an artifact: training statistics and latent reference read from it."""
    ref = TrainingReference.from_artifact(artifact)
    latent = load_latent(artifact) if "latent" in METHODS[settings.method] else None
    return build_chain(ref, settings, latent)


__all__ = [
    "METHODS", "AdaptSettings", "AdaptationChain", "AdaptationEvent", "TrainingReference",
    "build_adapter", "build_chain",
]
