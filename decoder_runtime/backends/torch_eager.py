"""Eager PyTorch: the reference every other backend is checked against."""
from __future__ import annotations

import numpy as np
import torch

from decoder_runtime.backend_api import BackendUnavailable
from models.artifact import Artifact


def resolve_device(device: str) -> torch.device:
    """A torch device, or a clear error when CUDA is asked for and absent."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device!r} requested but CUDA is not available (torch {torch.__version__})")
    return torch.device(device)


class TorchBackend:
    name = "torch"

    def __init__(self, artifact: Artifact, device: str = "cpu", threads: int | None = None) -> None:
        self.device = device
        self._dev = resolve_device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = artifact.model.to(self._dev).eval()
        self.n_channels = artifact.n_channels
        self.reset()
        self.step(np.zeros(self.n_channels, dtype=np.float32))  # warm-up: first-call costs
        self.reset()

    def reset(self) -> None:
        self._state = self.model.init_state(1)

    @torch.inference_mode()
    def step(self, counts: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(counts, dtype=np.float32)).to(self._dev).view(1, -1)
        y, self._state = self.model.step(x, self._state)
        return y[0].cpu().numpy()
