"""The engine's loop: exact decoding, the latency bound with a fallback, bad bins, gaps, stops.

Slowness is produced by `SlowFor`, a real backend that sleeps before chosen steps: a test
double for a slow model, not a mock of one (its outputs are the real model's).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import zmq

from decoder_runtime.backends import make_backend
from decoder_runtime.fallback import WienerFallback
from decoder_runtime.messages import Flag, unpack
from decoder_runtime.publish import Publisher, connect_subscriber
from decoder_runtime.sources.replay import ReplaySource
import runtime_helpers as h

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    s = h.session(base)
    return s, h.loaded(h.artifact(base)), h.loaded(h.artifact(base, fallback=False))


class SlowFor:
    """Wraps a real backend; sleeps `sleep_s` before its k-th step for k in `slow`.

    Steps are counted from the engine's first reset (after any warm-up steps), so k is the
    k-th bin the model is given in the run.
    """

    def __init__(self, backend, slow: set[int], sleep_s: float) -> None:
        self.inner, self.slow, self.sleep_s = backend, slow, sleep_s
        self.name, self.device = backend.name, backend.device
        self.calls = 0
        self._counting = False

    def reset(self) -> None:
        self.inner.reset()
        if not self._counting:
            self.calls, self._counting = 0, True

    def step(self, counts):
        k = self.calls
        self.calls += 1
        if k in self.slow:
            time.sleep(self.sleep_s)
        return self.inner.step(counts)


def test_numpy_fallback_equals_the_wiener_step(env):
    s, art, _ = env
    fb = WienerFallback.from_module(art.fallback)
    ref = h.offline(art.fallback, s.counts[:300])
    got = np.empty_like(ref)
    for i, x in enumerate(s.counts[:300]):
        fb.push(x)
        got[i] = fb.predict()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_inline_run_equals_offline_step(env):
    s, art, _ = env
    r = h.run(art, ReplaySource.from_session(s.slice(0, 600), None), deadline_ms=0)
    ref = h.offline(art.model, s.counts[:600])
    assert r.n_bins == 600 and not r.flags.any()
    np.testing.assert_allclose(r.velocity, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r.model_vel, r.velocity)
    assert (np.diff(r.stamps, axis=1)[:, [0, 1, 5, 6]] >= 0).all()  # stage stamps in order


@pytest.mark.parametrize("handoff_spin_us", [500.0, 0.0], ids=["spinning-handoff", "queue-handoff"])
def test_slow_steps_get_the_fallback_on_time_and_the_state_stays_exact(env, handoff_spin_us):
    s, art, _ = env
    n, slow = 200, {40, 41, 100}
    backend = SlowFor(make_backend(art, "torch", "cpu", 1), slow, 0.030)
    r = h.run(art, ReplaySource.from_session(s.slice(0, n), speed=2.0), backend, deadline_ms=10.0,
              handoff_spin_us=handoff_spin_us)
    ref = h.offline(art.model, s.counts[:n])
    fb_ref = h.offline(art.fallback, s.counts[:n])
    missed = (r.flags & Flag.DEADLINE) != 0
    assert missed[sorted(slow)].all()  # a 30 ms step cannot meet a 10 ms deadline
    assert (r.flags[missed] & Flag.FALLBACK).all()
    np.testing.assert_allclose(r.velocity[missed], fb_ref[missed], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(r.velocity[~missed], ref[~missed], rtol=1e-5, atol=1e-6)
    # every bin was stepped in order: the model's own outputs, late or not, are the offline ones
    np.testing.assert_allclose(r.model_vel, ref, rtol=1e-5, atol=1e-6)
    assert not (r.flags & (Flag.DROPPED | Flag.RESET)).any()


def test_with_a_deadline_steps_on_time_run_inline_and_equal_the_offline_step(env):
    """With a deadline (200 ms here: no host stalls that long) every bin on time is stepped on the
    loop's own thread (nothing handed to the guard's), and the velocities are the offline step's."""
    from decoder_runtime.assemble import open_runtime

    s, art, _ = env
    with open_runtime(h.config(art.path, deadline_ms=200.0), command="test",
                      source=ReplaySource.from_session(s.slice(0, 300), None)) as rt:
        r = rt.run()
        stepper = rt.engine.core.stepper
    assert not r.flags.any() and stepper.submitted == stepper.overruns == 0
    np.testing.assert_allclose(r.velocity, h.offline(art.model, s.counts[:300]), rtol=1e-5, atol=1e-6)


