"""Channel identity for NWB replay: the session's unit ids are matched to the artifact's
channel_ids by id (reordered when the same set, refused with the differences when not), through
the real `replay` command on a real NWB file."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

import runtime_helpers as h
from decoder_runtime.channels import align_session, match_channels
from decoder_runtime.sources import SourceError
from models.artifact import save_artifact

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = h.runtime_base(tmp_path_factory)
    return base, h.session(base), h.loaded(h.artifact(base))


def _with_ids(art, folder, ids):
    return save_artifact(folder, art.model, channel_ids=ids, bin_width=art.bin_width, fallback=art.fallback)


def test_align_session_reorders_by_unit_id_and_lists_differences(env):
    _, s, _ = env
    ids = s.unit_ids[::-1].tolist()
    aligned, note = align_session(s, ids)
    np.testing.assert_array_equal(aligned.counts, s.counts[:, ::-1])
    np.testing.assert_array_equal(aligned.unit_ids, ids)
    assert "reordered by label" in note
    same, note = align_session(s, s.unit_ids.tolist())
    assert same is s and "match the artifact's channel_ids in order" in note
    with pytest.raises(SourceError, match=r"1 of the artifact's channels missing \(999\); "
                                          rf"1 channels the artifact does not know \({s.unit_ids[-1]}\)"):
        align_session(s, [*s.unit_ids[:-1].tolist(), 999])
    with pytest.raises(SourceError, match="names a channel more than once"):
        match_channels([1, 2], ["1", "1"], "x")


def test_replay_decodes_a_reordered_array_in_the_artifact_order(env, tmp_path):
    """Fault: only the channel count was checked; a re-mapped array decoded silently wrong."""
    base, s, art = env
    ids = s.unit_ids[::-1].tolist()
    path = _with_ids(art, tmp_path / "reversed", ids)
    summary = tmp_path / "summary.json"
    n = 200
    proc = h.cli("replay", str(h.session_file(base)), str(path), "--speed", "max", "--backend", "torch",
                 "--zmq", "none", "--max-bins", str(n), "--deadline-ms", "0", "--summary-json", str(summary),
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "24 reordered by label" in " ".join(out.split())  # (rich wraps lines)
    from replay.scoring import r2_scores
    ref = r2_scores(h.offline(art.model, s.counts[:n, ::-1]), s.velocity[:n], s.valid[:n])
    assert abs(json.loads(summary.read_text())["r2_model"]["r2"] - ref["r2"]) < 1e-6


def test_replay_refuses_a_session_whose_units_are_not_the_artifacts(env, tmp_path):
    base, s, art = env
    path = _with_ids(art, tmp_path / "other-day", [*s.unit_ids[:-2].tolist(), 1001, 1002])
    proc = h.cli("replay", str(h.session_file(base)), str(path), "--speed", "max", "--zmq", "none",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in err
    assert "2 of the artifact's channels missing (1001, 1002)" in " ".join(err.split())
