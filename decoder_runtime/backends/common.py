"""What several backends share: device checks and reading an artifact's exported step.

Kept apart from any one backend so that "is this runnable here?" has one answer, used both
by the constructors (which raise) and by `available_backends()` (which only reports).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from decoder_runtime.backends.base import BackendUnavailable
from models.artifact import Artifact, verify_file


def cuda_missing(device: str) -> str | None:
    """Why `device` cannot be used by torch here, or None if it can."""
    if device == "cpu":
        return None
    if not device.startswith("cuda"):
        return f"unknown device {device!r}; use 'cpu' or 'cuda[:N]'"
    if not torch.cuda.is_available():
        return f"no CUDA: torch {torch.__version__} sees no usable GPU"
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        return f"no CUDA device {index}: this machine has {torch.cuda.device_count()}"
    return None


def resolve_device(device: str) -> torch.device:
    """A torch device, or BackendUnavailable naming what is missing; CUDA in full FP32."""
    reason = cuda_missing(device)
    if reason:
        raise BackendUnavailable(reason)
    dev = torch.device(device)
    if dev.type == "cuda":
        full_fp32()
    return dev


def full_fp32() -> None:
    """Turn off TF32 for cuBLAS and cuDNN (process-wide) before any CUDA work of a backend.

    TF32 keeps a 10-bit mantissa: on Ampere/Hopper cuDNN's default math would run FP32
    LSTMs and convolutions in it (and matmuls if torch allowed it), ~1e-3 relative error,
    which breaks the 1e-4 parity every backend promises. The step is launch-bound at
    batch 1, so full FP32 costs nothing measurable.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def export_entry(artifact: Artifact, fmt: str) -> dict:
    """The config's record of one export ('torchscript' or 'onnx'), or a clear refusal."""
    entry = (artifact.config.get("export") or {}).get(fmt)
    if not entry:
        raise BackendUnavailable(
            f"artifact {artifact.path} has no {fmt} export; run `spikestream export {artifact.path} --format {fmt}`"
        )
    return entry


def exported_file(artifact: Artifact, fmt: str) -> Path:
    """Path of the export file after checking its SHA-256 (ArtifactError if it was altered)."""
    return verify_file(artifact.path, artifact.config, export_entry(artifact, fmt)["file"])


def initial_state(artifact: Artifact) -> list[np.ndarray]:
    """The model's start state as float32 arrays, in `state_names` order.

    Taken from the (hash-verified) model rather than assumed zero: a model may start from a
    non-zero state (e.g. a Kalman filter's prior covariance).
    """
    with torch.no_grad():
        return [np.ascontiguousarray(s.detach().cpu().numpy(), dtype=np.float32)
                for s in artifact.model.init_state(1)]
