"""The session record: everything a run did, in NWB, readable back, and safe against a crash."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import json
import textwrap
import time

import numpy as np
import pytest
import torch

import runtime_helpers as h
from decoder_runtime.messages import Flag
from decoder_runtime.record import STAGES, read_record
from decoder_runtime.sources.replay import ReplaySource

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    return h.session(base), h.loaded(h.artifact(base))


def test_a_run_reads_back_with_pynwb(env, tmp_path):
    s, art = env
    n = 130  # three full 40-bin blocks and a partial one
    counts = [s.counts[k] for k in range(n)]
    counts[7] = np.ones(s.n_channels + 1, np.float32)  # wrong length: recorded as a NaN row
    path = tmp_path / "run.nwb"
    r = h.run(art, ReplaySource(counts, s.t[:n], s.bin_width, None, s.n_channels), deadline_ms=0, record=path)

    got = read_record(path)
    good = np.arange(n) != 7
    np.testing.assert_array_equal(got["counts"][good], s.counts[:n][good])
    assert np.isnan(got["counts"][7]).all()
    np.testing.assert_array_equal(got["velocity"], r.velocity)
    np.testing.assert_array_equal(got["flags"], r.flags)
    assert got["flags"][7] == Flag.BAD_LENGTH | Flag.IMPUTED
    np.testing.assert_array_equal(got["seq"], np.arange(n))
    np.testing.assert_array_equal(got["t_src"], s.t[:n])
    np.testing.assert_array_equal(got["stamps"], r.stamps)
    assert got["stamps"].shape == (n, len(STAGES))
    assert (np.diff(got["time"]) > 0).all()
    assert got["artifact_config"] == art.config
    # the whole run description, readable back into the config that made it
    from decoder_runtime.config import RuntimeConfig

    assert RuntimeConfig.from_dict(got["run_settings"]["config"]) == h.config(art.path, deadline_ms=0, record=path)
    assert got["run_settings"]["backend"] == "torch" and got["run_settings"]["command"] == "test"
    assert got["run_summary"] == json.loads(json.dumps(r.summary(), default=float))
    assert got["events"] == list(r.events)


CRASHING_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from decoder_runtime.record import STAGES, SessionRecorder
    rec = SessionRecorder(sys.argv[1], 5, artifact_config={"model_id": "x"}, settings={}, description="crash test",
                          t0_ns=0)
    k = 0
    while True:
        rec.add(np.full(5, k, np.float32), float(k), k, -k, 0, k)
        k += 1
        if rec.pending == rec.block:
            stamps = np.arange(k - rec.block, k, dtype=np.int64)[:, None] * 1_000_000 + np.zeros((1, len(STAGES)), np.int64)
            rec.flush(stamps + 1)
            print(rec.n_written, flush=True)
        time.sleep(0.0005)
""")


def test_a_killed_writer_leaves_a_readable_file_up_to_the_last_flush(tmp_path):
    path = tmp_path / "crash.nwb"
    env = dict(os.environ, PYTHONPATH=str(h.REPO))
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        flushed = 0
        while flushed < 120:
            line = proc.stdout.readline()
            assert line, "the writer exited early"
            flushed = int(line)
        time.sleep(0.01)  # kill it mid-block, with rows pending
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    got = read_record(path)
    n = got["seq"].shape[0]
    assert n >= 120 and n % 40 == 0  # whole blocks only: at most the last (unflushed) block is lost
    np.testing.assert_array_equal(got["seq"], np.arange(n))
    np.testing.assert_array_equal(got["counts"], np.repeat(np.arange(n, dtype=np.float32)[:, None], 5, 1))
    np.testing.assert_array_equal(got["velocity"][:, 1], -np.arange(n, dtype=np.float32))
    assert got["artifact_config"] == {"model_id": "x"}
    assert "run_summary" not in got  # the run never closed
