"""ZeroMQ output: loopback-only by default, versioned messages, CURVE, and a stalled subscriber."""
from __future__ import annotations

import subprocess
import time

import msgpack
import numpy as np
import pytest
import torch
import zmq
import zmq.auth

import runtime_helpers as h
from decoder_runtime.messages import TOPIC, VERSION, Flag, MessageError, MessagePacker, flag_names, unpack
from decoder_runtime.publish import PublishError, Publisher, connect_subscriber, is_loopback
from decoder_runtime.sources.replay import ReplaySource

torch.set_num_threads(1)


@pytest.mark.parametrize("addr,local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.5.0.1:1", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/x", True), ("inproc://x", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://192.168.1.4:5555", False),
    ("tcp://eth0:5555", False),
])
def test_is_loopback(addr, local):
    assert is_loopback(addr) is local


def test_non_loopback_needs_allow_remote():
    with pytest.raises(PublishError, match="--allow-remote"):
        Publisher("tcp://0.0.0.0:5555")
    with pytest.raises(PublishError, match="not a ZeroMQ endpoint"):
        Publisher("127.0.0.1:5555")


def test_message_round_trip_and_version_check():
    body = MessagePacker("model-x").pack(7, 12.5, 0.25, -1.5, 42.0, int(Flag.DEADLINE | Flag.FALLBACK),
                                         123, (1, 2, 3))
    msg = unpack(body)
    assert msg == {"v": VERSION, "seq": 7, "t_src": 12.5, "vel": [0.25, -1.5], "model": "model-x", "lat_us": 42.0,
                   "flags": 12, "t_arr": 123, "st_us": [1, 2, 3]}
    assert flag_names(msg["flags"]) == ["deadline", "fallback"]
    with pytest.raises(MessageError, match="version"):
        unpack(msgpack.packb({"v": VERSION + 1}))
    with pytest.raises(MessageError):
        unpack(b"\xc1not msgpack")


def test_wait_for_subscriber_and_topic():
    addr = f"tcp://127.0.0.1:{h.free_port()}"
    pub = Publisher(addr)
    assert not pub.wait_for_subscriber(0.05)
    sub = connect_subscriber(addr)
    assert pub.wait_for_subscriber(5.0)
    assert pub.send(b"hello")
    assert sub.poll(5000)
    assert sub.recv_multipart() == [TOPIC, b"hello"]
    pub.close()
    sub.close()


def test_a_warm_send_reaches_no_subscriber_not_even_one_to_every_topic():
    addr = f"tcp://127.0.0.1:{h.free_port()}"
    pub = Publisher(addr)
    everything = zmq.Context.instance().socket(zmq.SUB)
    everything.setsockopt(zmq.LINGER, 0)
    everything.connect(addr)
    everything.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        assert pub.wait_for_subscriber(5.0)
        for _ in range(3):
            pub.warm(b"warm")
        assert pub.send(b"live")
        assert everything.poll(5000)
        assert everything.recv_multipart() == [TOPIC, b"live"]  # the first message it sees is the live one
        assert not everything.poll(200)
    finally:
        pub.close()
        everything.close()


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve_only_lets_keyed_clients_in(tmp_path):
    server_public, server_secret = zmq.auth.create_certificates(tmp_path, "server")
    clients = tmp_path / "clients"
    clients.mkdir()
    client_public, client_secret = zmq.auth.create_certificates(tmp_path, "client")
    (clients / "client.key").write_bytes((tmp_path / "client.key").read_bytes())
    addr = f"tcp://127.0.0.1:{h.free_port()}"
    pub = Publisher(addr, curve_secret=server_secret, curve_clients=clients)
    keyed = connect_subscriber(addr, server_key=server_public, client_cert=client_secret)
    plain = connect_subscriber(addr)
    stranger = connect_subscriber(addr, server_key=server_public)  # a fresh key pair, not authorised
    assert pub.wait_for_subscriber(5.0)
    for _ in range(20):
        pub.send(b"secret")
        time.sleep(0.01)
    assert keyed.poll(2000) and keyed.recv_multipart() == [TOPIC, b"secret"]
    assert not plain.poll(300) and not stranger.poll(300)
    for s in (keyed, plain, stranger):
        s.close()
    pub.close()


def test_a_subscriber_that_stops_reading_never_slows_the_decoder(tmp_path_factory, tmp_path):
    """3,000 bins at full speed with one SUB that never reads and one that does (`spikestream
    listen` in its own process). The stalled one's queues fill and ZeroMQ drops its messages
    (ipc transport: ~200 KB of kernel buffer, not TCP's autotuned megabytes, so the drop
    happens within 3,000 small messages); the loop still finishes, the reader gets every
    message in order, and the publish stage stays a few microseconds."""
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    s = h.session(base)
    art = h.loaded(h.artifact(base))
    n = 3000
    counts = np.tile(s.counts, (n // s.n_bins + 1, 1))[:n]
    t = (np.arange(n) + 1) * s.bin_width
    addr = f"ipc://{tmp_path}/velocity"
    pub = Publisher(addr, hwm=100)
    ctx = zmq.Context()
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 10)
    stalled.connect(addr)
    stalled.setsockopt(zmq.SUBSCRIBE, TOPIC)
    saved = tmp_path / "heard.npz"
    listener = h.cli("listen", "--zmq", addr, "--count", str(n), "--save", str(saved), "--timeout", "60",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert pub.wait_for_subscriber(5.0) and pub.wait_for_subscriber(60.0)
        r = h.run(art, ReplaySource(counts, t, s.bin_width, None), outputs=[pub], deadline_ms=0)
        assert listener.wait(60) == 0
    finally:
        listener.kill()
    stalled_got = 0
    while stalled.poll(200):
        stalled.recv_multipart()
        stalled_got += 1
    pub.close()
    stalled.close()
    ctx.term()
    assert r.n_bins == n
    heard = np.load(saved)
    assert heard["seq"].tolist() == list(range(n))  # the reading subscriber lost nothing
    np.testing.assert_array_equal(np.stack([heard["vx"], heard["vy"]], 1).astype(np.float32), r.velocity)
    assert stalled_got < n  # the stalled one's queue filled and ZeroMQ dropped for it alone
    publish = (r.stamps[:, 6] - r.stamps[:, 5]) / 1e3
    first, last = np.median(publish[:500]), np.median(publish[-500:])
    print(f"publish stage p50: first 500 bins {first:.1f} us, last 500 {last:.1f} us; "
          f"stalled subscriber got {stalled_got} of {n}")
    assert last < 1000.0  # a blocking send would hang here; a lossy PUB costs microseconds
