"""The LSL source: resolution and its errors, clock-corrected timestamps, bad bins over a real
outlet, and a stream that drops and comes back (outlet process killed and restarted)."""
from __future__ import annotations

import subprocess
import threading
import time

import numpy as np
import pylsl
import pytest
import torch

import runtime_helpers as h
from decoder_runtime.messages import Flag, unpack
from decoder_runtime.publish import Publisher, connect_subscriber
from decoder_runtime.sources import SourceError
from decoder_runtime.sources.lsl import CountsOutlet, LSLSource

torch.set_num_threads(1)
PERIOD = 0.025


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    return base, h.session(base), h.loaded(h.artifact(base))


def test_no_stream_is_a_clear_error():
    with pytest.raises(SourceError, match="no LSL stream matching name='nothing-here-.*' found within 0.5 s"):
        LSLSource(n_channels=4, period=PERIOD, name=h.unique("nothing-here"), resolve_timeout_s=0.5)
    with pytest.raises(SourceError, match="at least one"):
        LSLSource(n_channels=4, period=PERIOD)


@pytest.mark.parametrize("channels,rate,match", [(5, 1 / PERIOD, "has 5 channels; the artifact decodes 4"),
                                                 (4, 100.0, "nominal rate 100 Hz.*need 40 Hz")])
def test_a_stream_that_does_not_fit_the_artifact_is_refused(channels, rate, match):
    name = h.unique("misfit")
    outlet = CountsOutlet(name, channels, 1 / rate, source_id=name)
    try:
        with pytest.raises(SourceError, match=match):
            LSLSource(n_channels=4, period=PERIOD, name=name, resolve_timeout_s=10)
    finally:
        outlet.close()


def test_bad_bins_and_a_late_burst_over_a_real_outlet(env):
    """Pushed live with explicit timestamps: the source hands them over clock-corrected, and
    the engine flags NaN, negative, backwards and late bins as from any other source."""
    _, s, art = env
    name = h.unique("badbins")
    outlet = CountsOutlet(name, s.n_channels, PERIOD, source_id=name)
    source = LSLSource(n_channels=s.n_channels, period=PERIOD, name=name, resolve_timeout_s=10)
    n = 40
    rows = [s.counts[k].copy() for k in range(n)]
    rows[10][0] = np.nan
    rows[11][1] = -1
    result: list = []
    runner = threading.Thread(target=lambda: result.append(h.run(art, source, deadline_ms=0, max_bins=n)))
    runner.start()
    assert outlet.wait_for_consumers(10)  # the engine connects when it is ready for bin one
    stamps = np.zeros(n)
    for k in range(30):  # on time: stamped now, 5 ms apart
        stamps[k] = pylsl.local_clock() if k != 12 else stamps[11] - 0.002  # 12: out of order
        outlet.push(rows[k], stamps[k])
        time.sleep(0.005)
    time.sleep(0.5)  # the source stalls, then delivers ten bins captured during the stall
    for k in range(30, n):
        stamps[k] = stamps[29] + (k - 29) * PERIOD
        outlet.push(rows[k], stamps[k])
    runner.join(30)
    outlet.close()
    source.close()
    r = result[0]
    assert r.n_bins == n
    offset = float(np.median(r.t_src[:10] - stamps[:10]))
    assert abs(offset) < 0.01  # liblsl's clock correction (same host: ~0)
    np.testing.assert_allclose(r.t_src, stamps + offset, atol=1e-6)
    f = r.flags
    assert f[10] & Flag.NONFINITE and f[11] & Flag.NEGATIVE and f[12] & Flag.BACKWARDS
    assert (f[30:] == Flag.LATE).all()  # late, and otherwise decoded like any bin
    assert not (f[13:30] & ~int(Flag.LATE)).any()  # (LATE there only if this busy machine lagged)


def _stream_nwb(nwb, name: str, speed: str = "1") -> subprocess.Popen:
    return h.cli("stream-nwb", str(nwb), "--lsl-name", name, "--source-id", name, "--speed", speed,
                 "--wait-consumer", "60", "--linger", "0", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_dropped_stream_that_returns_is_flagged_and_decoded_from_a_fresh_state(env):
    base, s, art = env
    nwb = h.session_file(base)
    name = h.unique("drop")
    first = _stream_nwb(nwb, name)
    second = None
    addr = f"tcp://127.0.0.1:{h.free_port()}"
    pub = Publisher(addr)
    sub = connect_subscriber(addr)
    assert pub.wait_for_subscriber(5)
    stop = threading.Event()
    try:
        source = LSLSource(n_channels=s.n_channels, period=PERIOD, name=name, source_id=name, resolve_timeout_s=60)
        result: list = []
        runner = threading.Thread(target=lambda: result.append(
            h.run(art, source, outputs=[pub], stop=stop, deadline_ms=0, on_gap="reset")))
        runner.start()
        msgs = []

        def receive(until: int, quiet_s: float | None = None) -> None:
            while len(msgs) < until:
                if not sub.poll(int((quiet_s or 60) * 1000)):
                    assert quiet_s is not None, "no message within 60 s"
                    return
                msgs.append(unpack(sub.recv_multipart()[1]))

        receive(60)
        first.kill()  # the outlet's process dies mid-stream
        first.wait()
        receive(10_000, quiet_s=1.0)  # whatever was in flight
        before = len(msgs)
        second = _stream_nwb(nwb, name)  # same source_id: liblsl recovers the inlet
        receive(before + 60)
        stop.set()
        runner.join(10)
        assert not runner.is_alive()
    finally:
        stop.set()
        for p in (first, second):
            if p is not None:
                p.kill()
                p.wait()
        pub.close()
        sub.close()
    r = result[0]
    source.close()
    assert [m["seq"] for m in msgs] == list(range(len(msgs)))
    gaps = np.flatnonzero(r.flags & Flag.GAP)
    assert gaps.tolist() == [before]
    assert r.flags[before] & Flag.RESET
    assert not (r.flags & ~int(Flag.GAP | Flag.RESET | Flag.LATE)).any()  # LATE only if this machine lags
    # both outlets played the session from its first bin; the state restarted at the gap
    ref_first = h.offline(art.model, s.counts[:before])
    ref_second = h.offline(art.model, s.counts[:r.n_bins - before])
    np.testing.assert_allclose(r.velocity[:before], ref_first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.velocity[before:], ref_second, rtol=1e-5, atol=1e-6)
    assert any("silent" in e for e in r.events) and any("returned" in e for e in r.events)
