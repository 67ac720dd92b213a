"""NWB files spikestream writes pass the NWB Inspector under its DANDI configuration: a
simulated session (replay.simulator) and a recorded run (decoder_runtime.record, through the
real `replay --record` command). The only findings left are ones the project cannot honestly
fill in (who recorded the data, at which institution)."""
from __future__ import annotations

import subprocess

import numpy as np
import torch
from nwbinspector import inspect_nwbfile, load_config

import runtime_helpers as h
from decoder_runtime.record import read_record
from models.artifact import save_artifact

torch.set_num_threads(1)
NOT_OURS = {"check_experimenter_exists", "check_institution"}  # facts about people, not the software


def findings(path) -> list[str]:
    return [f"{m.importance.name} {m.check_function_name}: {m.message}"
            for m in inspect_nwbfile(nwbfile_path=str(path), config=load_config("dandi"))
            if m.check_function_name not in NOT_OURS]


def test_a_simulated_session_passes_the_inspector(sim_nwb):
    assert findings(sim_nwb.path) == []


def test_a_recorded_run_passes_the_inspector(tmp_path_factory, tmp_path):
    base = h.runtime_base(tmp_path_factory)
    s, art = h.session(base), h.loaded(h.artifact(base))
    trained = save_artifact(tmp_path / "with-provenance", art.model, channel_ids=s.unit_ids, bin_width=s.bin_width,
                            fallback=art.fallback, provenance={"kind": "nwb", "meta": s.meta})
    record = tmp_path / "run.nwb"
    proc = h.cli("replay", str(h.session_file(base)), str(trained), "--speed", "max", "--zmq", "none",
                 "--max-bins", "120", "--backend", "torch", "--record", str(record),
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert findings(record) == []
    rec = read_record(record)
    assert rec["velocity_unit"] == "mm/s"  # the unit of the behaviour it was trained on
    assert rec["run_settings"]["command"] == "replay" and rec["artifact_config"]["model_id"] == "with-provenance"
    assert rec["seq"].shape == (120,)


def test_a_record_without_a_known_subject_still_passes(tmp_path_factory, tmp_path):
    """A live stream brings no subject: the record says only what is certain, and passes."""
    import time

    from decoder_runtime.record import STAGES, SessionRecorder

    base = h.runtime_base(tmp_path_factory)
    art = h.loaded(h.artifact(base))
    t0 = time.monotonic_ns()
    jitter = np.random.default_rng(0)
    rec = SessionRecorder(tmp_path / "live.nwb", art.n_channels, artifact_config=art.config, settings={},
                          description="live", t0_ns=t0, block=10)
    for k in range(30):
        rec.add(np.ones(art.n_channels, np.float32), 0.025 * (k + 1), 0.1, -0.1, 0, k)
        if rec.pending == rec.block:
            stamps = np.zeros((rec.block, len(STAGES)), np.int64)
            arrival = np.arange(k + 1 - rec.block, k + 1) * 25_000_000 + jitter.integers(0, 200_000, rec.block)
            stamps[:, 0] = t0 + 1 + arrival  # arrivals are never perfectly regular
            rec.flush(stamps)
    rec.close({}, [])
    assert findings(tmp_path / "live.nwb") == []
