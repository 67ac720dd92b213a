"""Every backend agrees with eager torch over a 2,000-bin simulated stream, and after reset.

The reference is the model's own `step` called directly (not through the torch backend),
so the torch backend is checked too. A backend this machine cannot run is not skipped
silently: CPU cases must run here, GPU cases are marked `gpu` and skip without CUDA, and
the "not available" paths are tested for their messages.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from decoder_runtime.backends.base import BackendUnavailable
from decoder_runtime.backends import BACKENDS, available_backends, default_backend, make_backend
from export_helpers import assert_parity, bins, eager_reference, make_artifact, stream
from models.artifact import ArtifactError, load_artifact
from models.registry import MODEL_NAMES

torch.set_num_threads(1)
HAS_CUDA = torch.cuda.is_available()
CPU_KINDS = ("torch", "torchscript", "onnx")
GPU_KINDS = ("torch", "torchscript", "onnx", "cudagraph")


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("backends")


_refs: dict = {}


def check_backend(base, name: str, kind: str, device: str, size: str = "small") -> float:
    """Stream all bins, reset, stream them again: both passes equal eager torch; returns the larger error."""
    path = make_artifact(base, name, size)
    artifact = load_artifact(path)
    counts = bins(base, size)
    key = (name, size)
    if key not in _refs:
        _refs[key] = eager_reference(artifact.model, counts)
    ref = _refs[key]
    backend = make_backend(artifact, kind, device)
    assert backend.name == kind and backend.device == device
    first = stream(backend.step, counts)
    assert first.dtype == np.float32
    err = assert_parity(first, ref, artifact.model)
    backend.reset()  # from a state 2,000 bins in, back to the start
    return max(err, assert_parity(stream(backend.step, counts), ref, artifact.model))


@pytest.mark.parametrize("kind", CPU_KINDS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cpu_parity(base, name, kind):
    check_backend(base, name, kind, "cpu")


def test_numba_lstm_parity(base):
    check_backend(base, "lstm", "numba", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("kind", GPU_KINDS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gpu_parity(base, name, kind, record_property):
    if kind == "onnx" and not _ort_cuda():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) not installed")
    record_property("parity_error", check_backend(base, name, kind, "cuda"))  # for the GPU check's report


@pytest.mark.slow
@pytest.mark.parametrize("kind", (*CPU_KINDS, "numba"))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cpu_parity_default_size(base, name, kind):
    if kind == "numba" and name != "lstm":
        pytest.skip("numba implements the LSTM only")
    check_backend(base, name, kind, "cpu", size="default")


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("kind", GPU_KINDS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gpu_parity_default_size(base, name, kind, record_property):
    if kind == "onnx" and not _ort_cuda():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) not installed")
    record_property("parity_error", check_backend(base, name, kind, "cuda", size="default"))


@pytest.mark.parametrize("device, kinds", [
    ("cpu", ("onnx", "torch")),
    # Two CUDA graphs of one artifact must not share static buffers or memory pools.
    pytest.param("cuda", ("cudagraph", "cudagraph", "torch", "torchscript"),
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]),
])
def test_backends_do_not_share_state(base, device, kinds):
    """Backends of one artifact, interleaved bin by bin, each keep their own state."""
    artifact = load_artifact(make_artifact(base, "mamba"))
    counts = bins(base)[:300]
    backends = [make_backend(artifact, kind, device) for kind in kinds]
    got = np.array([[b.step(x) for b in backends] for x in counts])  # [bins, backends, 2]
    ref = eager_reference(artifact.model, counts)
    for i in range(len(backends)):
        assert_parity(got[:, i], ref, artifact.model)


# --- what is not available, and why ---------------------------------------------------------
@pytest.mark.skipif(_ort_cuda(), reason="onnxruntime-gpu is installed here")
def test_onnx_cuda_names_onnxruntime_gpu(base):
    artifact = load_artifact(make_artifact(base, "kalman"))
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu.*CUDAExecutionProvider"):
        make_backend(artifact, "onnx", "cuda")


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
@pytest.mark.parametrize("kind", ("torch", "torchscript", "cudagraph"))
def test_no_cuda_is_named(base, kind):
    artifact = load_artifact(make_artifact(base, "kalman"))
    with pytest.raises(BackendUnavailable, match="no CUDA"):
        make_backend(artifact, kind, "cuda")


def test_wrong_device_or_kind(base):
    artifact = load_artifact(make_artifact(base, "kalman"))
    with pytest.raises(BackendUnavailable, match="CUDA device only"):
        make_backend(artifact, "cudagraph", "cpu")
    with pytest.raises(BackendUnavailable, match="unknown backend 'tensorrt'"):
        make_backend(artifact, "tensorrt", "cpu")
    with pytest.raises(BackendUnavailable, match="LSTM decoder only"):
        make_backend(artifact, "numba", "cpu")
    with pytest.raises(BackendUnavailable, match="unknown device"):
        make_backend(artifact, "torch", "tpu")


@pytest.mark.parametrize("kind", ("torchscript", "onnx"))
def test_not_exported_suggests_export(base, kind):
    artifact = load_artifact(make_artifact(base, "kalman", export=False))
    with pytest.raises(BackendUnavailable, match=f"no {kind} export.*spikestream export"):
        make_backend(artifact, kind, "cpu")


def test_onnx_signature_must_match_config(base, tmp_path):
    """A (hash-consistent) config that describes other I/O than the graph is refused."""
    from models.artifact import update_config

    path = tmp_path / "kalman"
    shutil.copytree(make_artifact(base, "kalman"), path)
    config = json.loads((path / "config.json").read_text())
    config["export"]["inputs"][0]["name"] = "spikes"
    update_config(path, export=config["export"])
    with pytest.raises(ArtifactError, match="do not match config.json"):
        make_backend(load_artifact(path), "onnx", "cpu")


# --- listing and defaults --------------------------------------------------------------------
def test_available_backends_lists_everything():
    rows = available_backends()
    assert {(k, d) for k, d, _, _ in rows} == {(k, d) for k in BACKENDS for d in ("cpu", "cuda")}
    by = {(k, d): (ok, why) for k, d, ok, why in rows}
    for kind in ("torch", "torchscript", "onnx", "numba"):
        assert by[(kind, "cpu")] == (True, "")
    assert by[("cudagraph", "cpu")][0] is False
    assert by[("torch", "cuda")][0] is HAS_CUDA
    for ok, why in by.values():
        assert ok or why  # every "no" says why


def test_default_backend(base):
    lstm = load_artifact(make_artifact(base, "lstm"))
    mamba = load_artifact(make_artifact(base, "mamba"))
    plain = load_artifact(make_artifact(base, "mamba", export=False))
    assert default_backend("cpu", lstm) == "numba"
    assert default_backend("cpu", mamba) == "onnx"
    assert default_backend("cpu", plain) == "torch"  # nothing exported: eager is what runs
    assert default_backend("cpu") == "onnx"
    kind = default_backend("cpu", mamba)
    assert make_backend(mamba, "auto", "cpu").name == kind
    if HAS_CUDA:
        assert default_backend("cuda", mamba) == "cudagraph"


def test_backends_command():
    import typer

    from spikestream.commands.backends import backends

    app = typer.Typer()
    app.command()(backends)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for kind in BACKENDS:
        assert kind in text
    assert "onnxruntime" in text