def test_an_overrun_inline_step_is_answered_by_the_guard_before_it_returns_then_the_step_comes_back_inline(env):
    """Deadline 10 ms, one 200 ms step: the guard thread answers that bin with the fallback while the
    step still runs; the bins after it are stepped on the guard's thread until RECOVER of them came
    on time, then inline again; the model saw every bin, in order."""
    from decoder_runtime.assemble import open_runtime
    from decoder_runtime.stepping import RECOVER
    from decoder_runtime.timing import ARRIVAL, SENT

    s, art, _ = env
    n, slow = 200, 40
    backend = SlowFor(make_backend(art, "torch", "cpu", 1), {slow}, 0.200)
    with open_runtime(h.config(art.path, deadline_ms=10.0), command="test", backend=backend,
                      source=ReplaySource.from_session(s.slice(0, n), speed=4.0)) as rt:
        r = rt.run()
        stepper = rt.engine.core.stepper
    assert r.flags[slow] & Flag.DEADLINE and r.flags[slow] & Flag.FALLBACK
    assert r.stamps[slow, SENT] - r.stamps[slow, ARRIVAL] < 150e6  # answered before the 200 ms step returned
    np.testing.assert_allclose(r.velocity[slow], h.offline(art.fallback, s.counts[:n])[slow], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(r.model_vel, h.offline(art.model, s.counts[:n]), rtol=1e-5, atol=1e-6)
    assert stepper.overruns == 1 and stepper.submitted >= RECOVER  # the next bins went to the guard's thread
    assert stepper._inline and stepper.submitted < n - slow - 1  # ... and then came back inline


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ("torch", "cudagraph"))
@pytest.mark.parametrize("deadline_ms", (None, 10.0))
def test_cuda_backends_in_the_engine_equal_the_offline_step(env, kind, deadline_ms):
    """On CUDA, inline, and with a deadline also on the guard's thread (a thread that did not build
    the backend or capture its graph: one 30 ms step overruns, the bins after it step there), the
    model's outputs are the CPU offline step's."""
    from training.export import TOLERANCE, parity_error

    s, art, _ = env
    n = 200
    backend = make_backend(art, kind, "cuda")
    if deadline_ms:
        backend = SlowFor(backend, {20}, 0.030)
    r = h.run(art, ReplaySource.from_session(s.slice(0, n), speed=4.0), backend, deadline_ms=deadline_ms or 0)
    assert r.n_bins == n and not (r.flags & (Flag.DROPPED | Flag.RESET)).any()
    assert bool(r.flags[20] & Flag.DEADLINE) == bool(deadline_ms)
    assert parity_error(r.model_vel, h.offline(art.model, s.counts[:n]), art.model.y_std.numpy()) <= TOLERANCE


def test_without_a_fallback_a_miss_repeats_the_last_velocity(env):
    s, _, art = env
    backend = SlowFor(make_backend(art, "torch", "cpu", 1), {30}, 0.030)
    r = h.run(art, ReplaySource.from_session(s.slice(0, 60), speed=2.0), backend, deadline_ms=10.0)
    assert r.flags[30] & Flag.DEADLINE and r.flags[30] & Flag.HELD and not r.flags[30] & Flag.FALLBACK
    np.testing.assert_array_equal(r.velocity[30], r.velocity[29])


def test_a_model_far_behind_is_withheld_bins_then_reset(env):
    s, art, _ = env
    n = 240
    backend = SlowFor(make_backend(art, "torch", "cpu", 1), set(range(20, 30)), 0.030)
    r = h.run(art, ReplaySource.from_session(s.slice(0, n), speed=4.0), backend, deadline_ms=5.0,
               max_backlog=4)
    assert r.n_bins == n and np.isfinite(r.velocity).all()
    dropped = np.flatnonzero(r.flags & Flag.DROPPED)
    resets = np.flatnonzero(r.flags & Flag.RESET)
    # each withholding spell ends with one reset, once the model has drained its queue
    assert dropped.size and resets.size >= 1 and resets[-1] > dropped[-1]
    assert all(r.flags[k - 1] & Flag.DROPPED for k in resets)
    assert np.isnan(r.model_vel[dropped]).all()
    last = resets[-1]
    np.testing.assert_allclose(r.model_vel[last:], h.offline(art.model, s.counts[last:n]), rtol=1e-5, atol=1e-6)


