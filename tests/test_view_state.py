"""The view's rules (decoder_runtime/view/state.py) and the status message, without a browser.

Message bodies are built with the runtime's own MessagePacker and StatusReporter, so these
are the bytes a runtime sends.
"""
from __future__ import annotations

import msgpack
import numpy as np
import zmq

from decoder_runtime.adaptation import AdaptSettings, build_chain
from decoder_runtime.adaptation.reference import TrainingReference
from decoder_runtime.messages import Flag, MessagePacker
from decoder_runtime.publish import connect_subscriber
from decoder_runtime.status import TOPIC as STATUS, StatusReporter, unpack as unpack_status
from decoder_runtime.view.state import TASK, VELOCITY, ViewState
import runtime_helpers as h


def vel(seq: int, vx: float = 0.5, flags: int = 0, model: str = "m1") -> bytes:
    return MessagePacker(model).pack(seq, seq * 0.025, vx, -vx, 120.0, flags, 0, (1, 2, 3))


def feed(state: ViewState, seqs, t0: float = 100.0, dt: float = 0.025, **kw) -> float:
    t = t0
    for s in seqs:
        state.ingest(VELOCITY, vel(s, **kw), t)
        t += dt
    return t


def test_bins_flags_and_run_counters():
    st = ViewState()
    feed(st, range(10))
    st.ingest(VELOCITY, vel(10, flags=int(Flag.DEADLINE | Flag.FALLBACK)), 101.0)
    up = st.take_update(101.0)
    assert [b[2] for b in up["bins"]] == list(range(11))
    assert up["bins"][-1][4:6] == [0.5, -0.5]
    assert up["run"]["flags"] == {"deadline": 1, "fallback": 1}
    assert up["run"]["bins"] == 11 and up["run"]["last_seq"] == 10 and up["restarts"] == 0
    assert st.take_update(101.1)["bins"] == []  # taken once


def test_restart_when_seq_goes_back_or_the_model_changes():
    st = ViewState()
    t = feed(st, range(50))
    t = feed(st, range(20), t0=t)  # the decoder restarted: seq from 0 again
    feed(st, range(20, 25), t0=t, model="m2")  # a new model, seq carries on
    kinds = [m["text"] for m in st.markers]
    assert kinds == ["restart (seq 49 -> 0)", "restart (model m1 -> m2)"]
    assert st.restarts == 2 and st.run["bins"] == 5 and st.run["model"] == "m2"


def test_silence_and_missing_bins_are_marked():
    st = ViewState(silence_s=0.5)
    t = feed(st, range(10))
    feed(st, range(13, 15), t0=t + 2.0)  # 3 bins lost, and 2 s without data
    assert [(m["kind"], m["text"]) for m in st.markers] == [("missing", "3 bins missing"),
                                                            ("silence", "no data for 2.0 s")]
    assert st.run["missing"] == 3


def test_snapshot_holds_the_window_and_serials_let_a_page_skip_repeats():
    st = ViewState(window_s=1.0)
    feed(st, range(100))  # 2.5 s of bins
    snap = st.snapshot(now=100.0 + 2.5)
    assert [b[2] for b in snap["bins"]] == list(range(60, 100))  # the last second
    assert snap["upto"] == snap["bins"][-1][0]
    up = st.take_update(102.5)  # what was pending is all at or below the snapshot's serial
    assert max(b[0] for b in up["bins"]) <= snap["upto"]


def test_bad_messages_are_counted_not_raised():
    st = ViewState()
    st.ingest(VELOCITY, b"\x00not msgpack", 1.0)
    st.ingest(VELOCITY, msgpack.packb({"v": 99}), 1.0)
    st.ingest(STATUS, msgpack.packb([1, 2]), 1.0)
    st.ingest(TASK, msgpack.packb({"v": 1}), 1.0)
    assert st.bad == 4 and not st.bins


def test_task_and_status_are_kept_json_safe():
    st = ViewState()
    st.ingest(TASK, msgpack.packb({"v": 1, "cursor": [1.0, float("nan")], "target": None, "trial": 3}), 5.0)
    up = st.take_update(5.0)
    assert up["task"]["cursor"] == [1.0, None] and up["task"]["rx"] == 5.0
    assert "task" not in st.take_update(5.1)  # sent when new only


def test_status_reports_identity_rate_and_channel_health():
    rates = np.linspace(0.2, 1.5, 12)
    ref = TrainingReference.from_arrays(rates, np.sqrt(rates), [0.0, 0.0], [1.0, 1.0], 0.025)
    chain = build_chain(ref, AdaptSettings(method="health"))
    rng = np.random.default_rng(0)
    for _ in range(400):  # channel 11 (the busiest) goes silent for 10 s: dead
        x = rng.poisson(rates).astype(np.float32)
        x[11] = 0
        chain.process(x)
    sent: list[bytes] = []
    rep = StatusReporter(sent.append, model="m", backend="numba", device="cpu", artifact_sha256="ab" * 32,
                         code="abc123", source={"kind": "replay"}, adapter=chain, interval_s=1.0)
    rep.tick(0)
    rep.tick(5)  # within the interval: nothing
    assert len(sent) == 1
    msg = unpack_status(sent[0])
    assert msg["health"] == {"n_channels": 12, "dead": [11], "stuck": [], "noisy": [], "masked": [11]}
    assert (msg["model"], msg["backend"], msg["device"], msg["bins"], msg["adapt"]) == ("m", "numba", "cpu", 0, "health")
    assert msg["artifact"] == "ab" * 32 and msg["code"] == "abc123" and len(msg["run"]) == 12


def test_engine_publishes_status_between_bins(tmp_path):
    """A real runtime on a real socket: status messages arrive on their own topic, bins counted."""
    from decoder_runtime.assemble import open_runtime
    from decoder_runtime.sources.replay import ReplaySource

    s = h.session(tmp_path)
    art = h.loaded(h.artifact(tmp_path))
    addr = f"tcp://127.0.0.1:{h.free_port()}"
    sub = connect_subscriber(addr)  # connects before the runtime binds; ZeroMQ retries until it does
    sub.setsockopt(zmq.SUBSCRIBE, STATUS)
    source = ReplaySource(s.counts[:120], s.t[:120], s.bin_width, speed=1.0)  # 3 s: about 3 status messages
    cfg = h.config(art.path, zmq=addr, wait_subscriber_s=10.0, deadline_ms=0, flush_every=10)
    with open_runtime(cfg, command="test", source=source) as rt:
        rt.run()
    got = {b"velocity": [], STATUS: []}
    while sub.poll(500):
        topic, body = sub.recv_multipart()
        got[topic].append(body)
    sub.close()
    assert len(got[b"velocity"]) == 120
    bins = [unpack_status(b)["bins"] for b in got[STATUS]]
    assert len(bins) >= 2 and bins == sorted(bins) and bins[-1] >= 80
    assert all(b % 10 == 0 for b in bins)  # sent between bins, at the engine's block boundaries
