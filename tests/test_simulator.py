"""The simulator: determinism, shared populations, drift effects, realism in kind."""
from __future__ import annotations

import numpy as np
import pytest

from replay import DriftSpec, default_session, read_nwb, simulate_nwb
from replay.kinematics import DT

SHORT = 0.5  # minutes: enough spikes for every statistical check below


def rates(path, t_start: float, t_stop: float) -> np.ndarray:
    """Hz per unit over [t_start, t_stop), from the file."""
    s = read_nwb(path, t_start=t_start, t_stop=t_stop, bin_width=t_stop - t_start)
    return s.counts[0] / (t_stop - t_start)


def ridge_r2(counts: np.ndarray, vel: np.ndarray, history: int, alphas: tuple[float, ...]) -> float:
    """Equal-average R^2 of a ridge decoder on the last 20% of the bins.

    Counts z-scored with training statistics; the penalty is chosen on the last 20% of the
    training part, then the decoder is refit on all of it: the test bins choose nothing.
    """
    n_train = int(0.8 * len(counts))
    z = (counts - counts[:n_train].mean(0)) / (counts[:n_train].std(0) + 1e-6)
    x = np.concatenate([np.roll(z, h, axis=0) for h in range(history)], axis=1)[history:]
    y = vel[history:]
    n_train -= history
    n_fit = int(0.8 * n_train)

    def fit_score(a: int, b: int, c: int, alpha: float) -> float:
        xm, ym = x[a:b].mean(0), y[a:b].mean(0)
        xc = x[a:b] - xm
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y[a:b] - ym))
        pred, true = (x[b:c] - xm) @ w + ym, y[b:c]
        return float(np.mean(1 - ((true - pred) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)))

    best = max(alphas, key=lambda alpha: fit_score(0, n_fit, n_train, alpha))
    return fit_score(0, n_train, len(x), best)


# --- determinism and seeds ------------------------------------------------------------

def test_same_seed_same_session(tmp_path):
    a = simulate_nwb(tmp_path / "a.nwb", minutes=SHORT, seed=3, n_units=20)
    b = simulate_nwb(tmp_path / "b.nwb", minutes=SHORT, seed=3, n_units=20)
    sa, sb = read_nwb(tmp_path / "a.nwb"), read_nwb(tmp_path / "b.nwb")
    np.testing.assert_array_equal(sa.counts, sb.counts)
    np.testing.assert_array_equal(sa.velocity, sb.velocity)
    np.testing.assert_array_equal(a.n_spikes, b.n_spikes)
    c = simulate_nwb(tmp_path / "c.nwb", minutes=SHORT, seed=4, n_units=20)
    assert not np.array_equal(a.velocity, c.velocity)
    assert not np.array_equal(a.n_spikes, c.n_spikes)


def test_population_seed_fixes_the_neurons_not_the_day(tmp_path):
    day1 = simulate_nwb(tmp_path / "d1.nwb", minutes=SHORT, seed=1, population_seed=9, n_units=30)
    day2 = simulate_nwb(tmp_path / "d2.nwb", minutes=SHORT, seed=2, population_seed=9, n_units=30)
    other = simulate_nwb(tmp_path / "o.nwb", minutes=SHORT, seed=1, population_seed=10, n_units=30)
    for name in ("baseline_rate", "preferred_direction", "velocity_gain", "lag", "latent_loading"):
        np.testing.assert_array_equal(getattr(day1.population, name), getattr(day2.population, name))
        assert not np.array_equal(getattr(day1.population, name), getattr(other.population, name))
    assert not np.array_equal(day1.velocity, day2.velocity)  # a new day: new behaviour
    np.testing.assert_array_equal(day1.velocity, other.velocity)  # same seed: same behaviour
    default = simulate_nwb(tmp_path / "p.nwb", minutes=0.1, seed=9, n_units=30)
    np.testing.assert_array_equal(default.population.lag, day1.population.lag)


# --- ground truth and realism ------------------------------------------------------------

