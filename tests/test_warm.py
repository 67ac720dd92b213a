"""Keep-warm (decoder_runtime.warm): a warm pass never changes what is decoded, and its settings.

Correctness only: whether keep-warm makes real pace faster is measured by `spikestream bench`
(the real-pace section), never asserted here.
"""
from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import replace

import numpy as np
import pylsl
import pytest
import torch
import typer
from typer.testing import CliRunner

import runtime_helpers as h
from decoder_runtime.assemble import open_runtime
from decoder_runtime.backends import make_backend
from decoder_runtime.messages import Flag
from decoder_runtime.sources.lsl import CountsOutlet, LSLSource
from decoder_runtime.sources.replay import ReplaySource
from decoder_runtime.warm import ArrivalPredictor, WarmError, WarmSettings, apply_process, parse_cpus
from export_helpers import bins, make_artifact, stream
from models.artifact import load_artifact
from spikestream.commands.runtime import replay, serve

torch.set_num_threads(1)
SPEED = 8.0  # 3.1 ms between bins: room for a 1 ms lead, and the test stays short
N_BINS = 160


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("warm")


@pytest.mark.parametrize("kind", ["numba", "onnx", "torch", "torchscript"])
def test_dry_steps_between_bins_leave_every_output_unchanged(base, kind):
    art = load_artifact(make_artifact(base, "lstm"))
    counts = bins(base)[:200]
    backend = make_backend(art, kind, "cpu", 1)
    plain = stream(backend.step, counts)
    backend.reset()

    def step_after_dry(x):
        backend.dry_step()
        y = backend.step(x)
        backend.dry_step()
        return y

    np.testing.assert_array_equal(stream(step_after_dry, counts), plain)


def _run(art, session, warm: WarmSettings, deadline_ms: float | None, publish: bool) -> tuple:
    """A replay through the assembled runtime with `warm` as its [warm] settings; (result, its waiter)."""
    zmq = f"tcp://127.0.0.1:{h.free_port()}" if publish else "none"
    cfg = replace(h.config(art.path, deadline_ms=deadline_ms or 0, zmq=zmq), warm=warm)
    with open_runtime(cfg, command="test", source=ReplaySource.from_session(session, SPEED),
                      backend=make_backend(art, "numba", "cpu", 1)) as rt:
        result = rt.run()
        rt.summary = result.summary()
    return result, rt.engine.waiter


@pytest.mark.parametrize("deadline_ms, busy_wait", [(None, False), (200.0, False), (200.0, True)],
                         ids=["inline", "guarded", "guarded, busy-wait"])
def test_keep_warm_decodes_a_replay_exactly_as_without(tmp_path_factory, deadline_ms, busy_wait):
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    session = h.session(base).slice(0, N_BINS)
    art = h.loaded(h.artifact(base))
    gc_before = gc.isenabled()
    cold, _ = _run(art, session, WarmSettings.off(), deadline_ms, publish=False)
    warm, waiter = _run(art, session, WarmSettings(lead_us=1000, busy_wait=busy_wait), deadline_ms, publish=True)
    assert warm.warm["busy_wait"] is busy_wait
    assert gc.isenabled() == gc_before  # the collector is back as it was
    assert cold.n_bins == warm.n_bins == N_BINS
    np.testing.assert_array_equal(warm.model_vel, cold.model_vel)  # the model saw the same bins in the same state
    # a loaded host can make bins LATE or (guarded) miss the deadline; elsewhere the sent velocity is the model's
    timing = int(Flag.LATE | Flag.DEADLINE | Flag.FALLBACK)
    assert not ((cold.flags | warm.flags) & ~timing).any()
    on_time = ((cold.flags | warm.flags) & int(Flag.DEADLINE)) == 0
    np.testing.assert_array_equal(warm.velocity[on_time], cold.velocity[on_time])
    assert warm.warm["warm_passes"] > 0  # the passes really ran (how many depends on the host's load)
    assert waiter.warm_ns.size == warm.warm["warm_passes"]
    assert cold.warm["warm_passes"] == 0 and not cold.warm["keep_warm"]


