"""The one place a `RuntimeConfig` becomes running parts: model, core, source, outputs, engine.

Everything that builds a decoder session goes through here: the CLI (`serve`, `replay`),
the tests, the benchmarks and the closed-loop task (`open_runtime`), and offline evaluation
(`offline_core`: the same `BinCore` without a clock). All slow work (loading and hashing
the artifact, backend warm-up, binding sockets, resolving the LSL stream, creating the
record) is done before the first bin. Parts are opened in the order that loses nothing: the
publisher is bound (and, if asked, a subscriber awaited) before the source is opened, so a
source that streams as soon as it opens loses no message; on the way out the record is
closed with the run's summary, then the sockets and the source.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from decoder_runtime.adaptation.base import Adapter
from decoder_runtime.config import AdaptConfig, RuntimeConfig
from decoder_runtime.core import BinCore
from decoder_runtime.engine import Engine, Output, RunResult
from decoder_runtime.stepping import GuardedStepper, InlineStepper
from decoder_runtime.validate import Validator
from decoder_runtime.warm import BinWaiter, WarmError, apply_process

if TYPE_CHECKING:
    from decoder_runtime.backends.base import Backend
    from decoder_runtime.sources import Source
    from models.artifact import Artifact
    from replay.session import BinnedSession


class AssemblyError(RuntimeError):
    """A session that cannot be built as described (artifact, backend, source, socket, file)."""


def load_model(cfg: RuntimeConfig) -> tuple["Artifact", "Backend", str]:
    """The verified artifact, its warmed-up backend and the backend's resolved name."""
    from decoder_runtime.backends import BackendUnavailable, default_backend, make_backend
    from models.artifact import ArtifactError, load_artifact

    m = cfg.model
    try:
        artifact = load_artifact(m.artifact)
        kind = default_backend(m.device, artifact) if m.backend == "auto" else m.backend
        return artifact, make_backend(artifact, kind, m.device, m.threads), kind
    except (ArtifactError, BackendUnavailable) as e:
        raise AssemblyError(str(e)) from None


def make_adapter(artifact: "Artifact", adapt: AdaptConfig, *, threaded: bool = True) -> Adapter:
    """The adaptation chain (artifact defaults, overridden by `adapt`), or the pass-through."""
    from decoder_runtime.adaptation import AdaptSettings, build_adapter
    from models.artifact import ArtifactError

    try:
        settings = AdaptSettings.resolve(artifact.config, method=adapt.method, tau_s=adapt.tau_s, threaded=threaded)
        return Adapter() if settings.method == "none" else build_adapter(artifact, settings)
    except (ArtifactError, ValueError) as e:
        raise AssemblyError(str(e)) from None


def make_core(artifact: "Artifact", backend: "Backend", cfg: RuntimeConfig,
              adapter: Adapter | None = None) -> tuple[BinCore, str]:
    """validate -> adapt -> step core for `artifact` under `cfg`, and a note on its fallback."""
    from decoder_runtime.fallback import make_fallback

    fallback, note = make_fallback(artifact)
    v = cfg.validation
    validator = Validator(artifact.n_channels, artifact.bin_width, artifact_fill(artifact), v.bad_bin,
                          None if v.late_ms is None else v.late_ms / 1e3)
    model_vel = np.full((1, 2), np.nan, dtype=np.float32)  # replaced by the engine's log
    d = cfg.deadline
    stepper = (GuardedStepper(backend, model_vel, artifact.n_channels, d.max_backlog, d.answer_ns, d.handoff_spin_us)
               if d.bounded
               else InlineStepper(backend, model_vel))
    return BinCore(validator, stepper, adapter=adapter, fallback=fallback, on_gap=v.on_gap), note


def offline_core(backend: "Backend", fill: np.ndarray, period: float, adapter: Adapter | None = None) -> BinCore:
    """The session's core for offline decoding: inline step (no deadline), no fallback needed.

    Offline bins are never late, so a deadline could only add nondeterminism; everything
    else (validation, adaptation, the step, gap handling) is the session's own code.
    `fill` is the training mean counts (the artifact's normalization.x_mean).
    """
    fill = np.asarray(fill, dtype=np.float32)
    validator = Validator(fill.shape[0], period, fill, "impute")
    return BinCore(validator, InlineStepper(backend, np.full((1, 2), np.nan, np.float32)), adapter=adapter)