def test_truth_is_consistent_and_plausible(sim_nwb, sim_session):
    truth = sim_nwb.truth
    pop = truth.population
    np.testing.assert_allclose(truth.velocity, np.gradient(truth.position, DT, axis=0))
    assert ((pop.lag >= 50) & (pop.lag <= 150)).all()
    assert (pop.baseline_rate >= 0.8).all() and (pop.baseline_rate <= 60).all()
    assert 0.6 < pop.tuned.mean() < 0.95
    tr = truth.trials
    order = [tr[k] for k in ("start_time", "target_on_time", "go_cue_time", "move_onset_time", "stop_time")]
    assert all((a <= b).all() for a, b in zip(order, order[1:]))
    speed = np.linalg.norm(truth.velocity, axis=1)
    assert 150 < np.percentile(speed, 99) < 1500  # mm/s, bell-shaped reaches
    assert np.median(speed) < 0.2 * speed.max()  # holds between reaches
    mean_rate = sim_session.counts.mean() / sim_session.bin_width
    assert 5 < mean_rate < 25


def test_counts_are_over_dispersed(sim_session):
    c = sim_session.counts[: sim_session.n_bins // 8 * 8].reshape(-1, 8, sim_session.n_channels).sum(1)
    active = c.mean(0) > 1
    fano = c[:, active].var(0) / c[:, active].mean(0)
    assert np.median(fano) > 1.1


def test_activity_leads_movement(sim_nwb, sim_session):
    """Population activity correlates best with velocity some 50-150 ms in the future."""
    s, pop = sim_session, sim_nwb.truth.population
    z = (s.counts - s.counts.mean(0)) / (s.counts.std(0) + 1e-6)
    u = np.column_stack([np.cos(pop.preferred_direction), np.sin(pop.preferred_direction)])
    drive = (z * pop.velocity_gain) @ u  # population vector
    lags = np.arange(-4, 12)
    score = [np.sum(drive[: len(drive) - k] * s.velocity[k:]) if k >= 0 else
             np.sum(drive[-k:] * s.velocity[:k]) for k in lags]
    assert 2 <= lags[int(np.argmax(score))] <= 6  # bins of 25 ms


def test_history_beats_a_single_bin(sim_session):
    single = ridge_r2(sim_session.counts, sim_session.velocity, 1, (100.0,))
    history = ridge_r2(sim_session.counts, sim_session.velocity, 10, (3000.0,))
    assert history > single + 0.2


def test_rtt_task_is_continuous(tmp_path):
    truth = simulate_nwb(tmp_path / "rtt.nwb", task="rtt", minutes=SHORT, seed=0, n_units=10)
    s = read_nwb(tmp_path / "rtt.nwb")
    assert s.meta["behavior_series"] == "processing/behavior/finger_vel"
    tr = truth.trials
    assert np.allclose(tr["start_time"][1:], tr["stop_time"][:-1])  # target after target
    speed = np.linalg.norm(truth.velocity, axis=1)
    assert np.mean(speed > 20) > 0.5  # mostly moving


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="task"):
        simulate_nwb(tmp_path / "x.nwb", task="juggling", minutes=0.1)
    with pytest.raises(ValueError, match="n_units"):
        simulate_nwb(tmp_path / "x.nwb", minutes=0.1, n_units=0)
    with pytest.raises(ValueError, match="dead_fraction"):
        DriftSpec(dead_fraction=1.5)


# --- drift: each option has its stated effect ------------------------------------------

@pytest.fixture(scope="module")
def steady(tmp_path_factory):
    path = tmp_path_factory.mktemp("drift") / "steady.nwb"
    return path, simulate_nwb(path, minutes=1.0, seed=5, n_units=40)


def drifted(tmp_path, **spec):
    path = tmp_path / "drift.nwb"
    return path, simulate_nwb(path, minutes=1.0, seed=5, n_units=40, drift=DriftSpec(**spec))


def test_dead_channels_fall_silent_at_onset(tmp_path):
    path, truth = drifted(tmp_path, dead_fraction=0.25, dead_onset=20.0)
    dead = truth.drift.dead
    assert dead.sum() == 10
    before, after = rates(path, 0.0, 20.0), rates(path, 20.0, 60.0)
    assert (after[dead] == 0).all() and (before[dead] > 0).all()
    assert (after[~dead] > 0).mean() > 0.9