def test_busy_wait_over_a_real_lsl_outlet_takes_every_bin_in_order(tmp_path_factory):
    """`serve --busy-wait`: the LSL inlet is polled, never waited on, and still hands over every
    bin a real outlet pushes at 40 Hz, in order and with its stamp, warm passes before them."""
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    s, art = h.session(base), h.loaded(h.artifact(base))
    n, period = 60, 0.025
    name = h.unique("busy")
    outlet = CountsOutlet(name, s.n_channels, period, source_id=name)
    source = LSLSource(n_channels=s.n_channels, period=period, name=name, resolve_timeout_s=10)
    cfg = replace(h.config(art.path, deadline_ms=10, max_bins=n), warm=WarmSettings(busy_wait=True))
    result: list = []

    def run() -> None:
        with open_runtime(cfg, command="test", source=source, backend=make_backend(art, "numba", "cpu", 1)) as rt:
            result.append(rt.run())

    runner = threading.Thread(target=run)
    runner.start()
    try:
        assert outlet.wait_for_consumers(10)
        stamps, t0 = [], time.monotonic()
        for k in range(n):
            time.sleep(max(0.0, t0 + k * period - time.monotonic()))
            stamps.append(pylsl.local_clock())
            outlet.push(s.counts[k], stamps[-1])
        runner.join(30)
    finally:
        outlet.close()
    r = result[0]
    assert r.n_bins == n
    np.testing.assert_allclose(r.t_src - r.t_src[0], np.array(stamps) - stamps[0], atol=1e-6)
    assert r.warm["busy_wait"] and r.warm["warm_passes"] > 0
    assert not (r.flags & ~int(Flag.LATE | Flag.DEADLINE | Flag.FALLBACK)).any()  # (those only if this host lagged)


def test_keep_warm_judges_bad_bins_exactly_as_without(tmp_path_factory):
    """The passes between bins leave the live validator's timeline alone: with NaNs, a one-bin
    jump, a backwards stamp and a sustained gap in the stream, every flag and velocity is as
    without them."""
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    art = h.loaded(h.artifact(base))
    s = h.session(base)
    counts = s.counts[:N_BINS].astype(np.float32)
    t = s.t[:N_BINS].copy()
    counts[20, :3] = np.nan
    t[40] += 5.0  # one bad stamp
    t[60] = t[59] - 0.1  # backwards
    t[100:] += 2.0  # a real gap
    runs = []
    for warm in (WarmSettings.off(), WarmSettings(lead_us=1000)):
        cfg = replace(h.config(art.path, deadline_ms=0), warm=warm)
        with open_runtime(cfg, command="test", source=ReplaySource(counts, t, s.bin_width, SPEED),
                          backend=make_backend(art, "numba", "cpu", 1)) as rt:
            runs.append(rt.run())
    cold, warm = runs
    assert warm.warm["warm_passes"] > 0
    flagged = int(Flag.NONFINITE | Flag.JUMP | Flag.BACKWARDS | Flag.GAP)
    assert (cold.flags & flagged).any()
    np.testing.assert_array_equal(warm.flags & ~int(Flag.LATE), cold.flags & ~int(Flag.LATE))
    np.testing.assert_array_equal(warm.velocity, cold.velocity)
    np.testing.assert_array_equal(warm.model_vel, cold.model_vel)


def _run_source(art, source) -> tuple:
    with open_runtime(h.config(art.path, deadline_ms=0), command="test", source=source,
                      backend=make_backend(art, "numba", "cpu", 1)) as rt:
        return rt.run(), rt.engine.waiter


