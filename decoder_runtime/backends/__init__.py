"""Ways of running an artifact's step, chosen by a string and a device.

`make_backend(artifact, "onnx", "cpu")` returns an object with reset()/step(); asking for
something this machine lacks raises BackendUnavailable naming what is missing.
"""
from __future__ import annotations

from decoder_runtime.backend_api import Backend, BackendUnavailable
from decoder_runtime.backends.torch_eager import TorchBackend
from models.artifact import Artifact

BACKENDS = {"torch": TorchBackend}


def make_backend(artifact: Artifact, kind: str = "torch", device: str = "cpu", threads: int | None = None) -> Backend:
    """Build, warm up and return a backend; all heavy work happens here, before bin one."""
    try:
        cls = BACKENDS[kind]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}") from None
    return cls(artifact, device=device, threads=threads)


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "make_backend"]