def bad_session(s, n=90):
    """n bins: session bins 0..88 with bin 30 of the wrong length, a NaN in 31, a negative in
    32, an out-of-order extra bin inserted at 33 (timestamp 10 ms before bin 32's), and a
    1 s jump in the timestamps from bin 60 on (bin 60 a JUMP, 61 confirms it: a GAP)."""
    counts = [s.counts[k].copy() for k in range(n - 1)]
    t = list((np.arange(n - 1) + 1) * s.bin_width)
    counts[30] = np.ones(s.n_channels + 2, np.float32)
    counts[31][0] = np.nan
    counts[32][1] = -3.0
    counts.insert(33, s.counts[200].copy())
    t.insert(33, t[32] - 0.010)
    for k in range(60, n):
        t[k] += 1.0
    return counts, t


@pytest.mark.parametrize("policy", ["impute", "hold"])
def test_bad_bins_are_flagged_published_and_decoded_by_policy(env, policy):
    s, art, _ = env
    counts, t = bad_session(s)
    n = len(counts)
    fill = np.asarray(art.config["normalization"]["x_mean"], np.float32)
    addr = f"tcp://127.0.0.1:{h.free_port()}"
    pub = Publisher(addr)
    sub = connect_subscriber(addr)
    time.sleep(0.3)  # let the subscription reach the publisher
    r = h.run(art, ReplaySource(counts, t, s.bin_width, None, s.n_channels), deadline_ms=0,
               outputs=[pub], bad_bin=policy)
    msgs = []
    while len(msgs) < n and sub.poll(2000):
        msgs.append(unpack(sub.recv_multipart()[1]))
    pub.close()
    sub.close()

    f = r.flags
    assert f[30] & Flag.BAD_LENGTH and f[31] & Flag.NONFINITE and f[32] & Flag.NEGATIVE
    assert f[33] == Flag.BACKWARDS | Flag.DROPPED | Flag.HELD
    assert f[60] == Flag.JUMP and f[61] == Flag.GAP | Flag.RESET
    clean = np.ones(n, bool)
    clean[[30, 31, 32, 33, 60, 61]] = False
    assert not f[clean].any()
    # the model saw: imputed bins (impute) or nothing (hold); never the backwards bin
    if policy == "impute":
        assert all(f[k] & Flag.IMPUTED for k in (30, 31, 32))
        seen = [fill if k == 30 else counts[k].copy() for k in range(n) if k != 33]
        seen[31][0], seen[32][1] = fill[0], fill[1]
        kept = [k for k in range(n) if k != 33]
    else:
        assert all(f[k] & Flag.DROPPED and f[k] & Flag.HELD for k in (30, 31, 32))
        kept = [k for k in range(n) if k not in (30, 31, 32, 33)]
        seen = [counts[k] for k in kept]
    ref = h.offline(art.model, np.stack(seen), resets=(kept.index(61),))
    np.testing.assert_allclose(r.velocity[kept], ref, rtol=1e-5, atol=1e-6)
    held = [k for k in range(n) if k not in kept]
    np.testing.assert_array_equal(r.velocity[held], r.velocity[[min(held) - 1] * len(held)])
    # every bin was published once, in order, with its flags
    assert [m["seq"] for m in msgs] == list(range(n))
    assert [m["flags"] for m in msgs] == [int(x) for x in f]
    np.testing.assert_array_equal(np.array([m["vel"] for m in msgs], np.float32), r.velocity)


