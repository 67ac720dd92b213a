"""The model artifact: a folder training writes and the runtime reads.

Layout: `config.json` (everything needed to rebuild and audit the model), and
`weights.safetensors` / `fallback.safetensors` (tensors only: loading can never execute
code). Exports (`model.ts`, `model.onnx`) are added beside them by training/export.py.
Every file's SHA-256 is recorded in the config and checked on load, so a truncated or
edited artifact is refused with a message naming the file instead of decoding garbage.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.base import StreamingDecoder
from models.registry import model_class

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
FALLBACK = "fallback.safetensors"


class ArtifactError(RuntimeError):
    """An artifact folder that cannot be trusted or used; the message says why."""


@dataclass
class Artifact:
    path: Path
    config: dict
    model: StreamingDecoder
    fallback: StreamingDecoder | None

    @property
    def model_id(self) -> str:
        return self.config.get("model_id", self.path.name)

    @property
    def n_channels(self) -> int:
        return int(self.config["n_channels"])

    @property
    def bin_width(self) -> float:
        return float(self.config["bin_width"])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """The git commit of the code that made an artifact, or the package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
            cwd=Path(__file__).resolve().parent, timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spikestream")
    except PackageNotFoundError:
        return "unknown"


def _model_entry(model: StreamingDecoder) -> dict:
    return {
        "name": model.name,
        "hparams": model.hparams(),
        "state": [
            {"name": n, "shape": list(s.shape)} for n, s in zip(model.state_names, model.init_state(1))
        ],
    }


def save_artifact(
    path: str | Path,
    model: StreamingDecoder,
    *,
    channel_ids,
    bin_width: float,
    fallback: StreamingDecoder | None = None,
    provenance: dict | None = None,
    metrics: dict | None = None,
    training: dict | None = None,
) -> Path:
    """Write model (+ fallback decoder) and its config; returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / WEIGHTS)
    files = {WEIGHTS: sha256(path / WEIGHTS)}
    config = {
        "format_version": FORMAT_VERSION,
        "model_id": path.name,
        "model": _model_entry(model),
        "n_channels": int(model.n_channels),
        "channel_ids": [int(c) for c in channel_ids],
        "bin_width": float(bin_width),
        "normalization": {
            "inside_graph": True,
            **{k: getattr(model, k).tolist() for k in ("x_mean", "x_std", "y_mean", "y_std")},
        },
        "provenance": provenance or {},
        "metrics": metrics or {},
        "training": training or {},
        "code_version": code_version(),
    }
    if fallback is not None:
        fallback = fallback.cpu().eval()
        save_file({k: v.contiguous() for k, v in fallback.state_dict().items()}, path / FALLBACK)
        files[FALLBACK] = sha256(path / FALLBACK)
        config["fallback"] = _model_entry(fallback)
    config["files"] = files
    (path / CONFIG).write_text(json.dumps(config, indent=2))
    return path


def update_config(path: str | Path, *, files: dict[str, str] | None = None, **fields) -> dict:
    """Merge fields into config.json; `files` names new files whose hashes to record."""
    path = Path(path)
    config = read_config(path)
    config.update(fields)
    for name in files or {}:
        config.setdefault("files", {})[name] = sha256(path / name)
    (path / CONFIG).write_text(json.dumps(config, indent=2))
    return config


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: not an artifact folder (it does not exist or is not a directory)")
    try:
        return json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing {CONFIG}") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path / CONFIG}: not valid JSON ({e})") from None


def verify_file(path: Path, config: dict, name: str) -> Path:
    """Check a file of the artifact against the hash recorded when it was written."""
    f = path / name
    if not f.is_file():
        raise ArtifactError(f"{path}: missing {name}")
    expected = config.get("files", {}).get(name)
    if expected is None:
        raise ArtifactError(f"{path}: {name} is not recorded in {CONFIG}; refusing an unlisted file")
    if sha256(f) != expected:
        raise ArtifactError(f"{f}: contents do not match the SHA-256 in {CONFIG} (truncated or modified)")
    return f


def _rebuild(path: Path, config: dict, entry: dict, weights: str, device: str) -> StreamingDecoder:
    try:
        cls = model_class(entry["name"])
        model = cls(n_channels=int(config["n_channels"]), **entry["hparams"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path / CONFIG}: cannot rebuild model from its config ({e})") from None
    f = verify_file(path, config, weights)
    try:
        state = load_file(f)
    except SafetensorError as e:
        raise ArtifactError(f"{f}: not a readable safetensors file ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{f}: weights do not fit the configured model ({e})") from None
    return model.to(device).eval()


def load_artifact(path: str | Path, device: str = "cpu") -> Artifact:
    """Load an artifact without unpickling anything; raises ArtifactError on any defect."""
    path = Path(path)
    config = read_config(path)
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}")
    for key in ("model", "n_channels", "bin_width", "files"):
        if key not in config:
            raise ArtifactError(f"{path / CONFIG}: missing field {key!r}")
    model = _rebuild(path, config, config["model"], WEIGHTS, device)
    fallback = _rebuild(path, config, config["fallback"], FALLBACK, device) if "fallback" in config else None
    return Artifact(path=path, config=config, model=model, fallback=fallback)
