"""A damaged or hostile artifact is refused with an error naming the problem, never run.

Loading reads tensors from safetensors, the TorchScript archive only after its SHA-256
matched config.json, and ONNX as protobuf in ONNX Runtime: nothing is unpickled from the
artifact. The pickle test proves it with a payload that would leave a file behind.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from decoder_runtime.backends import make_backend
from export_helpers import make_artifact
from models.artifact import ArtifactError, load_artifact, sha256, update_config
from models.integrity import seal

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("artifact")


@pytest.fixture
def art(base, tmp_path) -> Path:
    """A private copy of an exported artifact each test may damage."""
    return Path(shutil.copytree(make_artifact(base, "lstm"), tmp_path / "lstm"))


def _flip_byte(f: Path, where: float = 0.5) -> None:
    data = bytearray(f.read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0xFF
    f.write_bytes(bytes(data))


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_intact_artifact_loads_and_runs(art):
    artifact = load_artifact(art)
    for kind in ("torch", "torchscript", "onnx"):
        make_backend(artifact, kind, "cpu")


@pytest.mark.parametrize("damage", (_flip_byte, _truncate), ids=("tampered", "truncated"))
def test_damaged_weights(art, damage):
    damage(art / "weights.safetensors")
    with pytest.raises(ArtifactError, match=r"weights\.safetensors.*(truncated or modified)"):
        load_artifact(art)


@pytest.mark.parametrize("damage", (_flip_byte, _truncate), ids=("tampered", "truncated"))
@pytest.mark.parametrize("kind,file", (("onnx", "model.onnx"), ("torchscript", "model.ts")))
def test_damaged_export(art, damage, kind, file):
    artifact = load_artifact(art)  # weights are fine; the export file is not
    damage(art / file)
    with pytest.raises(ArtifactError, match=rf"{file.replace('.', r'[.]')}.*(truncated or modified)"):
        make_backend(artifact, kind, "cpu")


@pytest.mark.parametrize("kind,file", (("onnx", "model.onnx"), ("torchscript", "model.ts")))
def test_missing_export_file(art, kind, file):
    artifact = load_artifact(art)
    (art / file).unlink()
    with pytest.raises(ArtifactError, match=f"missing {file}"):
        make_backend(artifact, kind, "cpu")


def test_missing_config(art):
    (art / "config.json").unlink()
    with pytest.raises(ArtifactError, match="missing config.json"):
        load_artifact(art)


def test_garbage_config(art):
    (art / "config.json").write_text('{"model": {"name": "lstm", ')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(art)


def test_not_a_folder(tmp_path):
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        load_artifact(tmp_path / "does-not-exist")


def test_config_that_does_not_fit_the_weights(art):
    """An edited architecture in config.json (re-sealed on purpose) cannot load weights of another shape."""
    config = json.loads((art / "config.json").read_text())
    config["model"]["hparams"]["hidden"] = 64  # weights were saved for 32
    (art / "config.json").write_text(json.dumps(seal(config)))
    with pytest.raises(ArtifactError, match="do not fit the configured model"):
        load_artifact(art)


class _Payload:
    """Unpickling this creates a marker file: proof that something ran."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_never_unpickled(art, tmp_path):
    """A pickle (torch.save-style) in place of safetensors, with its hash recorded, is refused."""
    marker = tmp_path / "payload-ran"
    payload = _Payload()
    payload.marker = marker
    (art / "weights.safetensors").write_bytes(pickle.dumps({"lstm.weight_ih_l0": payload}))
    update_config(art, files={"weights.safetensors": "weights.safetensors"})  # hash now "valid"
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_artifact(art)
    assert not marker.exists()


def test_unlisted_export_is_refused(art):
    """A model.onnx that config.json does not list is not trusted, even if intact."""
    config = json.loads((art / "config.json").read_text())
    del config["files"]["model.onnx"]
    (art / "config.json").write_text(json.dumps(seal(config)))
    with pytest.raises(ArtifactError, match="not recorded in config.json"):
        make_backend(load_artifact(art), "onnx", "cpu")


def test_hash_recorded_for_every_file(art):
    config = json.loads((art / "config.json").read_text())
    assert set(config["files"]) == {"weights.safetensors", "model.ts", "model.onnx"}
    for name, digest in config["files"].items():
        assert sha256(art / name) == digest
