"""Closed loop: encoder causality, the participant with a perfect decoder, task metrics on a
hand-built trajectory, lock-step determinism through the real Engine, and a short live run
over real LSL + `serve` + ZeroMQ."""
from __future__ import annotations

import math
import uuid

import numpy as np
import pytest

from replay.closed_loop import ClosedLoopWorld, WorldSettings
from replay.cursor_task import CursorTask, TaskSettings
from replay.encoder import StreamingEncoder
from replay.simulator import make_population
from replay.task_metrics import summarize_trials, trial_row
from tests import runtime_helpers as rh


def test_encoder_is_causal():
    """A bin's counts never depend on intentions given after it."""
    pop = make_population(30, 3)
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 150, (40, 2))
    runs = []
    for tail_seed in (1, 2):
        enc = StreamingEncoder(pop, seed=5)
        tail = np.random.default_rng(tail_seed).normal(0, 150, (20, 2))
        runs.append(np.stack([enc.step(u) for u in np.concatenate([shared, tail])]))
    a, b = runs
    assert np.array_equal(a[:40], b[:40])
    assert not np.array_equal(a[40:], b[40:])  # later intentions do change later bins


def test_encoder_tuning_follows_intention():
    """Units with a preferred direction near +x fire more for a +x intention than for -x."""
    pop = make_population(60, 1)
    counts = {}
    for sign in (1, -1):
        enc = StreamingEncoder(pop, seed=2)
        counts[sign] = np.stack([enc.step(np.array([sign * 200.0, 0.0])) for _ in range(400)]).mean(0)
    east = pop.tuned & (np.cos(pop.preferred_direction) > 0.7)
    assert counts[1][east].sum() > 1.2 * counts[-1][east].sum()


def test_participant_reaches_targets_with_a_perfect_decoder():
    """The ideal decoder (velocity = the intention the neurons carry, plan lead earlier)."""
    from benchmarks.closed_loop import run_ideal

    m = run_ideal(WorldSettings(task=TaskSettings(n_trials=8), n_units=40)).metrics
    assert m["n_trials"] == 8 and m["success_rate"] == 1.0
    assert m["time_to_target_s"] < 2.0
    assert m["path_efficiency"] > 0.5


def _walk(task: CursorTask, points: list[tuple[float, float]], dt: float) -> float:
    t = 0.0
    for p in points:
        task.update(t, np.array(p))
        t += dt
    return t


def test_metrics_on_a_hand_built_trajectory():
    """Straight out along +x at 10 mm per bin, a detour out and back in, then a hold."""
    s = TaskSettings(n_trials=1, n_targets=1, target_distance=100.0, target_radius=20.0, hold_s=0.5)
    task = CursorTask(s, seed=0)
    dt = 0.025
    path = [(10.0 * i, 0.0) for i in range(9)]  # 0..80 mm: enters at x = 80 (bin 8, t = 0.2 s)
    path += [(70.0, 0.0)]  # leaves (bin 9)
    path += [(85.0, 0.0)] * 21  # re-enters at bin 10 (t = 0.25 s) and holds 0.5 s
    _walk(task, path, dt)
    (tr,) = task.trials
    row = trial_row(tr, s)
    assert tr.outcome == "success"
    assert row["time_to_target_s"] == pytest.approx(0.25)
    assert row["dial_in_s"] == pytest.approx(0.05)
    assert row["re_entries"] == 1
    # path to the last entry: 80 out, 10 back, 15 in = 105 mm; straight line 85 mm
    assert row["path_efficiency"] == pytest.approx(85.0 / 105.0)
    assert row["fitts_bps"] == pytest.approx(math.log2((100.0 + 40.0) / 40.0) / 0.25)
    assert tr.t_end == pytest.approx(0.75)
    m = summarize_trials(task.trials, s)
    assert m["success_rate"] == 1.0 and m["time_to_target_s"] == pytest.approx(0.25)