def test_keep_warm_does_nothing_at_max_speed(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    art = h.loaded(h.artifact(base))
    source = ReplaySource.from_session(h.session(base).slice(0, 50), None)
    result, waiter = _run_source(art, source)
    assert result.n_bins == 50 and waiter.counts["warm_passes"] == 0


def test_arrival_prediction_takes_the_earliest_recent_phase_and_restarts_after_a_gap():
    p = ArrivalPredictor(period_ns=25e6, window=4)
    assert p.next_ns(0) is None
    jitter = [300_000, 50_000, 900_000, 120_000]
    for k, j in enumerate(jitter):
        p.observe(k, 1_000_000_000 + k * 25_000_000 + j)
    assert p.next_ns(4) == 1_000_000_000 + 4 * 25_000_000 + 50_000
    p.observe(4, 1_000_000_000 + 4 * 25_000_000 + 400_000)  # the window slides: 300 us drops out, 50 us stays
    assert p.next_ns(5) == 1_000_000_000 + 5 * 25_000_000 + 50_000
    p.restart(5)  # a gap: the stream came back 2 s later
    p.observe(5, 3_000_000_000)
    assert p.next_ns(6) == 3_025_000_000


def test_a_replay_honours_the_pull_timeout():
    source = ReplaySource(np.ones((2, 3), np.float32), [0.025, 0.05], 0.025, speed=1.0)
    source.start()
    source.pull(0.0)  # bin 0 is due at once
    t0 = time.monotonic()
    assert source.pull(0.0) is None and time.monotonic() - t0 < 0.01  # a poll returns at once
    got = source.pull(0.1)
    assert got is not None and got[1] == 0.05


def test_settings_are_validated():
    for bad in ({"lead_us": 0}, {"lead_us": -5}, {"spin_us": -1}, {"pin_cpus": (-1,)},
                {"realtime_priority": 1000}):
        with pytest.raises(ValueError):
            WarmSettings(**bad)
    assert parse_cpus("0-2,5,1") == (0, 1, 2, 5) and parse_cpus("") is None
    with pytest.raises(ValueError, match="cores must be"):
        parse_cpus("one")
    with pytest.raises(WarmError, match="cannot pin"):
        apply_process(WarmSettings(pin_cpus=(max(os.sched_getaffinity(0)) + 64,)))


def test_bad_keep_warm_options_are_one_line_errors(tmp_path):
    app = typer.Typer()
    app.command("replay")(replay)
    app.command("serve")(serve)
    runner = CliRunner()
    for args in (["--warm-lead-us", "0"], ["--pin-cpus", "x"], ["--warm-spin-us", "-1"]):
        res = runner.invoke(app, ["replay", str(tmp_path), *args])
        assert res.exit_code == 2, res.output
        assert "error" in res.output and "Traceback" not in res.output


class _Clock:
    """A fake monotonic clock for the waiter's decisions (no real time passes in the test)."""

    def __init__(self) -> None:
        self.ns = 10_000_000_000

    def monotonic_ns(self) -> int:
        return self.ns


class _DueSource:
    """Bin k is there from `due[k]`; a poll costs 1 us of the fake clock, a timed pull sleeps it."""

    def __init__(self, clock: _Clock, due: list[int]) -> None:
        self.clock, self.due, self.k = clock, due, 0

    def pull(self, timeout_s: float):
        if self.clock.ns < self.due[self.k]:
            self.clock.ns = min(self.clock.ns + max(int(timeout_s * 1e9), 1000), self.due[self.k])
            if self.clock.ns < self.due[self.k]:
                return None
        self.k += 1
        return np.zeros(3, np.float32), 0.0, 0.0, 0


def _fake_waiter(monkeypatch, clock: _Clock, n_bins: int):
    """A BinWaiter on the fake clock over a _DueSource with bins 25 ms apart (its due times),
    spinning and repeating its passes."""
    import types

    from decoder_runtime import warm as warm_mod

    monkeypatch.setattr(warm_mod, "time", types.SimpleNamespace(monotonic_ns=clock.monotonic_ns))
    period = 25_000_000
    due = [clock.ns + k * period for k in range(n_bins)]
    waiter = warm_mod.BinWaiter(WarmSettings(lead_us=1000))
    waiter._engine = types.SimpleNamespace(source=_DueSource(clock, due))
    waiter._predictor = ArrivalPredictor(period)
    waiter._spin_ns, waiter._repeat = 3_000_000, True
    return waiter, due


@pytest.mark.parametrize("busy_wait", [False, True], ids=["sleeps", "busy-wait"])
def test_busy_wait_only_polls_and_still_takes_each_bin_when_it_comes(monkeypatch, busy_wait):
    """With busy_wait the waiter never hands the source a timeout (it would sleep in it): it polls,
    up to the warm pass and after it; each bin is still taken at its due time, the passes before it.
    (Bin 0 has no predicted arrival, no pass, and is waited for as without.)"""
    clock = _Clock()
    waiter, due = _fake_waiter(monkeypatch, clock, 4)
    waiter.settings = WarmSettings(lead_us=1000, busy_wait=busy_wait)
    waiter._spin_ns, waiter._repeat = 0, False  # as for LSL: after the pass, wait for the bin
    source, timeouts, passes = waiter._engine.source, [], []
    pull = source.pull

    def pull_logged(timeout_s: float):
        timeouts.append(timeout_s)
        return pull(timeout_s)

    def warm_pass() -> int:
        passes.append(clock.ns)
        clock.ns += 40_000
        return 40_000

    monkeypatch.setattr(source, "pull", pull_logged)
    monkeypatch.setattr(waiter, "warm_pass", warm_pass)
    for k, t in enumerate(due):
        if k == 1:
            timeouts.clear()
        while waiter.pull(1.0) is None:
            pass
        assert clock.ns - t < 2_000  # taken when it came (a poll costs 1 us of the fake clock)
        waiter.took(clock.ns, 0)
    assert len(passes) == 3 and all(due[k] - 1_000_000 <= p < due[k] for k, p in zip((1, 2, 3), passes))
    assert (max(timeouts) == 0.0) is busy_wait


def _repeat_passes(monkeypatch, pass_ns):
    """Bins 0-3 through a repeating waiter on the fake clock, pass i taking pass_ns(i, cold) fake ns
    (cold: the first after a long idle); the due times, the (start, end) of the passes run before each
    bin (none before bin 0: nothing is predicted yet), and the waiter."""
    from decoder_runtime import warm as warm_mod

    clock = _Clock()
    waiter, due = _fake_waiter(monkeypatch, clock, 4)
    passes: list[tuple[int, int]] = []

    def warm_pass() -> int:
        start = clock.ns
        clock.ns += pass_ns(len(passes), not passes or passes[-1][1] < clock.ns - 5_000_000)
        passes.append((start, clock.ns))
        return clock.ns - start

    monkeypatch.setattr(waiter, "warm_pass", warm_pass)
    waiter._again_ns, waiter._cap_ns = 40_000, warm_mod.PREEMPTED * 40_000  # as measured at set-up (BinWaiter.start)
    per_bin = []
    for _ in due:
        n = len(passes)
        assert waiter.pull(1.0) is not None
        waiter.took(clock.ns, 0)
        per_bin.append(passes[n:])
    return due, per_bin, waiter


def test_repeated_passes_are_budgeted_by_a_hot_pass_not_the_cold_first_one(monkeypatch):
    """A first pass as long as 60 % of the lead (cold) must not stop the hot passes after it (40 us
    each) from filling the time up to the bin; none may still run when the bin is due."""
    due, per_bin, waiter = _repeat_passes(monkeypatch, lambda i, cold: 600_000 if cold else 40_000)
    assert per_bin[0] == []
    for k in (1, 2, 3):
        ran = per_bin[k]
        assert ran[0][1] - ran[0][0] == 600_000 and len(ran) >= 5  # the cold pass, then hot ones
        assert all(end <= due[k] for _, end in ran)  # none still running when the bin came
        assert due[k] - ran[-1][1] <= 2 * 40_000  # and they went on up to it
    assert waiter.counts["overlapped"] == waiter.counts["no_repeat"] == 0


def test_one_preempted_pass_does_not_stop_the_repeats_of_the_bins_after_it(monkeypatch):
    """A repeated pass the OS held up (400 us where they take 40) counts as at most PREEMPTED hot
    passes: the next bins still repeat up to the bin (it used to budget them by the 400 us, and then
    no repeat ran to learn better)."""
    due, per_bin, waiter = _repeat_passes(monkeypatch, lambda i, cold: 250_000 if cold else 400_000 if i == 2 else 40_000)
    preempted = per_bin[1][2]  # bin 1's second hot pass
    assert preempted[1] - preempted[0] == 400_000
    for k in (1, 2, 3):
        assert all(end <= due[k] for _, end in per_bin[k])
    for k in (2, 3):  # after it: hot passes up to the bin again
        assert len(per_bin[k]) >= 10 and due[k] - per_bin[k][-1][1] <= 2 * 40_000
    assert waiter.counts["overlapped"] == waiter.counts["no_repeat"] == 0


def test_bins_that_came_after_the_cold_first_pass_only_are_counted(monkeypatch):
    """A first pass that leaves no room for a hot one (950 us of a 1 ms lead): each such bin is
    counted in the summary's no_repeat, which a run's summary shows."""
    due, per_bin, waiter = _repeat_passes(monkeypatch, lambda i, cold: 950_000 if cold else 40_000)
    assert [len(ran) for ran in per_bin] == [0, 1, 1, 1]
    assert waiter.counts["no_repeat"] == 3 and waiter.counts["overlapped"] == 0
