"""Verifying a model artifact as a whole, before anything is built from it.

An artifact folder is trusted only as far as it can be checked. Three layers, in the order
`models.artifact.load_artifact` applies them, each refusing with one line naming the problem:

1. The config is sealed: `config["seal"]` is the SHA-256 of the config's canonical JSON (all
   fields but the seal, keys sorted). Every writer (`save_artifact`, `update_config`, which
   export and `adapt-fit` go through) re-seals what it writes, so a hand edit (a bin width, a
   shortened channel list, a removed fallback entry) is refused. The seal is a checksum, not
   a signature: it catches edits and corruption, not someone who recomputes it on purpose.
   Format-1 artifacts (written before sealing) load with a warning, after layer 2.
2. Every field the runtime uses is validated on its own: bin width, channel ids (count,
   uniqueness), normalisation vectors (length, finite, positive spreads), the model and
   fallback entries, and file names (plain names strictly inside the folder: no `..`, no
   absolute paths, no symlink leading out).
3. Before any tensor is allocated, the model is built on torch's meta device: its parameter
   and state sizes are bounded (SPIKESTREAM_MAX_MODEL_ELEMENTS, default 5e7, so absurd
   hyperparameters cannot exhaust memory), and the weights file's tensor names and shapes,
   read from its header, must be the model's. Loaded weights must be finite.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path, PurePosixPath

CONFIG = "config.json"
MAX_ELEMENTS_ENV = "SPIKESTREAM_MAX_MODEL_ELEMENTS"
DEFAULT_MAX_ELEMENTS = 50_000_000
MAX_CHANNELS = 100_000
BIN_WIDTH_RANGE = (1e-4, 10.0)  # seconds


class ArtifactError(RuntimeError):
    """An artifact folder that cannot be trusted or used; the message says why."""


def config_digest(config: dict) -> str:
    """SHA-256 of the config's canonical JSON, without its seal.

    Taken of the config as it reads back from JSON (tuples become lists, keys strings), so the
    digest of what a writer holds in memory is the digest of what a reader loads."""
    body = json.loads(json.dumps({k: v for k, v in config.items() if k != "seal"}))
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(config: dict) -> dict:
    """The config with its seal set to its current digest."""
    config["seal"] = config_digest(config)
    return config


def check_seal(path: Path, config: dict, sealed_from: int) -> None:
    """Refuse a config whose seal is missing (from format `sealed_from` on) or does not match."""
    where = path / CONFIG
    if "seal" not in config:
        if config.get("format_version", 0) >= sealed_from:
            raise ArtifactError(f"{where}: has no seal; it was not written by spikestream or was edited")
        warnings.warn(f"{path}: a format-1 artifact, written before configs were sealed: its fields are "
                      "validated, but an edit to them cannot be detected (re-export or retrain to seal it)",
                      stacklevel=3)
        return
    if config["seal"] != config_digest(config):
        raise ArtifactError(f"{where}: edited after it was written (its contents do not match its seal); "
                            "restore the original or retrain")


def safe_file(path: Path, name: object) -> Path:
    """`path / name` for a plain file name strictly inside the artifact folder, else ArtifactError."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise ArtifactError(f"{path / CONFIG}: file name {name!r} is not a plain relative name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise ArtifactError(f"{path / CONFIG}: file name {name!r} points outside the artifact folder")
    f = path / name
    try:
        inside = f.resolve().is_relative_to(path.resolve())
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ArtifactError(f"{f}: cannot be resolved ({e})") from None
    if not inside:
        raise ArtifactError(f"{f}: is a link to {f.resolve()}, outside the artifact folder; refusing it")
    return f


def _finite_vector(where: str, values: object, n: int, positive: bool = False) -> None:
    if not isinstance(values, list) or len(values) != n:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise ArtifactError(f"{where} must be a list of {n} numbers, found {got}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
            raise ArtifactError(f"{where}[{i}] is {v!r}; expected a finite number{' > 0' if positive else ''}")


def _model_entry(where: str, entry: object) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("hparams"), dict):
        raise ArtifactError(f"{where} must be a map with a model 'name' and its 'hparams'")
    for key, v in entry["hparams"].items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ArtifactError(f"{where}.hparams.{key} is {v}; expected a finite number")
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise ArtifactError(f"{where}.hparams.{key} is {v}; expected >= 0")


def validate_config(path: Path, config: dict, fallback_file: str) -> None:
    """Every field the runtime relies on, checked on its own (ArtifactError naming the first bad one)."""
    where = path / CONFIG
    n = config.get("n_channels")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHANNELS:
        raise ArtifactError(f"{where}: n_channels is {n!r}; expected an integer 1..{MAX_CHANNELS}")
    bw = config.get("bin_width")
    lo, hi = BIN_WIDTH_RANGE
    if isinstance(bw, bool) or not isinstance(bw, (int, float)) or not lo <= bw <= hi:
        raise ArtifactError(f"{where}: bin_width is {bw!r}; expected seconds in [{lo:g}, {hi:g}]")
    ids = config.get("channel_ids")
    if not isinstance(ids, list) or len(ids) != n or not all(isinstance(c, int) and not isinstance(c, bool) for c in ids):
        got = len(ids) if isinstance(ids, list) else type(ids).__name__
        raise ArtifactError(f"{where}: channel_ids must be {n} integer ids (one per channel), found {got}")
    if len(set(ids)) != n:
        raise ArtifactError(f"{where}: channel_ids repeats an id")
    norm = config.get("normalization")
    if not isinstance(norm, dict):
        raise ArtifactError(f"{where}: missing the normalization statistics")
    for key, size, positive in (("x_mean", n, False), ("x_std", n, True), ("y_mean", 2, False), ("y_std", 2, True)):
        _finite_vector(f"{where}: normalization.{key}", norm.get(key), size, positive)
    _model_entry(f"{where}: model", config.get("model"))
    files = config.get("files")
    if not isinstance(files, dict) or not all(isinstance(h, str) and len(h) == 64 for h in files.values()):
        raise ArtifactError(f"{where}: 'files' must map each file name to its SHA-256")
    for name in files:
        safe_file(path, name)
    if "fallback" in config:
        _model_entry(f"{where}: fallback", config["fallback"])
        if fallback_file not in files:
            raise ArtifactError(f"{where}: has a fallback entry but no {fallback_file} in 'files'")
    elif fallback_file in files:
        raise ArtifactError(f"{where}: lists {fallback_file} but has no fallback entry describing it")


def max_elements() -> int:
    """The bound on a model's parameter + state elements: $SPIKESTREAM_MAX_MODEL_ELEMENTS or 5e7."""
    env = os.environ.get(MAX_ELEMENTS_ENV)
    try:
        return int(float(env)) if env else DEFAULT_MAX_ELEMENTS
    except ValueError:
        raise ArtifactError(f"{MAX_ELEMENTS_ENV}={env!r} is not a number") from None
