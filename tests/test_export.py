"""Export of every model's single-bin step to TorchScript and ONNX, checked independently.

export_artifact verifies its own files; these tests re-check them from the outside: the
files load with torch.jit.load / onnx.checker / ONNX Runtime, the graph's inputs and
outputs are the ones config.json records, the hashes are recorded, and a 2,000-bin
stream through each file equals eager torch with the state carried by the caller.
"""
from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from export_helpers import assert_parity, bins, eager_reference, make_artifact, stream
from models.artifact import load_artifact, sha256
from models.registry import MODEL_NAMES
from spikestream.commands.training import export
from training.export import DEFAULT_OPSET, TOLERANCE, export_artifact, parse_formats

torch.set_num_threads(1)
TOL = TOLERANCE


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


def _ts_step(module):
    def step(counts, state):
        with torch.no_grad():
            out = module(torch.from_numpy(counts), *(torch.from_numpy(s) for s in state))
        return out[0].numpy(), [o.numpy() for o in out[1:]]
    return step


def _ort_step(path, spec):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i["name"] for i in spec["inputs"]]

    def step(counts, state):
        out = sess.run(None, dict(zip(names, [counts, *state])))
        return out[0], out[1:]
    return step


def _carry(step, model):
    """Wrap a (counts, state) -> (y, state) function as a stateful per-bin step."""
    state = [s.numpy() for s in model.init_state(1)]

    def one(x):
        nonlocal state
        y, state = step(x.reshape(1, -1), state)
        return y
    return one


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_every_model(base, name):
    path = make_artifact(base, name)
    config = json.loads((path / "config.json").read_text())
    spec = config["export"]
    artifact = load_artifact(path)
    model = artifact.model

    # config: names and shapes match the model's state, hashes recorded, versions stated
    assert [i["name"] for i in spec["inputs"]] == ["counts", *model.state_names]
    assert [o["name"] for o in spec["outputs"]] == ["velocity", *(f"{n}_out" for n in model.state_names)]
    assert spec["inputs"][0]["shape"] == [1, artifact.n_channels]
    assert spec["outputs"][0]["shape"] == [1, 2]
    assert [s["shape"] for s in spec["state"]] == [list(s.shape) for s in model.init_state(1)]
    for f in ("model.ts", "model.onnx"):
        assert config["files"][f] == sha256(path / f)
    assert spec["onnx"]["opset"] == DEFAULT_OPSET
    assert spec["onnx"]["exporter"] in ("dynamo", "torchscript")
    assert set(spec["versions"]) == {"torch", "onnx", "onnxruntime"}

    # ONNX: a valid model at the recorded opset with exactly the recorded I/O
    proto = onnx.load(str(path / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {DEFAULT_OPSET}
    assert [i.name for i in proto.graph.input] == [i["name"] for i in spec["inputs"]]
    assert [o.name for o in proto.graph.output] == [o["name"] for o in spec["outputs"]]

    # both files, streamed with state carried by the caller, equal eager torch
    counts = bins(base)
    ref = eager_reference(model, counts)
    ts = torch.jit.load(str(path / "model.ts"))
    for step in (_ts_step(ts), _ort_step(path / "model.onnx", spec)):
        assert_parity(stream(_carry(step, model), counts), ref, model)


def test_legacy_exporter_path(base, tmp_path):
    """The fallback path on its own: forced legacy exporter, recorded as such, still exact."""
    import shutil

    path = tmp_path / "mamba"
    shutil.copytree(make_artifact(base, "mamba", export=False), path)
    entry = export_artifact(path, formats="onnx", exporter="torchscript")
    assert entry["onnx"]["exporter"] == "torchscript"
    assert entry["onnx"]["max_diff_normalised"] <= TOL
    assert "torchscript" not in entry  # only what was asked for
    model = load_artifact(path).model
    counts = bins(base)[:300]
    got = stream(_carry(_ort_step(path / "model.onnx", entry), model), counts)
    assert_parity(got, eager_reference(model, counts), model)


def test_reexport_keeps_other_format(base, tmp_path):
    import shutil

    path = tmp_path / "lstm"
    shutil.copytree(make_artifact(base, "lstm"), path)
    before = json.loads((path / "config.json").read_text())
    entry = export_artifact(path, formats=["torchscript"])
    after = json.loads((path / "config.json").read_text())
    assert entry["onnx"] == before["export"]["onnx"]
    assert after["files"]["model.onnx"] == before["files"]["model.onnx"]
    load_artifact(path)  # weights still verify


def test_bad_options_are_clear(base):
    with pytest.raises(ValueError, match="unknown export format"):
        parse_formats("torchscript,tflite")
    with pytest.raises(ValueError, match="unknown ONNX exporter"):
        export_artifact(make_artifact(base, "kalman"), exporter="magic")


def test_cli_export(base, tmp_path):
    import shutil

    import typer

    path = tmp_path / "kalman"
    shutil.copytree(make_artifact(base, "kalman", export=False), path)
    app = typer.Typer()
    app.command()(export)
    result = CliRunner().invoke(app, [str(path), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert "model.onnx" in result.output and (path / "model.onnx").is_file()
    assert not (path / "model.ts").exists()
    bad = CliRunner().invoke(app, [str(tmp_path / "nope")])
    assert bad.exit_code == 1 and "not an artifact folder" in " ".join(bad.output.split())


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_default_size(base, name):
    """Default-size models export with both exporters' default path and stay exact."""
    path = make_artifact(base, name, size="default")
    spec = json.loads((path / "config.json").read_text())["export"]
    assert spec["torchscript"]["max_diff_normalised"] <= TOL
    assert spec["onnx"]["max_diff_normalised"] <= TOL
    model = load_artifact(path).model
    counts = bins(base, "default")
    got = stream(_carry(_ort_step(path / "model.onnx", spec), model), counts)
    assert_parity(got, eager_reference(model, counts), model)
