"""The artifact verifies itself as a whole before anything is built: a sealed config, every
field validated, files strictly inside the folder, bounded model size, finite weights, and a
non-TorchScript file in place of model.ts refused. Each case fails with one line naming it."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import runtime_helpers as h
from decoder_runtime.backends import make_backend
from models.artifact import ArtifactError, load_artifact, update_config
from models.integrity import seal
from test_artifact import _Payload, art, base  # noqa: F401 - fixtures: a private copy of an exported LSTM

torch.set_num_threads(1)


def _config(art: Path) -> dict:
    return json.loads((art / "config.json").read_text())


def _write(art: Path, config: dict, resealed: bool = True) -> None:
    """Edit the config; `resealed` models someone recomputing the seal (the field checks must hold)."""
    (art / "config.json").write_text(json.dumps(seal(config) if resealed else config))


def test_a_hand_edit_of_the_config_is_refused(art):
    """Fault: bin_width edited 0.025 -> 0.05 loaded silently (R² 0.88 -> -2.2)."""
    config = _config(art)
    config["bin_width"] = 0.05
    _write(art, config, resealed=False)
    with pytest.raises(ArtifactError, match=r"config.json: edited after it was written"):
        load_artifact(art)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(channel_ids=c["channel_ids"][:-3]), r"channel_ids must be 48 integer ids .* found 45"),
    (lambda c: c["normalization"]["x_mean"].__setitem__(3, float("nan")), r"normalization.x_mean\[3\] is nan"),
    (lambda c: c["normalization"].__setitem__("x_mean", c["normalization"]["x_mean"][:5]),
     r"normalization.x_mean must be a list of 48 numbers, found 5"),
    (lambda c: c["normalization"]["x_std"].__setitem__(0, 0.0), r"x_std\[0\] is 0.0; expected a finite number > 0"),
    (lambda c: c.update(bin_width=-1), r"bin_width is -1; expected seconds"),
    (lambda c: c.update(channel_ids=[1] * 48), r"channel_ids repeats an id"),
    (lambda c: c["model"]["hparams"].update(hidden=200_000), r"would hold [\d,]+ parameter and state values, "
                                                            r"over the limit of 50,000,000"),
    (lambda c: c["model"]["hparams"].update(hidden=-4), r"model.hparams.hidden is -4; expected >= 0"),
    (lambda c: c["model"]["hparams"].update(bogus=1), r"cannot rebuild model 'lstm' from its config \(TypeError"),
    (lambda c: c["export"]["onnx"].update(file="../../evil.onnx") or c["files"].update({"../../evil.onnx": "0" * 64}),
     r"file name '../../evil.onnx' points outside the artifact folder"),
    (lambda c: c["files"].update({"/tmp/evil.onnx": "0" * 64}), r"file name '/tmp/evil.onnx' points outside"),
])
def test_every_field_is_validated_before_anything_is_built(art, edit, match):
    config = _config(art)
    edit(config)
    _write(art, config)
    with pytest.raises(ArtifactError, match=match):
        load_artifact(art)


def test_a_removed_fallback_entry_is_refused(tmp_path_factory, tmp_path):
    art = Path(shutil.copytree(h.artifact(h.runtime_base(tmp_path_factory)), tmp_path / "with-fallback"))
    assert load_artifact(art).fallback is not None
    config = _config(art)
    del config["fallback"]
    _write(art, config)
    with pytest.raises(ArtifactError, match=r"lists fallback.safetensors but has no fallback entry"):
        load_artifact(art)


def test_a_weights_file_linked_outside_the_folder_is_refused(art, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(art / "weights.safetensors", outside)
    os.symlink(outside, art / "weights.safetensors")
    with pytest.raises(ArtifactError, match=r"weights.safetensors: is a link to .*elsewhere.safetensors, outside"):
        load_artifact(art)


def test_nan_weights_are_refused(art):
    state = load_file(art / "weights.safetensors")
    name = sorted(state)[0]
    state[name][0] = float("nan")
    save_file(state, art / "weights.safetensors")
    update_config(art, files={"weights.safetensors": "weights.safetensors"})  # hash and seal now "valid"
    with pytest.raises(ArtifactError, match=rf"tensor '{name}' holds NaN or inf"):
        load_artifact(art)


def test_a_pickle_in_place_of_model_ts_is_refused_without_unpickling(art, tmp_path):
    marker = tmp_path / "ran"
    payload = _Payload()
    payload.marker = marker
    (art / "model.ts").write_bytes(pickle.dumps({"constants": payload}))
    update_config(art, files={"model.ts": "model.ts"})
    with pytest.raises(ArtifactError, match=r"model.ts: not a loadable TorchScript archive"):
        make_backend(load_artifact(art), "torchscript", "cpu")
    assert not marker.exists()


def test_writers_reseal_and_refuse_to_bless_an_edit(art):
    """export / adapt-fit write through update_config: what they write verifies, and they do
    not re-seal a config someone edited by hand."""
    update_config(art, adaptation={"method": "norm", "tau_s": 30.0})
    assert load_artifact(art).config["adaptation"]["method"] == "norm"
    config = _config(art)
    config["bin_width"] = 0.05
    _write(art, config, resealed=False)
    with pytest.raises(ArtifactError, match="edited after it was written"):
        update_config(art, adaptation={"method": "none"})


def test_a_format_1_artifact_without_a_seal_still_loads_with_a_warning(art):
    config = _config(art)
    del config["seal"]
    config["format_version"] = 1
    _write(art, config, resealed=False)
    with pytest.warns(UserWarning, match="format-1 artifact, written before configs were sealed"):
        load_artifact(art)
    config["format_version"] = 2  # a sealed format without its seal
    _write(art, config, resealed=False)
    with pytest.raises(ArtifactError, match="has no seal"):
        load_artifact(art)


def test_the_cli_names_the_problem_in_one_line(art):
    config = _config(art)
    config["normalization"]["x_mean"] = config["normalization"]["x_mean"][:5]
    _write(art, config)
    proc = h.cli("replay", str(art), "--speed", "max", "--zmq", "none", "--max-bins", "10",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err
    assert "normalization.x_mean must be a list of 48 numbers, found 5" in " ".join(err.split())
