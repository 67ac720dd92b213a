"""Each adaptation mechanism does what it claims, on hand-built inputs with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decoder_runtime.adaptation.base import Adapter
from decoder_runtime.adaptation import AdaptSettings, build_adapter, build_chain
from decoder_runtime.adaptation.channel_health import ChannelHealth
from decoder_runtime.adaptation.guard import OutputGuard
from decoder_runtime.adaptation.latent_align import (
    LATENT_FILE, LatentAlign, LatentModel, fit_factor_analysis, fit_training_latent, load_latent, save_latent,
)
from decoder_runtime.adaptation.reference import TrainingReference
from decoder_runtime.adaptation.running_norm import RunningNorm
from decoder_runtime.messages import Flag
from models.artifact import ArtifactError, load_artifact, save_artifact
from models.lstm import LSTMDecoder

BW = 0.025
C = 24


def poisson_reference(rates_per_bin: np.ndarray) -> TrainingReference:
    """Training statistics of independent Poisson channels with these per-bin rates."""
    return TrainingReference.from_arrays(rates_per_bin, np.sqrt(rates_per_bin), [0.0, 0.0], [1.0, 1.0], BW)


@pytest.fixture
def rates() -> np.ndarray:
    return np.linspace(0.2, 1.5, C)  # 8-60 Hz


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- running normalisation ------------------------------------------------------------------
def test_warm_start_leaves_training_distribution_unchanged(rates, rng):
    ref = poisson_reference(rates)
    norm = RunningNorm(ref, tau_s=60.0)
    mask = np.zeros(C, dtype=bool)
    x = rng.poisson(rates, size=(4000, C)).astype(np.float32)
    out = np.stack([norm.process(row, mask).copy() for row in x])
    np.testing.assert_array_equal(out[0], x[0])  # the first bin is normalised exactly as in training
    dev = np.abs(out - x) / ref.x_std
    assert dev.mean() < 0.03, dev.mean()
    assert np.percentile(dev, 99) < 0.15


def test_baseline_step_is_tracked_with_the_stated_time_constant(rates):
    tau = 10.0
    ref = poisson_reference(rates)
    norm = RunningNorm(ref, tau_s=tau)
    mask = np.zeros(C, dtype=bool)
    step = 2.0
    before = 200
    n_tau = int(round(tau / BW))
    for _ in range(before):
        norm.process(ref.x_mean.astype(np.float32), mask)
    np.testing.assert_allclose(norm.mu, ref.x_mean)
    for _ in range(n_tau):
        norm.process((ref.x_mean + step).astype(np.float32), mask)
    tracked = (norm.mu - ref.x_mean) / step
    np.testing.assert_allclose(tracked, 1 - 1 / math.e, rtol=1e-5)  # after tau seconds: 1 - 1/e


def test_baseline_step_on_poisson_counts_tracks_1_minus_1_over_e(rates, rng):
    tau = 10.0
    ref = poisson_reference(rates)
    norm = RunningNorm(ref, tau_s=tau)
    mask = np.zeros(C, dtype=bool)
    n_tau = int(round(tau / BW))
    shifted = rates + 1.0
    for row in rng.poisson(shifted, size=(n_tau, C)).astype(np.float32):
        norm.process(row, mask)
    tracked = ((norm.mu - ref.x_mean) / 1.0).mean()
    assert abs(tracked - (1 - 1 / math.e)) < 0.03, tracked
    # and after many time constants the output is back on the training mean
    for row in rng.poisson(shifted, size=(8 * n_tau, C)).astype(np.float32):
        out = norm.process(row, mask)
    assert abs((norm.mu - shifted).mean()) < 0.05


def test_masked_channels_hold_training_mean_and_freeze_stats(rates):
    ref = poisson_reference(rates)
    norm = RunningNorm(ref, tau_s=1.0)
    mask = np.zeros(C, dtype=bool)
    mask[3] = True
    before = norm.snapshot()
    out = norm.process(np.full(C, 9.0, dtype=np.float32), mask)
    assert out[3] == pytest.approx(ref.x_mean[3])
    assert norm.mu[3] == before["mu"][3] and norm.mu[4] != before["mu"][4]


# --- channel health ---------------------------------------------------------------------------
def run_health(health: ChannelHealth, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    mask = np.zeros(x.shape[1], dtype=bool)
    masks, outs, events = [], [], []
    for t, row in enumerate(x):
        outs.append(health.process(row, mask).copy())
        masks.append(mask.copy())
        events += [(t, ev) for ev in health.drain_events()]
    return np.array(masks), np.array(outs), events


def test_dead_channel_is_masked_within_n_bins_and_unmasked_on_recovery(rates, rng):
    ref = poisson_reference(rates)
    health = ChannelHealth(ref)
    x = rng.poisson(rates, size=(3000, C)).astype(np.float32)
    dead, t0, t1 = 20, 1000, 2000
    x[t0:t1, dead] = 0
    masks, outs, events = run_health(health, x)
    n = int(health.dead_bins[dead])
    assert n <= math.ceil(-math.log(1e-20) / rates[dead])  # the stated bound for its training rate
    assert not masks[:t0].any()  # no false alarm on any healthy channel
    first = int(np.argmax(masks[:, dead]))
    assert t0 <= first <= t0 + n - 1  # masked within N bins of going silent
    assert np.all(outs[first:t1, dead] == np.float32(ref.x_mean[dead]))  # filled with the training mean
    (t_mask, ev), *rest = [(t, e) for t, e in events if e.channel == dead]
    assert (t_mask, ev.status) == (first, "dead")
    t_back, ev_back = rest[0]
    assert ev_back.status == "ok" and ev_back.previous == "dead"
    assert t1 + health.recover_bins - 1 <= t_back <= t1 + 20  # hysteresis: 5 non-empty bins
    assert not masks[t_back:, dead].any()
    assert {e.channel for _, e in events} == {dead}


def test_stuck_channel_is_masked(rates, rng):
    ref = poisson_reference(rates)
    health = ChannelHealth(ref, stuck_s=1.0)
    x = rng.poisson(rates, size=(1000, C)).astype(np.float32)
    x[300:, 7] = 3.0
    masks, _, events = run_health(health, x)
    first = int(np.argmax(masks[:, 7]))
    assert 300 + health.stuck_bins - 1 <= first <= 300 + health.stuck_bins + 1
    assert [(e.channel, e.status) for _, e in events] == [(7, "stuck")]


def test_noisy_channel_is_masked_then_released_with_hysteresis(rates, rng):
    ref = poisson_reference(rates)
    health = ChannelHealth(ref, noisy_ratio=6.0, noise_tau_s=5.0, recover_s=2.0)
    x = rng.poisson(rates, size=(6000, C)).astype(np.float32)
    noisy = 0  # the lowest-rate channel: 40 Hz of extra spikes is > 6x its variance
    x[1000:3000, noisy] += rng.poisson(5.0, size=2000)  # a burst of junk: variance far above training
    masks, _, events = run_health(health, x)
    first = int(np.argmax(masks[:, noisy]))
    assert 1000 <= first <= 1000 + 10 / BW  # caught within the short-term window
    released = first + int(np.argmin(masks[first:, noisy]))
    assert released > 3000 + health.calm_bins  # held until calm for recover_s
    assert [e.channel for _, e in events] == [noisy, noisy]
    assert not masks[:, 1:].any()


# --- the guard --------------------------------------------------------------------------------
def test_guard_rolls_back_a_diverging_adaptation(rates, rng):
    """Common-mode input with a tiny variance: per channel the normaliser is right to
    amplify it, but a decoder summing correlated channels then explodes. The guard must roll
    the normaliser back to its last good state, and give up on it after repeated failures."""
    ref = poisson_reference(rates)
    settings = AdaptSettings(method="norm", tau_s=5.0)
    chain = build_chain(ref, settings)
    w = np.full(C, 1.0 / math.sqrt(C))  # a decoder with unit output variance on training input

    def decode(x):
        y = np.array([w @ ((x - ref.x_mean) / ref.x_std)] * 2, dtype=np.float32)
        chain.observe(y)
        return y

    good = rng.poisson(rates, size=(int(60 / BW), C)).astype(np.float32)
    snapshots = []
    for row in good:
        decode(chain.process(row))
    snapshots.append(chain.norm.snapshot())
    common = rng.normal(size=int(240 / BW))
    bad = (ref.x_mean + 0.2 * ref.x_std * common[:, None]).astype(np.float32)
    rollback_state = None
    for t, row in enumerate(bad):
        decode(chain.process(row))
        if rollback_state is None and any(e.kind == "rollback" for e in chain.history):
            rollback_state = chain.norm.snapshot()
    kinds = [e.kind for e in chain.history]
    assert "rollback" in kinds and kinds[-1] == "disabled"
    # the rollback put the normaliser back where it was while the output was plausible
    np.testing.assert_allclose(rollback_state["mu"], snapshots[0]["mu"], atol=0.05)
    assert any("exploded" in e.detail for e in chain.history)
    assert any("rollback" in s or "disabled" in s for s in chain.events)
    # disabled: pass-through, no ADAPT flag
    out = chain.process(bad[0])
    np.testing.assert_array_equal(out, bad[0])
    assert not chain.flags & Flag.ADAPT


def test_guard_keeps_plausible_adaptation(rates, rng):
    ref = poisson_reference(rates)
    norm = RunningNorm(ref)
    guard = OutputGuard(ref, [norm])
    for _ in range(int(120 / BW)):
        assert guard.observe(rng.normal(size=2).astype(np.float32)) is None
    assert not guard.disabled


# --- the learned method: latent alignment ----------------------------------------------------
def latent_data(rng, L, T, psi=0.3, a=0.95):
    """z-scored channels x = L f + e with a smooth latent f (AR(1) with coefficient a, unit variance)."""
    k = L.shape[1]
    f = np.zeros((T, k))
    e = rng.normal(size=(T, k)) * math.sqrt(1 - a * a)
    for t in range(1, T):
        f[t] = a * f[t - 1] + e[t]
    return f @ L.T + rng.normal(size=(T, L.shape[0])) * math.sqrt(psi), f


def ridge(X, Y, lam=1.0):
    X1 = np.hstack([X, np.ones((len(X), 1))])
    return np.linalg.solve(X1.T @ X1 + lam * np.eye(X1.shape[1]), X1.T @ Y)


def r2(pred, true):
    return float(np.mean(1 - ((pred - true) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)))


def test_latent_alignment_recovers_a_linear_distortion_of_the_latent_embedding(rng):
    """Today 30% of channels read the latent through other channels' loadings (an
    electrode shift: a linear distortion of how the latent reaches the channels). A readout
    trained on day 0 loses accuracy; aligning today's latent to day 0's brings it back."""
    c, k = 60, 4
    L0 = rng.normal(0, 0.8, size=(c, k))
    ref = TrainingReference.from_arrays(np.full(c, 2.0), np.full(c, 1.5), [0, 0], [1, 1], BW)
    z_train, f_train = latent_data(rng, L0, 20000)
    counts_train = ref.x_mean + ref.x_std * z_train
    W = ridge(z_train, f_train[:, :2])  # "velocity" = the first two latents
    latent = fit_training_latent(counts_train, ref, k=k)

    moved = rng.choice(c, size=int(0.3 * c), replace=False)
    L_today = L0.copy()
    L_today[moved] = L0[np.roll(moved, 1)]
    z_today, f_today = latent_data(rng, L_today, 12000)
    counts_today = (ref.x_mean + ref.x_std * z_today).astype(np.float32)

    def readout(counts):
        z = (counts - ref.x_mean) / ref.x_std
        return np.hstack([z, np.ones((len(z), 1))]) @ W

    stage = LatentAlign(ref, latent, period_s=10.0, window_blocks=4, min_blocks=2, threaded=False)
    mask = np.zeros(c, dtype=bool)
    out = np.stack([stage.process(row, mask).copy() for row in counts_today])
    late = slice(6000, None)  # after the first fits
    r2_day0 = r2(readout(counts_train[-6000:]), f_train[-6000:, :2])
    r2_drift = r2(readout(counts_today[late]), f_today[late, :2])
    r2_aligned = r2(readout(out[late]), f_today[late, :2])
    assert stage.n_swaps >= 3
    assert r2_drift < r2_day0 - 0.1, (r2_day0, r2_drift)
    recovered = (r2_aligned - r2_drift) / (r2_day0 - r2_drift)
    assert recovered > 0.6, (r2_day0, r2_drift, r2_aligned)


def test_latent_imputes_masked_channels_from_the_others(rng):
    c, k = 60, 4
    L0 = rng.normal(0, 0.8, size=(c, k))
    ref = TrainingReference.from_arrays(np.zeros(c), np.ones(c), [0, 0], [1, 1], BW)
    z, _ = latent_data(rng, L0, 20000)
    latent = fit_training_latent(z, ref, k=k)
    stage = LatentAlign(ref, latent, threaded=False)
    mask = np.zeros(c, dtype=bool)
    mask[:10] = True
    test, _ = latent_data(rng, L0, 2000)
    held = test.copy()
    held[:, :10] = 0.0  # masked channels arrive at the training mean
    out = np.stack([stage.process(row.astype(np.float32), mask).copy() for row in held])
    corr = [np.corrcoef(out[:, i], test[:, i])[0, 1] for i in range(10)]
    assert min(corr) > 0.6, corr  # the shared part of each masked channel comes back
    np.testing.assert_allclose(out[:, 10:], held[:, 10:], atol=1e-4)  # live channels: identity before any fit


def test_threaded_fit_equals_inline_fit_when_done_within_the_delay(rng):
    c, k = 30, 3
    L0 = rng.normal(0, 0.8, size=(c, k))
    ref = TrainingReference.from_arrays(np.zeros(c), np.ones(c), [0, 0], [1, 1], BW)
    latent = fit_training_latent(latent_data(rng, L0, 8000)[0], ref, k=k)
    today = latent_data(rng, L0 * 1.3, 2000)[0].astype(np.float32)
    mask = np.zeros(c, dtype=bool)
    outs = []
    for threaded in (False, True):
        stage = LatentAlign(ref, latent, period_s=5.0, min_blocks=1, threaded=threaded)
        out = []
        for row in today:
            out.append(stage.process(row, mask).copy())
            if stage._worker is not None:
                stage._worker.join()  # the worker finishing within swap_delay, as in real time
        outs.append(np.array(out))
        assert stage.n_swaps >= 5
    np.testing.assert_array_equal(outs[0], outs[1])


def test_factor_analysis_recovers_loadings(rng):
    c, k = 40, 3
    L = rng.normal(0, 0.7, size=(c, k))
    z, _ = latent_data(rng, L, 30000, psi=0.5, a=0.0)
    fit = fit_factor_analysis(np.cov(z, rowvar=False), k, iters=300)
    # loadings are identified up to rotation: compare the implied shared covariance
    np.testing.assert_allclose(fit.loadings @ fit.loadings.T, L @ L.T, atol=0.08)


# --- the chain, its settings and the artifact --------------------------------------------------
def test_chain_is_an_adapter_with_flags_and_events(rates, rng):
    ref = poisson_reference(rates)
    chain = build_chain(ref, AdaptSettings(method="norm+health"))
    assert isinstance(chain, Adapter) and chain.name == "health+norm"
    x = rng.poisson(rates, size=(400, C)).astype(np.float32)
    x[:, 5] = 0
    for row in x:
        chain.process(row)
    assert chain.flags & Flag.ADAPT and chain.flags & Flag.IMPUTED
    assert any("masked" in s and "channel 5" in s for s in chain.events)
    chain.reset()
    assert not chain.events and not chain.history and not chain.mask.any()
    none = build_chain(ref, AdaptSettings(method="none"))
    row = x[0]
    assert none.process(row) is row and none.flags == 0


def test_settings_from_config_and_overrides():
    cfg = {"adaptation": {"method": "norm", "tau_s": 30.0, "latent": {"file": LATENT_FILE}}}
    s = AdaptSettings.resolve(cfg, tau_s=None)
    assert (s.method, s.tau_s) == ("norm", 30.0)
    assert AdaptSettings.resolve(cfg, method="full", tau_s=90.0).tau_s == 90.0
    with pytest.raises(ValueError, match="unknown adaptation method"):
        AdaptSettings.resolve(cfg, method="magic")
    with pytest.raises(ArtifactError, match="unknown settings"):
        AdaptSettings.resolve({"adaptation": {"tau": 3}})
    with pytest.raises(ValueError, match="time constant"):
        AdaptSettings(tau_s=0)


def test_latent_reference_round_trips_through_the_artifact(tmp_path, rng):
    torch.manual_seed(0)
    c = 12
    model = LSTMDecoder(c, hidden=8, layers=1)
    counts = rng.poisson(1.0, size=(3000, c)).astype(np.float32)
    model.set_normalization(counts.mean(0), counts.std(0), [0, 0], [1, 1])
    path = save_artifact(tmp_path / "art", model, channel_ids=range(c), bin_width=BW)
    art = load_artifact(path)
    with pytest.raises(ArtifactError, match="adapt-fit"):
        build_adapter(art, AdaptSettings(method="full"))
    ref = TrainingReference.from_artifact(art)
    latent = fit_training_latent(counts, ref, k=3)
    save_latent(path, latent, {"n_bins": len(counts)})
    art = load_artifact(path)
    back = load_latent(art)
    np.testing.assert_array_equal(back.loadings, latent.loadings)
    chain = build_adapter(art, AdaptSettings(method="full"))
    assert chain.name == "health+norm+latent"
    (path / LATENT_FILE).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_latent(load_artifact(path))


def test_reference_rejects_a_config_without_statistics():
    with pytest.raises(ArtifactError, match="normalization"):
        TrainingReference.from_config({"bin_width": BW})


def test_latent_model_rejects_too_few_live_channels(rng):
    from decoder_runtime.adaptation.latent_align import procrustes_stable

    L = rng.normal(size=(10, 4))
    live = np.zeros(10, dtype=bool)
    live[:2] = True
    with pytest.raises(ValueError, match="live channels"):
        procrustes_stable(L, L, live)
    assert isinstance(LatentModel(L, np.ones(10)).posterior_weights(live), np.ndarray)