def test_noisy_channels_gain_untuned_spikes(tmp_path, steady):
    path, truth = drifted(tmp_path, noisy_fraction=0.2, noisy_rate=50.0, noisy_onset=30.0)
    noisy = truth.drift.noisy
    extra = rates(path, 30.0, 60.0) - rates(steady[0], 30.0, 60.0)
    assert noisy.sum() == 8
    assert np.mean(extra[noisy]) == pytest.approx(50.0, rel=0.25)
    assert abs(np.mean(extra[~noisy])) < 3.0


def test_gain_change_scales_rates_after_onset(tmp_path, steady):
    path, _ = drifted(tmp_path, gain_change=2.0, gain_onset=30.0)
    ratio = rates(path, 30.0, 60.0).sum() / rates(steady[0], 30.0, 60.0).sum()
    before = rates(path, 0.0, 30.0).sum() / rates(steady[0], 0.0, 30.0).sum()
    assert ratio == pytest.approx(2.0, rel=0.15) and before == pytest.approx(1.0, rel=0.1)


def test_mid_session_shift_steps_each_unit(tmp_path, steady):
    path, truth = drifted(tmp_path, shift_at=30.0, shift_size=0.7)
    change = np.log((rates(path, 30.0, 60.0) + 0.5) / (rates(steady[0], 30.0, 60.0) + 0.5))
    early = np.log((rates(path, 0.0, 30.0) + 0.5) / (rates(steady[0], 0.0, 30.0) + 0.5))
    assert np.corrcoef(change, truth.drift.shift)[0, 1] > 0.8
    assert np.abs(early).mean() < 0.25 * np.abs(truth.drift.shift).mean() + 0.1


def test_baseline_drift_adds_the_realised_offset(tmp_path, steady):
    path, truth = drifted(tmp_path, baseline_drift=4.0, baseline_kind="linear", baseline_onset=10.0)
    offset = truth.drift.offset_at(np.array([50.0]))[0]  # Hz at 50 s, mid-window
    assert np.all(truth.drift.offset_at(np.array([5.0])) == 0)
    change = rates(path, 40.0, 60.0) - rates(steady[0], 40.0, 60.0)
    assert np.corrcoef(change, offset)[0, 1] > 0.8


def test_drift_is_deterministic_and_seedable():
    from replay.drift import realise

    spec = DriftSpec(dead_fraction=0.3, gain_spread=0.2, baseline_drift=1.0)
    a, b = realise(spec, 50, 60.0, seed=1), realise(spec, 50, 60.0, seed=1)
    np.testing.assert_array_equal(a.dead, b.dead)
    np.testing.assert_array_equal(a.offset_knots, b.offset_knots)
    c = realise(spec, 50, 60.0, seed=2)
    assert not np.array_equal(a.dead, c.dead)
    fixed = DriftSpec(dead_fraction=0.3, seed=11)
    np.testing.assert_array_equal(realise(fixed, 50, 60.0, 1).dead, realise(fixed, 50, 60.0, 2).dead)


# --- the default session -----------------------------------------------------------------

def test_default_session_is_cached_and_resimulated_when_broken(tmp_path, monkeypatch):
    import replay.defaults as d

    monkeypatch.setenv("SPIKESTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(d, "DEFAULT_MINUTES", 0.2)
    first = default_session()
    path = d.default_session_path()
    assert path.parent == tmp_path / "cache" and first.source == str(path)
    stamp = path.stat().st_mtime_ns
    np.testing.assert_array_equal(default_session().counts, first.counts)
    assert path.stat().st_mtime_ns == stamp  # read from the cache, not simulated again
    path.write_bytes(path.read_bytes()[:1000])  # a broken cache file
    again = default_session()
    np.testing.assert_array_equal(again.counts, first.counts)
    part = default_session(minutes=0.1)
    assert part.n_bins == 240
    assert d.load_session(None).n_bins == first.n_bins
    assert d.load_session(path, bin_width=0.05).n_bins == first.n_bins // 2


@pytest.mark.slow
def test_default_session_decodes_like_real_mc_maze():
    """The README's sanity numbers: ridge, 80/20 chronological, train-only z-scoring."""
    s = default_session()
    alphas = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    single = ridge_r2(s.counts, s.velocity, 1, alphas)
    history = ridge_r2(s.counts, s.velocity, 10, alphas)
    print(f"single-bin R2 {single:.3f}, 250 ms R2 {history:.3f}")
    assert single < 0.35 and 0.5 < history < 0.8 and history > single + 0.25