def test_timeout_and_grid_bitrate():
    s = TaskSettings(task="grid", n_trials=2, hold_s=0.1, timeout_s=1.0, grid_size=4, grid_extent=100.0)
    task = CursorTask(s, seed=3)
    task.update(0.0, np.zeros(2))
    first = task.trials[0].target.copy()
    t = _walk(task, [tuple(first)] * 6, 0.025)  # dwell on the target: correct selection
    assert task.trials[0].outcome == "success"
    wrong = -first if task.cell_of(-first) != task.cell_of(first) else first + np.array([50.0, 0.0])
    _walk(task, [tuple(wrong)] * 8, 0.025)  # dwell elsewhere: an incorrect selection
    assert task.trials[1].outcome in ("wrong", "success")
    m = summarize_trials(task.trials, s)
    sc, si = m["n_success"], m.get("n_wrong", 0)
    elapsed = sum(tr.t_end - tr.t_start for tr in task.trials)
    assert m["bitrate_bps"] == pytest.approx(math.log2(15) * max(sc - si, 0) / elapsed)
    assert t > 0


def _fast(tmp_path, seed: int) -> dict:
    from benchmarks.closed_loop import run_fast
    from models.artifact import load_artifact

    art = load_artifact(rh.artifact(tmp_path))
    ws = WorldSettings(task=TaskSettings(n_trials=2, timeout_s=1.5), seed=seed, n_units=art.n_channels)
    r = run_fast(ws, rh.config(art.path, deadline_ms=0))
    return {"metrics": r.metrics, "cursor": r.world.arrays()["cursor"], "n": r.latency_us["n"], "k": r.world.k}


def test_lockstep_is_deterministic(tmp_path_factory):
    base = tmp_path_factory.mktemp("cl")
    a, b = _fast(base, 4), _fast(base, 4)
    assert a["metrics"] == b["metrics"]
    assert np.array_equal(a["cursor"], b["cursor"])
    assert a["n"] == a["k"]  # every bin came back through the engine's output path
    c = _fast(base, 5)
    assert not np.array_equal(a["cursor"][:50], c["cursor"][:50])


@pytest.mark.slow
def test_live_run_over_lsl_and_zeromq(tmp_path_factory):
    """Real time: pylsl outlet -> `serve` subprocess -> ZeroMQ -> cursor, task state on its topic."""
    import zmq

    from benchmarks.closed_loop import LiveTarget, run_live

    base = tmp_path_factory.mktemp("cl-live")
    art = rh.artifact(base)
    port, task_port = rh.free_port(), rh.free_port()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{task_port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"task")
    name = f"cl-test-{uuid.uuid4().hex[:8]}"
    ws = WorldSettings(task=TaskSettings(n_trials=2, timeout_s=1.0), n_units=rh.N_UNITS)
    r = run_live(ws, LiveTarget(name, f"tcp://127.0.0.1:{port}", [str(art), "--backend", "torch"]),
                 task_addr=f"tcp://127.0.0.1:{task_port}")
    assert r.metrics["n_trials"] == 2
    assert r.latency_us["n"] > 0.9 * r.world.k  # nearly every bin answered in time
    assert r.latency_us["serve_summary"]["n_bins"] >= r.latency_us["n"]
    import msgpack

    states = []
    while sub.poll(100):
        topic, body = sub.recv_multipart()
        states.append(msgpack.unpackb(body))
    sub.close()
    assert states and states[-1]["v"] == 1 and set(states[-1]) >= {"cursor", "target", "trial", "state", "success_rate"}


def test_full_assist_moves_the_cursor_as_the_ideal_decoder_while_the_log_keeps_the_decoder():
    """assist = 1 (an observation block): a decoder that outputs nothing still acquires every
    target exactly as the ideal decoder does, and the log records what the decoder said."""
    from benchmarks.closed_loop import run_ideal

    ws = WorldSettings(task=TaskSettings(n_trials=4), seed=3, n_units=20)
    ideal = run_ideal(ws)
    world = ClosedLoopWorld(WorldSettings(task=TaskSettings(n_trials=4), seed=3, n_units=20, assist=1.0))
    while world.next_bin(np.zeros(2)) is not None:
        pass
    assert world.metrics() == ideal.metrics and world.metrics()["success_rate"] == 1.0
    assert np.array_equal(world.arrays()["cursor"], ideal.world.arrays()["cursor"])
    assert np.all(world.arrays()["decoded"][:-1] == 0.0)
    with pytest.raises(ValueError, match="assist"):
        WorldSettings(assist=1.5)