def artifact_fill(artifact: "Artifact") -> np.ndarray:
    """The counts a bad channel is imputed with: the artifact's training mean."""
    return np.asarray(artifact.config["normalization"]["x_mean"], dtype=np.float32)


def _aligned(session: "BinnedSession", artifact: "Artifact", say: Callable[[str], None]) -> "BinnedSession":
    """The session with its units in the artifact's channel order (by unit id), or a clear refusal."""
    from decoder_runtime.channels import align_session
    from decoder_runtime.sources import SourceError

    try:
        session, note = align_session(session, artifact.config["channel_ids"])
    except SourceError as e:
        raise AssemblyError(str(e)) from None
    say(note)
    return session


def open_source(cfg: RuntimeConfig, artifact: "Artifact", session: "BinnedSession | None" = None) -> "Source":
    """The source the config names: an LSL inlet, a paced replay of `session`, or a replay via LSL."""
    from decoder_runtime.sources import SourceError
    from decoder_runtime.sources.lsl import LSLSource
    from decoder_runtime.sources.lsl_replay import LSLReplaySource
    from decoder_runtime.sources.replay import ReplaySource
    from replay.pacing import parse_speed

    s = cfg.source
    try:
        if s.kind == "lsl":
            return LSLSource(n_channels=artifact.n_channels, period=artifact.bin_width, name=s.lsl_name,
                             type=s.lsl_type, source_id=s.source_id, hostname=s.hostname,
                             resolve_timeout_s=s.resolve_timeout_s, channel_ids=artifact.config.get("channel_ids"))
        if session is None:
            raise AssemblyError("a replay source needs the session to replay")
        if s.via_lsl:
            return LSLReplaySource(s.nwb, session.n_bins, artifact.n_channels, artifact.bin_width, s.speed,
                                   channel_ids=artifact.config.get("channel_ids"))
        return ReplaySource.from_session(session, parse_speed(s.speed))
    except SourceError as e:
        raise AssemblyError(str(e)) from None


def _outputs(cfg: RuntimeConfig, artifact: "Artifact", stack: ExitStack, say: Callable[[str], None]) -> list:
    from decoder_runtime.publish import Publisher, PublishError, is_loopback

    o = cfg.output
    outs: list[Output] = []
    if o.zmq != "none":
        try:
            pub = Publisher(o.zmq, allow_remote=o.allow_remote, curve_secret=o.curve_secret and Path(o.curve_secret),
                            curve_clients=o.curve_clients and Path(o.curve_clients))
        except PublishError as e:
            raise AssemblyError(str(e)) from None
        stack.callback(pub.close)
        if not is_loopback(o.zmq) and o.curve_secret is None:
            say(f"warning: publishing on {o.zmq} without CURVE: anyone who can reach it can read the velocities")
        if o.wait_subscriber_s > 0 and not pub.wait_for_subscriber(o.wait_subscriber_s):
            say(f"no subscriber within {o.wait_subscriber_s:g} s; publishing anyway")
        outs.append(pub)
    if o.lsl_out:
        from decoder_runtime.lsl_out import VelocityOutlet
        from decoder_runtime.record import velocity_unit

        outlet = VelocityOutlet(o.lsl_out, model_id=artifact.model_id, velocity_unit=velocity_unit(artifact.config))
        stack.callback(outlet.close)
        outs.append(outlet)
    return outs


def _status(outputs: list, artifact: "Artifact", kind: str, cfg: RuntimeConfig, settings: dict,
            adapter: Adapter) -> Callable[[int], None] | None:
    """The once-a-second `status` message on the ZeroMQ socket (decoder_runtime.status), if publishing."""
    from decoder_runtime.publish import Publisher
    from decoder_runtime.status import TOPIC, StatusReporter
    from models.artifact import WEIGHTS

    pub = next((o for o in outputs if isinstance(o, Publisher)), None)
    if pub is None:
        return None
    return StatusReporter(lambda body: pub.send(body, TOPIC), model=artifact.model_id, backend=kind,
                          device=cfg.model.device, artifact_sha256=artifact.config.get("files", {}).get(WEIGHTS, ""),
                          code=settings["code_version"], source=settings["source"], adapter=adapter).tick