@pytest.mark.parametrize("on_gap", ["reset", "keep"])
def test_gap_policy(env, on_gap):
    s, art, _ = env
    n = 100
    t = (np.arange(n) + 1) * s.bin_width
    t[50:] += 2.0
    r = h.run(art, ReplaySource(s.counts[:n], t, s.bin_width, None), deadline_ms=0, on_gap=on_gap)
    assert r.flags[50] == Flag.JUMP and r.flags[51] & Flag.GAP
    assert bool(r.flags[51] & Flag.RESET) == (on_gap == "reset")
    resets = (51,) if on_gap == "reset" else ()
    np.testing.assert_allclose(r.velocity, h.offline(art.model, s.counts[:n], resets), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ahead_s", [3.0, 1000.0])
def test_one_bin_stamped_far_in_the_future_does_not_freeze_the_output(env, ahead_s):
    """Fault: after one bin stamped +1000 s every later bin was dropped and held. Now that bin
    alone is flagged and every bin is decoded exactly as without the bad stamp."""
    s, art, _ = env
    n = 200
    t = (np.arange(n) + 1) * s.bin_width
    t[50] += ahead_s
    r = h.run(art, ReplaySource(s.counts[:n], t, s.bin_width, None), deadline_ms=0)
    assert r.flags[50] == Flag.JUMP
    assert not np.delete(r.flags, 50).any()
    np.testing.assert_allclose(r.velocity, h.offline(art.model, s.counts[:n]), rtol=1e-5, atol=1e-6)


def test_a_burst_of_late_bins_is_flagged_and_decoded_in_order(env):
    s, art, _ = env
    n = 120
    backend = SlowFor(make_backend(art, "torch", "cpu", 1), {30}, 0.120)
    r = h.run(art, ReplaySource.from_session(s.slice(0, n), speed=10.0), backend, deadline_ms=0)
    late = np.flatnonzero(r.flags & Flag.LATE)
    assert late.size >= 3 and late[0] == 31  # released 100+ ms behind the 2.5 ms schedule
    assert not (r.flags & ~int(Flag.LATE)).any()
    np.testing.assert_allclose(r.velocity, h.offline(art.model, s.counts[:n]), rtol=1e-5, atol=1e-6)


def test_stop_ends_the_run_between_bins(env):
    s, art, _ = env
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()  # after the runtime is built (artifact checks, backend warm-up)
    t0 = time.monotonic()
    r = h.run(art, ReplaySource.from_session(s, speed=1.0), stop=stop)
    assert 0 < r.n_bins < s.n_bins and time.monotonic() - t0 < 8.0
    assert np.isfinite(r.velocity).all()


@pytest.mark.parametrize("speed", [1.0, None], ids=["40Hz", "back-to-back"])
def test_periodic_work_waits_for_a_quiet_moment_and_every_bin_is_recorded(env, tmp_path, monkeypatch, speed):
    """At real pace the record flush, the event drain and the status hook run once the source
    has been quiet for IDLE_S after a bin, not right behind that bin's message (engine doc);
    back to back, with no quiet moment, a whole flush_every later. Every bin is recorded."""
    from decoder_runtime.engine import IDLE_S, Engine
    from decoder_runtime.record import read_record
    from decoder_runtime.timing import SENT

    s, art, _ = env
    calls = []
    between = Engine._between_bins

    def spy(self, n):
        calls.append((n, time.monotonic_ns() - int(self.stamps[n - 1, SENT])))
        between(self, n)

    monkeypatch.setattr(Engine, "_between_bins", spy)
    n = 50
    r = h.run(art, ReplaySource.from_session(s.slice(0, n), speed=speed), deadline_ms=0, flush_every=10,
              record=tmp_path / "run.nwb")
    *periodic, last = calls
    assert last[0] == n  # the engine's final flush
    if speed:
        assert [c[0] for c in periodic] == [10, 20, 30, 40]
        assert all(quiet >= IDLE_S * 1e9 for _, quiet in periodic)
    else:
        assert [c[0] for c in periodic] == [20, 40]
    rec = read_record(tmp_path / "run.nwb")
    np.testing.assert_array_equal(rec["seq"], np.arange(n))
    np.testing.assert_array_equal(rec["velocity"], r.velocity)
    np.testing.assert_array_equal(rec["stamps"], r.stamps)


def test_publisher_refuses_a_busy_port():
    from decoder_runtime.publish import PublishError

    addr = f"tcp://127.0.0.1:{h.free_port()}"
    ctx = zmq.Context.instance()
    holder = ctx.socket(zmq.PUB)
    holder.bind(addr)
    try:
        with pytest.raises(PublishError, match="cannot bind"):
            Publisher(addr)
    finally:
        holder.close(0)
