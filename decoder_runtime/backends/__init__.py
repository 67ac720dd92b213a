"""Ways of running an artifact's step, chosen by a string and a device.

`make_backend(artifact, "onnx", "cpu")` returns an object with reset()/step(); asking for
something this machine lacks raises BackendUnavailable naming what is missing. Each
backend class answers `unavailable(device) -> reason | None` without an artifact, which is
what `available_backends()` (and `spikestream backends`) report.
"""
from __future__ import annotations

from decoder_runtime.backends.base import Backend, BackendUnavailable
from decoder_runtime.backends.cudagraph import CudaGraphBackend
from decoder_runtime.backends.numba_lstm import NumbaLSTMBackend
from decoder_runtime.backends.onnx_runtime import OnnxBackend
from decoder_runtime.backends.torch_eager import TorchBackend
from decoder_runtime.backends.torchscript import TorchScriptBackend
from models.artifact import Artifact

BACKENDS = {
    "torch": TorchBackend,
    "torchscript": TorchScriptBackend,
    "onnx": OnnxBackend,
    "cudagraph": CudaGraphBackend,
    "numba": NumbaLSTMBackend,
}
DEVICES = ("cpu", "cuda")

# Preference per device, fastest first, decided by measurement. Per-step p50 / p99 in us on
# the 2-core CPU VM (default sizes, 142 channels, 3,000 steps per variant interleaved in
# rounds, one thread, torch 2.13 CPU, ORT 1.32, load average ~3 from other jobs):
#                torch      torchscript   onnx       numba
#   lstm         445 / 776  397 / 550     56 / 91    31 / 52
#   transformer  591 / 727  343 / 426     89 / 124      -
#   rvq          381 / 454  252 / 313     50 / 75       -
#   mamba        565 / 655  360 / 434    102 / 136      -
#   wiener        67 / 104   80 / 120     14 / 30       -
#   kalman        49 / 79    62 / 100      9 / 22       -
# All agree with eager torch to <= 2.5e-6 (normalised units) over 2,000 bins. On CUDA
# (benchmarks/results/nvidia-h100-80gb-hbm3, H100, default sizes, 20,000 steps each):
#                torch        torchscript   cudagraph
#   lstm         268 / 689    863 / 1534    111 / 136
#   transformer  880 / 1928   692 / 1514    102 / 131
#   rvq          716 / 1480   493 / 1092    103 / 135
#   mamba       1034 / 2766   533 / 1171    136 / 169
# all within 1e-6 of eager torch. TorchScript is not second: it loses to eager on the LSTM.
PREFERENCE = {"cpu": ("numba", "onnx", "torch"), "cuda": ("cudagraph", "torch")}
NEEDS_EXPORT = ("torchscript", "onnx")  # backends that run a file written by `spikestream export`


def default_backend(device: str = "cpu", artifact: Artifact | None = None, *, model: str | None = None) -> str:
    """The fastest backend, by measurement, that runs on `device` here (and runs `artifact`).

    With an artifact, backends it cannot use are passed over (numba needs an LSTM; onnx
    and torchscript an export in the artifact). With only a model name, only the model is
    considered (the artifact is assumed exported). With neither, the answer is for any
    exported artifact.
    """
    if artifact is not None:
        model = artifact.config["model"]["name"]
    exports = (artifact.config.get("export") or {}) if artifact is not None else None
    for kind in PREFERENCE["cpu" if device == "cpu" else "cuda"]:
        if BACKENDS[kind].unavailable(device) is not None:
            continue
        if kind == "numba" and model != "lstm":
            continue
        if exports is not None and kind in NEEDS_EXPORT and kind not in exports:
            continue
        return kind
    return "torch"


def make_backend(artifact: Artifact, kind: str = "torch", device: str = "cpu", threads: int | None = None) -> Backend:
    """Build, warm up and return a backend; all heavy work happens here, before bin one.

    kind "auto" picks `default_backend(device, artifact)`.
    """
    if kind == "auto":
        kind = default_backend(device, artifact)
    try:
        cls = BACKENDS[kind]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {kind!r}; choose one of auto, {', '.join(BACKENDS)}") from None
    reason = cls.unavailable(device)
    if reason:
        raise BackendUnavailable(f"backend {kind!r} on {device}: {reason}")
    return cls(artifact, device=device, threads=threads)


def available_backends(devices: tuple[str, ...] = DEVICES) -> list[tuple[str, str, bool, str]]:
    """(kind, device, available, reason) for every backend and device; reason '' if available."""
    rows = []
    for device in devices:
        for kind, cls in BACKENDS.items():
            reason = cls.unavailable(device)
            rows.append((kind, device, reason is None, reason or ""))
    return rows


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "available_backends", "default_backend", "make_backend"]
