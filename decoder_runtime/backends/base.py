"""What the engine needs from a way of running a model artifact.

One small class per (format, device) implements this. State lives inside the backend so
the engine's loop stays a plain `velocity = backend.step(counts)`.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str  # "torch", "torchscript", "onnx", "cudagraph"
    device: str  # "cpu" or "cuda[:N]"

    def reset(self) -> None:
        """Return to the artifact's initial state (start of a session, or after a gap)."""

    def step(self, counts: np.ndarray) -> np.ndarray:
        """One bin of raw counts float32[C] -> velocity float32[2]; advances the state."""


class BackendUnavailable(RuntimeError):
    """Asked for a backend this machine cannot run; the message names what is missing."""
