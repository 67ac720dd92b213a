"""One typed description of a decoding session: where bins come from, which model runs them
how, what happens to bad bins, adaptation, the deadline, and where results go.

`spikestream serve/replay` build it from their options (over `--config session.toml` when
given), the assembler (`decoder_runtime.assemble`) builds the running engine from it alone,
and it is written whole into every session record, so a record says exactly how it was made
and `--config` can run it again. Every field is checked here, once, so a bad value is one
clear `ConfigError` before anything is loaded, whichever way the config was made.

TOML layout (every table and key optional; defaults below):

    max_bins = 20000
    [source]     kind = "lsl" | "replay", lsl_name, lsl_type, source_id, hostname, resolve_timeout_s,
                 nwb (replay file; absent: the built-in session), speed ("1", "10", "max"), via_lsl
    [model]      artifact, backend ("auto"), device ("cpu"), threads
    [validation] bad_bin ("impute" | "hold"), late_ms, on_gap ("reset" | "keep")
    [adapt]      method (none|health|norm|norm+health|full; absent: the artifact's own), tau_s
    [deadline]   deadline_ms (10; 0 = step inline, unbounded; else inline under a guard thread), reserve_us,
                 max_backlog, handoff_spin_us (500, after an overrun; 0 = loop and worker sleep on queues:
                 decoder_runtime.spin)
    [output]     zmq ("tcp://127.0.0.1:5555" | "none"), allow_remote, curve_secret, curve_clients,
                 record (NWB path), lsl_out (LSL stream name), wait_subscriber_s
    [warm]       keep_warm (true), lead_us (1000), spin_us, pin_cpus ([1] or [0, 1]), realtime, freeze_gc, repeat,
                 busy_wait (false)
                 (decoder_runtime.warm: how the loop waits for the next bin at real pace)
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from decoder_runtime.warm import WarmSettings

DEFAULT_ZMQ = "tcp://127.0.0.1:5555"


class ConfigError(ValueError):
    """A run description that cannot be run; the message names the field and the problem."""


def _positive(name: str, value: float | None, *, allow_zero: bool = False, optional: bool = True) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value < 0 if allow_zero else value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class SourceConfig:
    kind: str = "lsl"
    lsl_name: str | None = None
    lsl_type: str | None = None
    source_id: str | None = None
    hostname: str | None = None
    resolve_timeout_s: float = 10.0
    nwb: str | None = None
    speed: str = "1"
    via_lsl: bool = False

    def __post_init__(self) -> None:
        _choice("source.kind", self.kind, ("lsl", "replay"))
        _positive("source.resolve_timeout_s", self.resolve_timeout_s)
        if self.kind == "lsl" and not (self.lsl_name or self.lsl_type or self.source_id):
            raise ConfigError("an LSL source needs source.lsl_name, lsl_type or source_id (--lsl-name ...)")
        from replay.pacing import parse_speed

        try:
            parse_speed(self.speed)
        except ValueError as e:
            raise ConfigError(f"source.speed: {e}") from None


@dataclass(frozen=True)
class ModelConfig:
    artifact: str = ""
    backend: str = "auto"
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.artifact:
            raise ConfigError("model.artifact is required: the artifact folder to decode with")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"model.threads must be an integer >= 1, got {self.threads!r}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"model.device must be cpu, cuda or cuda:N; got {self.device!r}")


@dataclass(frozen=True)
class ValidationConfig:
    bad_bin: str = "impute"
    late_ms: float | None = None
    on_gap: str = "reset"

    def __post_init__(self) -> None:
        _choice("validation.bad_bin", self.bad_bin, ("impute", "hold"))
        _choice("validation.on_gap", self.on_gap, ("reset", "keep"))
        _positive("validation.late_ms", self.late_ms)


@dataclass(frozen=True)
class AdaptConfig:
    method: str | None = None
    tau_s: float | None = None

    def __post_init__(self) -> None:
        from decoder_runtime.adaptation import METHODS

        if self.method is not None:
            _choice("adapt.method", self.method, tuple(METHODS))
        _positive("adapt.tau_s", self.tau_s)


@dataclass(frozen=True)
class DeadlineConfig:
    deadline_ms: float = 10.0
    reserve_us: float = 500.0
    max_backlog: int = 8
    handoff_spin_us: float = 500.0  # after an overrun, loop and worker spin (GIL released) this long for each other (decoder_runtime.spin)

    def __post_init__(self) -> None:
        _positive("deadline.deadline_ms", self.deadline_ms, allow_zero=True, optional=False)
        _positive("deadline.reserve_us", self.reserve_us, allow_zero=True, optional=False)
        _positive("deadline.handoff_spin_us", self.handoff_spin_us, allow_zero=True, optional=False)
        if self.deadline_ms and self.reserve_us >= self.deadline_ms * 1e3:
            raise ConfigError(f"deadline.reserve_us ({self.reserve_us:g}) must be below the deadline "
                              f"({self.deadline_ms:g} ms)")
        if not isinstance(self.max_backlog, int) or self.max_backlog < 1:
            raise ConfigError(f"deadline.max_backlog must be an integer >= 1, got {self.max_backlog!r}")

    @property
    def bounded(self) -> bool:
        """Whether the step runs under the deadline, guarded (False: inline, unbounded)."""
        return self.deadline_ms > 0

    @property
    def answer_ns(self) -> int:
        """How long after its arrival a bin is answered at the latest, ns (0: unbounded)."""
        return int(self.deadline_ms * 1e6 - self.reserve_us * 1e3) if self.bounded else 0


@dataclass(frozen=True)
class OutputConfig:
    zmq: str = DEFAULT_ZMQ
    allow_remote: bool = False
    curve_secret: str | None = None
    curve_clients: str | None = None
    record: str | None = None
    lsl_out: str | None = None
    wait_subscriber_s: float = 0.0

    def __post_init__(self) -> None:
        _positive("output.wait_subscriber_s", self.wait_subscriber_s, allow_zero=True, optional=False)
        if self.zmq != "none":
            from decoder_runtime.publish import check_endpoint

            check_endpoint(self.zmq, ConfigError)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A run description file as it is written, not checked yet: a file may leave out what the
    command line gives (e.g. the artifact), so it is checked once both are laid together."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


@dataclass(frozen=True)
class RuntimeConfig:
    model: ModelConfig
    source: SourceConfig = field(default_factory=lambda: SourceConfig(kind="replay"))
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    deadline: DeadlineConfig = field(default_factory=DeadlineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    warm: WarmSettings = field(default_factory=WarmSettings)
    max_bins: int | None = None
    poll_s: float = 0.1  # longest single wait on the source: bounds how fast a stop is noticed
    flush_every: int = 40  # bins between record flushes and event drains (40 x 25 ms = 1 s)

    def __post_init__(self) -> None:
        if self.max_bins is not None and (not isinstance(self.max_bins, int) or self.max_bins < 1):
            raise ConfigError(f"max_bins must be an integer >= 1, got {self.max_bins!r}")
        _positive("poll_s", self.poll_s, optional=False)
        if not isinstance(self.flush_every, int) or self.flush_every < 1:
            raise ConfigError(f"flush_every must be an integer >= 1, got {self.flush_every!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/TOML-able): what the record stores and `from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RuntimeConfig":
        """Strict: an unknown table or key is an error naming it, not silently ignored."""
        return _build(cls, data, "")

    @classmethod
    def from_toml(cls, path: str | Path) -> "RuntimeConfig":
        return cls.from_dict(read_toml(path))

    def override(self, values: dict[str, Any]) -> "RuntimeConfig":
        """A copy with "section.key" (or top-level "key") values replaced; None values are skipped."""
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            section, _, name = key.rpartition(".")
            (sections.setdefault(section, {}) if section else top)[name] = value
        data = self.to_dict()
        for section, vals in sections.items():
            data[section].update(vals)
        data.update(top)
        return RuntimeConfig.from_dict(data)


_SECTIONS = {"source": SourceConfig, "model": ModelConfig, "validation": ValidationConfig, "adapt": AdaptConfig,
             "deadline": DeadlineConfig, "output": OutputConfig, "warm": WarmSettings}


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a table, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {'keys in [' + where + ']' if where else 'keys'} {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        sub = _SECTIONS.get(name) if cls is RuntimeConfig else None
        kwargs[name] = _build(sub, value, name) if sub is not None else value
    if cls is RuntimeConfig and "model" not in kwargs:
        raise ConfigError("model.artifact is required: the artifact folder to decode with")
    for f in fields(cls):  # a string "false" would be truthy: allow_remote = "false" would allow remote
        if f.type == "bool" and f.name in kwargs and not isinstance(kwargs[f.name], bool):
            raise ConfigError(f"{where + '.' if where else ''}{f.name} must be true or false, got {kwargs[f.name]!r}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{where or 'config'}]: {e}") from None


def replace_section(cfg: RuntimeConfig, section: str, **values: Any) -> RuntimeConfig:
    """`cfg` with some fields of one section replaced (each checked again)."""
    current = getattr(cfg, section)
    assert is_dataclass(current)
    return replace(cfg, **{section: replace(current, **values)})
