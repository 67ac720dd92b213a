"""Velocity as an LSL stream, read by a real inlet: every bin's vx, vy, seq and flags, stamped
with the bin's source timestamp, in a stream that describes itself; side by side with ZeroMQ
through the engine's one `send`, and from the real `replay --lsl-out` command."""
from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pylsl
import pytest
import torch

import runtime_helpers as h
from decoder_runtime.lsl_out import VelocityOutlet
from decoder_runtime.messages import Flag, unpack
from decoder_runtime.publish import Publisher, connect_subscriber
from decoder_runtime.sources.replay import ReplaySource

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = h.runtime_base(tmp_path_factory)
    return base, h.session(base), h.loaded(h.artifact(base))


def _inlet(name: str, timeout_s: float = 15) -> pylsl.StreamInlet:
    found = pylsl.resolve_byprop("name", name, 1, timeout_s)
    assert found, f"no LSL stream {name!r}"
    inlet = pylsl.StreamInlet(found[0], max_buflen=60)
    inlet.open_stream(10)
    return inlet


def _describe(inlet: pylsl.StreamInlet) -> dict:
    info = inlet.info(10)
    desc = info.desc()
    return {"type": info.type(), "rate": info.nominal_srate(), "format": info.channel_format(),
            "labels": info.get_channel_labels(), "units": info.get_channel_units(),
            "model_id": desc.child_value("model_id"),
            "flags": {f.child_value("name"): int(f.child_value("bit")) for f in _children(desc.child("flags"), "flag")}}


def _children(node, name):
    child = node.child(name)
    while not child.empty():
        yield child
        child = child.next_sibling(name)


def test_every_bin_reaches_an_lsl_inlet_beside_zeromq(env):
    _, s, art = env
    n = 120
    t = (np.arange(n) + 1) * s.bin_width
    t[60] += 100.0  # one bad stamp: its flag must come through
    name = h.unique("velocity")
    outlet = VelocityOutlet(name, model_id=art.model_id, velocity_unit="mm/s")
    addr = f"tcp://127.0.0.1:{h.free_port()}"
    pub, sub = Publisher(addr), connect_subscriber(addr)
    assert pub.wait_for_subscriber(5)
    inlet = _inlet(name)
    assert outlet.wait_for_consumers(10)
    try:
        r = h.run(art, ReplaySource(s.counts[:n], t, s.bin_width, None), outputs=[pub, outlet], deadline_ms=0)
        samples, stamps = [], []
        until = time.monotonic() + 15
        while len(samples) < n and time.monotonic() < until:
            chunk, ts = inlet.pull_chunk(timeout=0.5)
            samples += chunk
            stamps += ts
        msgs = [unpack(sub.recv_multipart()[1]) for _ in range(n)]
        meta = _describe(inlet)
    finally:
        inlet.close_stream()
        outlet.close()
        pub.close()
        sub.close()
    got = np.asarray(samples, np.float32)
    assert got.shape == (n, 4)
    np.testing.assert_array_equal(got[:, :2], r.velocity)  # float32 both ways: exact
    np.testing.assert_array_equal(got[:, 2], np.arange(n))
    np.testing.assert_array_equal(got[:, 3].astype(np.int64), r.flags)
    assert int(got[60, 3]) == Flag.JUMP
    np.testing.assert_allclose(stamps, t, rtol=0, atol=1e-9)  # the source bin's timestamp
    assert [m["vel"] for m in msgs] == got[:, :2].tolist()  # ZeroMQ got the same
    assert meta["type"] == "Velocity" and meta["rate"] == pylsl.IRREGULAR_RATE and meta["format"] == pylsl.cf_float32
    assert meta["labels"] == ["vx", "vy", "seq", "flags"] and meta["units"] == ["mm/s", "mm/s", "count", "bitfield"]
    assert meta["model_id"] == art.model_id
    assert meta["flags"]["jump"] == int(Flag.JUMP) and meta["flags"]["gap"] == int(Flag.GAP)


def test_replay_lsl_out_publishes_a_stream_from_the_cli(env):
    base, _, _ = env
    name = h.unique("replay-out")
    proc = h.cli("replay", str(h.session_file(base)), str(h.artifact(base)), "--speed", "1", "--zmq", "none",
                 "--backend", "torch", "--lsl-out", name, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        inlet = _inlet(name, timeout_s=120)
        first, _ = inlet.pull_sample(timeout=30)
        assert first is not None
        seq = [first[2]]
        for _ in range(20):
            sample, _ = inlet.pull_sample(timeout=5)
            seq.append(sample[2])
        meta = _describe(inlet)
        proc.send_signal(signal.SIGINT)  # a minute-long session: stop it cleanly
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, out
    assert np.all(np.diff(seq) == 1)  # consecutive bins
    assert meta["model_id"] == "lstm-with-fallback" and meta["labels"][:2] == ["vx", "vy"]
