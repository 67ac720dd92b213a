"""End to end through the real CLI: an LSL outlet process -> `serve` process -> ZeroMQ here,
and `replay` reproducing the offline R²."""
from __future__ import annotations

import json
import signal
import subprocess

import numpy as np
import pylsl
import pytest
import torch
import zmq

import runtime_helpers as h
from decoder_runtime.messages import Flag, unpack
from decoder_runtime.publish import connect_subscriber
from decoder_runtime.record import read_record
from replay.scoring import r2_scores

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    return base, h.session(base), h.artifact(base)


def test_lsl_outlet_to_serve_to_subscriber(env, tmp_path):
    """Every bin's velocity arrives, in order, seq contiguous, equal to the artifact's offline
    step outputs; SIGINT ends `serve` cleanly with a complete record."""
    base, s, art_path = env
    art = h.loaded(art_path)
    name = h.unique("e2e")
    addr = f"tcp://127.0.0.1:{h.free_port()}"
    record = tmp_path / "serve.nwb"
    ctx = zmq.Context()
    sub = connect_subscriber(addr, context=ctx)  # connects (and retries) before serve binds
    outlet = h.cli("stream-nwb", str(h.session_file(base)), "--lsl-name", name, "--source-id", name,
                   "--speed", "2", "--wait-consumer", "120", "--linger", "0",
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serve = h.cli("serve", str(art_path), "--lsl-name", name, "--source-id", name, "--zmq", addr,
                  "--backend", "torch", "--deadline-ms", "200", "--record", str(record), "--wait-subscriber", "120",
                  "--resolve-timeout", "120", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    msgs, recv_lsl = [], []
    try:
        while len(msgs) < 120:
            assert sub.poll(120_000), "no velocity within 120 s"
            msgs.append(unpack(sub.recv_multipart()[1]))
            recv_lsl.append(pylsl.local_clock())
        serve.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = serve.communicate(timeout=60)
        while sub.poll(500):
            msgs.append(unpack(sub.recv_multipart()[1]))
            recv_lsl.append(pylsl.local_clock())
    finally:
        for p in (serve, outlet):
            p.kill()
            p.wait()
        sub.close()
        ctx.term()
    assert serve.returncode == 0, out
    n = len(msgs)
    assert [m["seq"] for m in msgs] == list(range(n))
    vel = np.array([m["vel"] for m in msgs], dtype=np.float32)
    np.testing.assert_allclose(vel, h.offline(art.model, s.counts[:n]), rtol=1e-5, atol=1e-6)
    flags = np.array([m["flags"] for m in msgs])
    assert not (flags & ~int(Flag.LATE)).any()  # LATE only if this busy machine lagged
    assert {m["model"] for m in msgs} == {art.model_id}
    e2e = (np.array(recv_lsl) - np.array([m["t_src"] for m in msgs])) * 1e6
    print(f"\nbin scheduled -> received here: p50 {np.percentile(e2e, 50):.0f} us, p99 {np.percentile(e2e, 99):.0f} us")

    rec = read_record(record)
    assert rec["seq"].shape[0] == n  # every bin sent was recorded, the record closed cleanly
    np.testing.assert_array_equal(rec["counts"], s.counts[:n])
    np.testing.assert_array_equal(rec["velocity"], vel)
    assert rec["run_summary"]["n_bins"] == n and rec["run_settings"]["command"] == "serve"
    assert rec["artifact_config"]["model_id"] == art.model_id


def _replay(env, tmp_path, n: int, *args: str) -> tuple[dict, dict, str]:
    """Run `replay` on the first n bins (torch backend); its summary, the offline R², its output.

    Whatever the path, the model's outputs for every bin must score as the offline stream does.
    """
    base, s, art_path = env
    summary = tmp_path / "summary.json"
    proc = h.cli("replay", str(h.session_file(base)), str(art_path), *args, "--backend", "torch",
                 "--max-bins", str(n), "--summary-json", str(summary),
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    got = json.loads(summary.read_text())
    offline = r2_scores(h.offline(h.loaded(art_path).model, s.counts[:n]), s.velocity[:n], s.valid[:n])
    assert got["n_bins"] == n
    assert abs(got["r2_model"]["r2"] - offline["r2"]) < 1e-6  # the model's outputs, every bin
    return got, offline, out


def test_replay_at_max_speed_reproduces_the_offline_r2(env, tmp_path):
    got, offline, out = _replay(env, tmp_path, 1200, "--speed", "max", "--zmq", f"tcp://127.0.0.1:{h.free_port()}")
    if got["deadline_misses"] == 0:  # no bin was answered by the fallback: the sent R² is the same
        assert abs(got["r2"]["r2"] - offline["r2"]) < 1e-6
    assert "R²" in out and "p99.9" in out


@pytest.mark.slow
def test_replay_via_lsl(env, tmp_path):
    """The same session through a real LSL outlet in another process (`--via-lsl`)."""
    got, _, _ = _replay(env, tmp_path, 400, "--speed", "4", "--via-lsl", "--zmq", "none")
    assert got["pacing"]["p99_us"] >= 0


def test_replaying_the_training_session_scores_its_held_out_block_apart(env):
    """Whole-session R² on the training session includes fitted bins; the test block is named."""
    from replay.scoring import held_out_block

    _, s, _ = env
    prov = {"n_bins": s.n_bins, "meta": {"nwb_identifier": s.meta["nwb_identifier"]},
            "split": {"train": [0, 100], "val": [100, 150], "test": [150, 300]}}
    assert held_out_block({"provenance": prov}, s.n_bins, s.meta['nwb_identifier']) == (150, 300)
    other = {**prov, "meta": {"nwb_identifier": "another-session"}}
    assert held_out_block({"provenance": other}, s.n_bins, s.meta['nwb_identifier']) is None
    assert held_out_block({"provenance": {**prov, "n_bins": s.n_bins + 1}}, s.n_bins, s.meta['nwb_identifier']) is None
    assert held_out_block({}, s.n_bins, s.meta['nwb_identifier']) is None
