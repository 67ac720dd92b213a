"""Eager PyTorch: the reference every other backend is checked against."""
from __future__ import annotations

import copy

import numpy as np
import torch

from decoder_runtime.backends.common import cuda_missing, resolve_device
from models.artifact import Artifact

__all__ = ["TorchBackend", "resolve_device"]


class TorchBackend:
    name = "torch"

    @staticmethod
    def unavailable(device: str) -> str | None:
        return cuda_missing(device)

    def __init__(self, artifact: Artifact, device: str = "cpu", threads: int | None = None) -> None:
        self._setup(artifact.model, artifact.n_channels, device, threads)

    @classmethod
    def for_module(cls, model: torch.nn.Module, device: str = "cpu") -> "TorchBackend":
        """The same backend over a module not (yet) in an artifact: training scores through it."""
        self = cls.__new__(cls)
        self._setup(model, int(model.x_mean.shape[0]), device, None)
        return self

    def _setup(self, model: torch.nn.Module, n_channels: int, device: str, threads: int | None) -> None:
        self.device = device
        self._dev = resolve_device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        # A private copy, so backends on other devices built from the same artifact do not move it.
        self.model = copy.deepcopy(model).to(self._dev).eval()
        self.n_channels = n_channels
        # One input tensor reused for every bin: a host->device copy, no allocation.
        self._x = torch.zeros(1, self.n_channels, device=self._dev)
        self.reset()
        self.step(np.zeros(self.n_channels, dtype=np.float32))  # warm-up: first-call costs
        self.reset()

    def reset(self) -> None:
        self._state = self.model.init_state(1)

    @torch.inference_mode()
    def dry_step(self) -> None:
        """The step on the last counts and the live state, its output and new state discarded (the
        models' steps are pure functions of their state): warms caches, changes nothing."""
        self.model.step(self._x, self._state)

    @torch.inference_mode()
    def step(self, counts: np.ndarray) -> np.ndarray:
        self._x.copy_(torch.from_numpy(np.asarray(counts, dtype=np.float32)).view(1, -1))
        y, self._state = self.model.step(self._x, self._state)
        return y[0].cpu().numpy()
