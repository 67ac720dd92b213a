"""Closed-loop recalibration: ReFIT labels on a hand-built trajectory, and a recalibrated
artifact (from a real closed-loop record written with pynwb) that loads and runs in every
CPU backend with parity, with provenance naming its record and parent."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from export_helpers import assert_parity, bins, eager_reference, make_artifact, stream
from replay.closed_loop_record import intention_labels, read_record, refit_labels


def test_refit_labels_on_a_hand_built_trajectory():
    bw = 0.025
    t = np.arange(7) * bw
    target = np.array([[100.0, 0.0]] * 6 + [[np.nan, np.nan]])
    cursor = np.array([[0, 0], [0, 0], [0, 0], [50, 50], [90, 5], [95, 0], [100, 0]], dtype=float)
    decoded = np.array([[0, 30], [1, 1], [0, 30], [3, 4], [7, -2], [np.nan, np.nan], [1, 1]], dtype=float)
    labels, keep = refit_labels(decoded, cursor, target, radius=20.0, t=t, trial_start=np.array([0.0]),
                                onset_skip_s=2 * bw)
    # bins 0-1: the target is not seen yet; 5: not answered; 6: no target
    assert keep.tolist() == [False, False, True, True, True, False, False]
    assert np.allclose(labels[2], [30.0, 0.0])  # (0, 30) turned toward (100, 0), speed 30 kept
    assert np.allclose(labels[3], 5.0 * np.array([1.0, -1.0]) / np.sqrt(2))  # speed 5, toward the target
    assert np.allclose(labels[4], 0.0)  # inside the 20 mm target: holding
    assert np.isnan(labels[[0, 1, 5, 6]]).all()
    kept = keep & (np.linalg.norm(target - cursor, axis=1) > 20)
    assert np.allclose(np.linalg.norm(labels[kept], axis=1), np.linalg.norm(decoded[kept], axis=1))


def test_intention_labels_are_the_command_its_spikes_carry():
    intention = np.arange(10, dtype=float)[:, None] * np.ones((1, 2))
    target = np.ones((10, 2))
    target[9] = np.nan
    labels, keep = intention_labels(intention, target, lead_bins=3)
    assert keep.tolist() == [False] * 3 + [True] * 6 + [False]
    assert np.array_equal(labels[3:9, 0], np.arange(6))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("recal")


def _record(base, name: str):
    """A real closed-loop session of the artifact (fast mode), recorded in NWB."""
    from benchmarks.closed_loop_session import SessionOptions, run_session

    parent = make_artifact(base, name)
    record = base / f"{name}-record.nwb"
    if not record.is_file():
        summary = run_session(SessionOptions(artifact=parent, trials=6, timeout=1.5, backend="torch"), record=record)
        assert summary["record_critical"] == []
    return parent, record


@pytest.mark.parametrize("name,kinds", [("lstm", ("torch", "torchscript", "onnx", "numba")),
                                        ("kalman", ("torch", "torchscript", "onnx"))])
def test_recalibrated_artifact_runs_in_every_backend(base, name, kinds):
    from decoder_runtime.backends import make_backend
    from models.artifact import load_artifact
    from training.export import export_artifact
    from training.recalibrate import RecalibrationSpec, recalibrate

    parent, record = _record(base, name)
    rec = read_record(record)
    out = base / f"{name}-recal"
    summary = recalibrate(RecalibrationSpec(record=record, parent=parent, out=out, epochs=1))
    assert summary["labels"]["labelled"] > 0.5 * rec.counts.shape[0]
    export_artifact(out)
    art = load_artifact(out)
    prov = art.config["provenance"]
    assert prov["kind"] == "closed-loop recalibration" and prov["method"] == "refit"
    assert prov["record"]["path"] == str(record.resolve()) and prov["parent"]["model_id"] == load_artifact(parent).model_id
    assert np.isfinite(art.config["metrics"]["test"]["r2"])
    counts = bins(base)
    ref = eager_reference(art.model, counts)
    for kind in kinds:
        assert_parity(stream(make_backend(art, kind, "cpu").step, counts), ref, art.model)


def test_recalibrate_cli_and_a_bad_record(base, tmp_path):
    from spikestream.cli import _register, app

    _register()
    parent, record = _record(base, "lstm")
    runner = CliRunner()
    res = runner.invoke(app, ["recalibrate", str(record), "--from", str(parent), "--out", str(tmp_path / "r2"),
                              "--epochs", "1", "--summary-json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s.json").read_text())["model"] == "lstm"
    bad = tmp_path / "bad.nwb"
    bad.write_bytes(record.read_bytes()[:4096])  # a truncated file
    res = runner.invoke(app, ["recalibrate", str(bad), "--from", str(parent), "--out", str(tmp_path / "r3")])
    assert res.exit_code == 2 and "closed-loop record" in res.output
    assert not (tmp_path / "r3").exists()


def test_blocks_recalibrate_between_them(base, tmp_path):
    from benchmarks.closed_loop_blocks import run_blocks
    from benchmarks.closed_loop_session import SessionOptions

    parent = make_artifact(base, "kalman")
    result = run_blocks(SessionOptions(artifact=parent, trials=6, timeout=1.5, backend="torch"), 1, tmp_path)
    b0, b1 = result["blocks"]
    assert b0["artifact_path"] == str(parent) and b1["artifact_path"] == str(tmp_path / "block-1" / "artifact")
    assert b1["seed"] == b0["seed"] + 1000 and b1["recalibration"]["labels"]["labelled"] > 0
    assert (tmp_path / "block-1" / "record.nwb").is_file() and (tmp_path / "blocks.json").is_file()
