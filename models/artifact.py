"""The model artifact: a folder training writes and the runtime reads.

Layout: `config.json` (everything needed to rebuild and audit the model), and
`weights.safetensors` / `fallback.safetensors` (tensors only: loading can never execute
code). Exports (`model.ts`, `model.onnx`) are added beside them by training/export.py.
Every file's SHA-256 is recorded in the config and checked on load, so a truncated or
edited artifact is refused with a message naming the file instead of decoding garbage; the
config itself is sealed and validated field by field, and the model's size is bounded,
before anything is built (models.integrity).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from models.base import StreamingDecoder
from models.integrity import CONFIG, ArtifactError, check_seal, max_elements, safe_file, seal, validate_config
from models.registry import model_class

FORMAT_VERSION = 2  # 2: the config is sealed (models.integrity); 1: unsealed, still readable
READABLE_VERSIONS = (1, 2)
WEIGHTS = "weights.safetensors"
FALLBACK = "fallback.safetensors"
__all__ = ["CONFIG", "FALLBACK", "WEIGHTS", "Artifact", "ArtifactError", "load_artifact", "read_config",
           "save_artifact", "update_config", "verify_file"]


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
    _write_config(path, config)
    return path


def _write_config(path: Path, config: dict) -> None:
    """Seal the config and write it (a temporary file renamed over it: never half written)."""
    tmp = path / f".{CONFIG}.tmp"
    tmp.write_text(json.dumps(seal(config), indent=2))
    tmp.replace(path / CONFIG)


def update_config(path: str | Path, *, files: dict[str, str] | None = None, **fields) -> dict:
    """Merge fields into config.json and re-seal it; `files` names new files whose hashes to record.

    The config is verified against its seal first, so a later writer (export, adapt-fit) never
    re-seals a config that was edited by hand."""
    path = Path(path)
    config = read_config(path)
    check_seal(path, config, sealed_from=FORMAT_VERSION)
    config.update(fields)
    for name in files or {}:
        config.setdefault("files", {})[name] = sha256(safe_file(path, name))
    config["format_version"] = FORMAT_VERSION
    _write_config(path, config)
    return config


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: not an artifact folder (it does not exist or is not a directory)")
    try:
        config = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing {CONFIG}") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path / CONFIG}: not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path / CONFIG}: cannot be read ({e})") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{path / CONFIG}: not a JSON object")
    return config


def verify_file(path: Path, config: dict, name: str) -> Path:
    """Check a file of the artifact against the hash recorded when it was written."""
    f = safe_file(path, name)
    if not f.is_file():
        raise ArtifactError(f"{path}: missing {name}")
    expected = config.get("files", {}).get(name)
    if expected is None:
        raise ArtifactError(f"{path}: {name} is not recorded in {CONFIG}; refusing an unlisted file")
    if sha256(f) != expected:
        raise ArtifactError(f"{f}: contents do not match the SHA-256 in {CONFIG} (truncated or modified)")
    return f


def _on_meta(path: Path, config: dict, entry: dict) -> StreamingDecoder:
    """The model built on torch's meta device (no memory), its size checked against the bound."""
    try:
        cls = model_class(entry["name"])
        with torch.device("meta"):
            model = cls(n_channels=int(config["n_channels"]), **entry["hparams"])
            state = model.init_state(1)
    except Exception as e:  # noqa: BLE001 - any constructor failure is a config the code cannot build
        raise ArtifactError(f"{path / CONFIG}: cannot rebuild model {entry.get('name')!r} from its config "
                            f"({type(e).__name__}: {e})") from None
    size = sum(t.numel() for t in model.state_dict().values()) + sum(t.numel() for t in state)
    if size > max_elements():
        raise ArtifactError(f"{path / CONFIG}: model {entry['name']!r} with {entry['hparams']} would hold "
                            f"{size:,} parameter and state values, over the limit of {max_elements():,} "
                            "(SPIKESTREAM_MAX_MODEL_ELEMENTS)")
    return model


def _check_header(f: Path, model: StreamingDecoder) -> None:
    """The weights file's tensor names and shapes (from its header) must be the model's."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(f), "pt") as h:
            got = {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{f}: not a readable safetensors file ({e})") from None
    if got != want:
        diff = sorted(set(got) ^ set(want)) or [k for k in want if got[k] != want[k]]
        raise ArtifactError(f"{f}: weights do not fit the configured model (differ at {', '.join(diff[:4])})")


def _rebuild(path: Path, config: dict, entry: dict, weights: str, device: str) -> StreamingDecoder:
    f = verify_file(path, config, weights)
    _check_header(f, _on_meta(path, config, entry))
    state = load_file(f)
    for k, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ArtifactError(f"{f}: tensor {k!r} holds NaN or inf")
    model = model_class(entry["name"])(n_channels=int(config["n_channels"]), **entry["hparams"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{f}: weights do not fit the configured model ({e})") from None
    return model.to(device).eval()


def load_artifact(path: str | Path, device: str = "cpu") -> Artifact:
    """Load an artifact without unpickling anything; raises ArtifactError on any defect.

    Order (models.integrity): seal, every field, file names, then per model its size on the
    meta device, its weights file's hash and header, and only then real tensors."""
    path = Path(path)
    config = read_config(path)
    if config.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(f"{path}: format_version {config.get('format_version')!r}, "
                            f"expected one of {READABLE_VERSIONS}")
    check_seal(path, config, sealed_from=FORMAT_VERSION)
    validate_config(path, config, FALLBACK)
    model = _rebuild(path, config, config["model"], WEIGHTS, device)
    fallback = _rebuild(path, config, config["fallback"], FALLBACK, device) if "fallback" in config else None
    return Artifact(path=path, config=config, model=model, fallback=fallback)
