"""TorchScript: the artifact's exported `model.ts`, run without the Python model code.

The file is hash-checked before `torch.jit.load` sees it, so only the archive that export
wrote (and verified against eager torch) is ever deserialised.
"""
from __future__ import annotations

import numpy as np
import torch

from decoder_runtime.backends.base import BackendUnavailable
from decoder_runtime.backends.common import cuda_missing, export_entry, exported_file, initial_state, resolve_device
from models.artifact import Artifact, ArtifactError

# The profiling executor specialises the graph over its first calls; run past that here.
WARMUP_STEPS = 10


class TorchScriptBackend:
    name = "torchscript"

    @staticmethod
    def unavailable(device: str) -> str | None:
        return cuda_missing(device)

    def __init__(self, artifact: Artifact, device: str = "cpu", threads: int | None = None) -> None:
        self.device = device
        self._dev = resolve_device(device)
        entry = export_entry(artifact, "torchscript")
        if self._dev.type == "cuda" and not entry.get("device_portable", True):
            raise BackendUnavailable(
                f"{artifact.path}/{entry['file']} was traced with CPU-only constants and cannot run on {device}"
            )
        if threads is not None:
            torch.set_num_threads(threads)
        f = exported_file(artifact, "torchscript")
        try:
            self.module = torch.jit.load(str(f), map_location=self._dev).eval()
        except RuntimeError as e:  # not a TorchScript archive (e.g. a pickle): refused, never unpickled
            raise ArtifactError(f"{f}: not a loadable TorchScript archive ({str(e).splitlines()[0]})") from None
        self._init = [torch.from_numpy(s).to(self._dev) for s in initial_state(artifact)]
        self._x = torch.zeros(1, artifact.n_channels, device=self._dev)
        self.reset()
        for _ in range(WARMUP_STEPS):
            self.step(np.zeros(artifact.n_channels, dtype=np.float32))
        self.reset()

    def reset(self) -> None:
        self._state = tuple(s.clone() for s in self._init)

    @torch.no_grad()
    def dry_step(self) -> None:
        """The step on the last counts and the live state, its output and new state discarded (the
        exported step is a pure function of its state): warms caches, changes nothing."""
        self.module(self._x, *self._state)

    @torch.no_grad()
    def step(self, counts: np.ndarray) -> np.ndarray:
        self._x.copy_(torch.from_numpy(np.asarray(counts, dtype=np.float32)).view(1, -1))
        out = self.module(self._x, *self._state)
        self._state = out[1:]
        return out[0][0].cpu().numpy()