@dataclass
class Runtime:
    """A built session: run it once; its record is closed with `summary` when the context exits."""

    config: RuntimeConfig
    artifact: "Artifact"
    backend_kind: str
    engine: Engine
    settings: dict  # what the record stores about this run
    session: "BinnedSession | None" = None  # a replayed session, its units in the artifact's channel order
    summary: dict = field(default_factory=lambda: {"error": "the run ended abnormally"})

    def run(self, stop=None) -> RunResult:
        return self.engine.run(stop)

    def describe(self) -> str:
        s = self.settings
        d = self.config.deadline
        return (f"{self.artifact.model_id} on {self.backend_kind}/{self.config.model.device}; deadline "
                f"{f'{d.deadline_ms:g} ms' if d.bounded else 'none'}; fallback: {s['fallback']}; adapt: {s['adapt']}; "
                f"publishing on {self.config.output.zmq}"
                + (f" and LSL stream {self.config.output.lsl_out!r}" if self.config.output.lsl_out else "")
                + f"; keep-warm {'on' if self.config.warm.keep_warm else 'off'}"
                + (f"; recording to {self.config.output.record}" if self.config.output.record else ""))


@contextmanager
def open_runtime(cfg: RuntimeConfig, *, command: str, session: "BinnedSession | None" = None,
                 source: "Source | None" = None, backend: "Backend | None" = None,
                 extra_outputs: Sequence[Output] = (), on_event: Callable[[str], None] | None = None,
                 say: Callable[[str], None] = print) -> Iterator[Runtime]:
    """Build the session `cfg` describes (a given source/backend replaces the configured one)."""
    from decoder_runtime.record import SessionRecorder
    from models.artifact import code_version

    if backend is None:
        artifact, backend, kind = load_model(cfg)
    else:
        from models.artifact import load_artifact

        artifact, kind = load_artifact(cfg.model.artifact), backend.name
    if session is not None:
        session = _aligned(session, artifact, say)
    adapter = make_adapter(artifact, cfg.adapt)
    core, fallback_note = make_core(artifact, backend, cfg, adapter)
    with ExitStack() as stack:
        outputs = _outputs(cfg, artifact, stack, say) + list(extra_outputs)
        if source is None:
            source = open_source(cfg, artifact, session)
        stack.callback(source.close)
        settings = {"command": command, "argv": sys.argv, "config": cfg.to_dict(), "model_id": artifact.model_id,
                    "backend": kind, "fallback": fallback_note, "adapt": getattr(adapter, "name", "none"),
                    "source": source.describe(), "code_version": code_version(), "python": sys.version.split()[0],
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        recorder = None
        runtime = None
        if cfg.output.record is not None:
            try:
                recorder = SessionRecorder(cfg.output.record, artifact.n_channels, artifact_config=artifact.config,
                                           settings=settings, t0_ns=time.monotonic_ns(), block=cfg.flush_every,
                                           description=f"spikestream {command}: {artifact.model_id} on {kind}",
                                           subject=None if session is None else session.meta.get("subject"))
            except OSError as e:
                raise AssemblyError(f"cannot create the record {cfg.output.record}: {e}") from None
            stack.callback(lambda: recorder.close(runtime.summary if runtime else None,
                                                  runtime.engine.events if runtime else []))
        status = _status(outputs, artifact, kind, cfg, settings, adapter)
        try:
            for note in apply_process(cfg.warm):  # pinning and priority, inherited by the step's worker
                say(note)
        except WarmError as e:
            raise AssemblyError(str(e)) from None
        engine = Engine(source, core, cfg, model_id=artifact.model_id, outputs=outputs, recorder=recorder,
                        on_event=on_event, between_bins=status, waiter=BinWaiter(cfg.warm))
        runtime = Runtime(cfg, artifact, kind, engine, settings, session)
        yield runtime
