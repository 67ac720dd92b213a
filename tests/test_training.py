"""Training pipeline: splits without leakage, chunks with burn-in, every model end to end.

Everything runs on tiny hand-made sessions so the file stays fast on a 2-core machine; the
real-size numbers live in benchmarks/results/training.md.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models.artifact import load_artifact, read_config, save_artifact
from models.registry import MODEL_NAMES, build_model
from replay.scoring import r2_scores
from replay.session import BinnedSession
from training.augment import AugmentConfig, augment
from training.data import ChunkSampler, fit_normalization, make_split
from training.metrics import evaluate_artifact, forward_predict, stream_predict
from training.runs import RunSpec, seed_stats, train_run
from training.train import TrainConfig, chunk_batches, train_network

torch.set_num_threads(1)

TINY_HPARAMS = {
    "lstm": {"hidden": 16, "layers": 1},
    "transformer": {"d_model": 16, "layers": 1, "heads": 2, "d_ff": 32},
    "mamba": {"d_model": 16, "layers": 1, "d_state": 4},
    "rvq": {"hidden": 16, "code_dim": 8, "stages": 2, "codes": 16},
    "wiener": {},
    "kalman": {},
}
TINY_TRAIN = {"chunk_len": 40, "burn_in": 8, "batch_size": 8}


def index_session(n: int = 300, c: int = 3, trials: bool = False) -> BinnedSession:
    """counts[t, :] = t and velocity[t] = (t, -t): every value names the bin it came from."""
    t = (np.arange(n) + 1) * 0.025
    kw = {}
    if trials:  # trials of 20 bins with 5-bin gaps between them
        starts = np.arange(0, n - 20, 25) * 0.025
        kw["trials"] = {"start_time": starts, "stop_time": starts + 20 * 0.025}
    idx = np.arange(n, dtype=np.float32)
    return BinnedSession(counts=np.repeat(idx[:, None], c, axis=1), t=t, bin_width=0.025,
                         unit_ids=np.arange(c), velocity=np.stack([idx, -idx], axis=1), **kw)


def tiny_session(n: int = 600, c: int = 8, seed: int = 0) -> BinnedSession:
    """Poisson counts tuned to a smooth 2-D velocity that they lead by 3 bins, with trials."""
    rng = np.random.default_rng(seed)
    k = np.arange(n + 3)
    vel = np.stack([np.sin(k / 9.0) + 0.5 * np.sin(k / 4.1), np.cos(k / 7.0)], axis=1)
    tuning = rng.normal(size=(2, c))
    counts = rng.poisson(np.exp(0.3 + 0.6 * vel[3:] @ tuning)).astype(np.float32)
    starts = np.arange(0, n - 40, 50) * 0.025
    velocity = vel[:n].astype(np.float32) * 100
    velocity[100:104] = np.nan  # a behaviour gap: masked, never scored
    return BinnedSession(counts=counts, t=(np.arange(n) + 1) * 0.025, bin_width=0.025, unit_ids=np.arange(c) + 100,
                         velocity=velocity, trials={"start_time": starts, "stop_time": starts + 40 * 0.025},
                         source="tiny")


# --- splits and leakage ------------------------------------------------------------------
def test_split_is_chronological_and_contiguous():
    s = index_session(1000)
    sp = make_split(s)
    assert sp.train == (0, 700) and sp.val == (700, 800) and sp.test == (800, 1000) and sp.by == "time"


def test_split_boundaries_never_cut_a_trial():
    s = index_session(1000, trials=True)
    sp = make_split(s)
    trial = s.trial_of_bin()
    assert sp.by == "trials" and sp.train[0] == 0 and sp.test[1] == 1000
    for cut in (sp.train[1], sp.val[1]):
        assert trial[cut - 1] < 0 or trial[cut - 1] != trial[cut]
        assert abs(cut - {sp.train[1]: 700, sp.val[1]: 800}[cut]) <= 25
    blocks = [set(trial[a:b][trial[a:b] >= 0]) for a, b in (sp.train, sp.val, sp.test)]
    assert not (blocks[0] & blocks[1]) and not (blocks[1] & blocks[2])


def test_split_rejects_sessions_too_short_and_bad_fractions():
    with pytest.raises(ValueError, match="too short"):
        make_split(index_session(60))
    with pytest.raises(ValueError, match="fractions"):
        make_split(index_session(1000), (0.8, 0.3, 0.1))


def test_no_held_out_bin_reaches_training_windows_or_statistics():
    s = index_session(1000, trials=True)
    sp = make_split(s)
    stop = sp.train[1]
    norm = fit_normalization(s, sp.train)
    np.testing.assert_allclose(norm.x_mean, np.arange(stop).mean(), rtol=1e-6)
    np.testing.assert_allclose(norm.x_std, np.arange(stop).std(), rtol=1e-6)
    np.testing.assert_allclose(norm.y_mean, [np.arange(stop).mean(), -np.arange(stop).mean()], rtol=1e-6)
    model = build_model("lstm", s.n_channels, hidden=4, layers=1)
    model.set_normalization(*norm.as_args())
    train = s.slice(*sp.train)
    sampler = ChunkSampler((0, train.n_bins), chunk_len=50, burn_in=10)
    seen = set()
    for seed in range(20):
        for x, y, mask in chunk_batches(train, model, sampler, 4, np.random.default_rng(seed)):
            assert x.max() < stop and x.min() >= 0  # counts name their bin: all from training
            bins = y[..., 0] * float(model.y_std[0]) + float(model.y_mean[0])
            assert bins[mask].max() < stop
            seen.update(x[..., 0].flatten().int().tolist())
    assert max(seen) == stop - 1  # the whole block is reachable, and nothing past it


def test_chunks_tile_the_block_and_burn_in_is_unscored():
    s = tiny_session()
    norm = fit_normalization(s, (0, 420))
    model = build_model("lstm", s.n_channels, hidden=4, layers=1)
    model.set_normalization(*norm.as_args())
    train = s.slice(0, 420)
    sampler = ChunkSampler((0, 420), chunk_len=40, burn_in=8)
    idx = sampler.epoch(np.random.default_rng(3))
    scored = np.sort(idx[:, 8:].ravel())
    assert set(np.diff(scored)) <= {0, 1} and scored[-1] == 419  # tiles the block to its end
    for _, y, mask in chunk_batches(train, model, sampler, 64, np.random.default_rng(3)):
        assert not mask[:, :8].any()
        gap = torch.from_numpy(np.isin(idx, np.arange(100, 104)))
        assert not mask[gap].any()  # NaN-behaviour bins never enter the loss
        assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match="fewer than one chunk"):
        ChunkSampler((0, 30), chunk_len=40, burn_in=8)


def test_augment_is_identity_when_off_and_drops_whole_channels():
    z = torch.randn(4, 50, 20)
    assert augment(z, AugmentConfig(enabled=False)) is z
    g = torch.Generator().manual_seed(0)
    out = augment(z, AugmentConfig(dropout=0.5, noise_std=0.0, gain_std=0.0), g)
    dropped = (out == 0).all(dim=1)
    assert dropped.any() and torch.equal(out[~dropped.unsqueeze(1).expand_as(out)], z[~dropped.unsqueeze(1).expand_as(z)])
    noisy = augment(z, AugmentConfig(dropout=0.0), torch.Generator().manual_seed(1))
    assert 0.05 < (noisy - z).std() < 0.5


# --- training ----------------------------------------------------------------------------
def test_forward_on_a_block_equals_streaming_it():
    s = tiny_session()
    model = build_model("lstm", s.n_channels, hidden=8, layers=2)
    model.set_normalization(*fit_normalization(s, (0, 420)).as_args())
    np.testing.assert_allclose(forward_predict(model, s.counts), stream_predict(model, s.counts), atol=1e-4)


def test_training_improves_validation_r2_and_restores_the_best_epoch():
    s = tiny_session()
    sp = make_split(s)
    model = build_model("lstm", s.n_channels, hidden=16, layers=1)
    model.set_normalization(*fit_normalization(s, sp.train).as_args())
    val = s.slice(*sp.val)
    before = r2_scores(stream_predict(model, val.counts), val.velocity, val.valid)["r2"]
    result = train_network(model, s.slice(*sp.train), val, TrainConfig(epochs=8, lr=1e-2, **TINY_TRAIN))
    after = r2_scores(stream_predict(model, val.counts), val.velocity, val.valid)["r2"]
    assert after > before + 0.3
    assert after == pytest.approx(result.best_val_r2, abs=1e-4)  # best weights restored
    assert result.epochs_run == len(result.history) and 1 <= result.best_epoch <= result.epochs_run


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_tiny_end_to_end_run_of_every_model(name, tmp_path):
    s = tiny_session()
    spec = RunSpec(model=name, out=tmp_path / name, epochs=2, threads=1, hparams=TINY_HPARAMS[name],
                   train_overrides=TINY_TRAIN)
    summary = train_run(spec, s, {"kind": "test"})
    art = load_artifact(tmp_path / name)
    cfg = art.config
    assert cfg["model"]["name"] == name and cfg["n_channels"] == 8 and cfg["channel_ids"] == list(range(100, 108))
    assert (art.fallback is None) == (name == "wiener")
    split = cfg["provenance"]["split"]
    test = s.slice(*split["test"])
    # the loaded artifact reproduces the held-out figure it was saved with, bit for bit
    pred = stream_predict(art.model, test.counts)
    assert r2_scores(pred, test.velocity, test.valid)["r2"] == pytest.approx(cfg["metrics"]["test"]["r2"], abs=1e-12)
    np.testing.assert_allclose(cfg["normalization"]["x_mean"], s.counts[slice(*split["train"])].mean(0), rtol=1e-5)
    fitted = {"rvq": 2 * 16 * 8, "kalman": 2 * 2 + 2 * 8 + 2}.get(name, 0)  # codebooks; Kalman M, K, b
    assert cfg["training"]["n_params"] == sum(p.numel() for p in art.model.parameters()) + fitted
    assert set(cfg["metrics"]["baselines_test"]) == {"wiener", "kalman"}
    assert summary["n_seeds"] == 1 and summary["metrics"]["r2"]["mean"] == cfg["metrics"]["test"]["r2"]
    assert (tmp_path / name / "summary.json").is_file() and (tmp_path / name / "velocity.png").is_file()
    if name in ("wiener", "kalman"):
        return
    assert (tmp_path / name / "learning_curve.png").is_file()
    assert cfg["training"]["augment"]["enabled"] and cfg["training"]["epochs_run"] >= 1
    if name == "rvq":
        rvq = cfg["metrics"]["rvq"]
        assert len(rvq["test_usage"]["utilisation"]) == 2 and "encoder_test_r2" in rvq
        assert art.model.use_quantizer  # the artifact always quantises


def test_artifact_round_trip_gives_identical_predictions(tmp_path):
    s = tiny_session()
    sp = make_split(s)
    model = build_model("transformer", s.n_channels, **TINY_HPARAMS["transformer"])
    model.set_normalization(*fit_normalization(s, sp.train).as_args())
    train_network(model, s.slice(*sp.train), s.slice(*sp.val), TrainConfig(epochs=1, **TINY_TRAIN))
    save_artifact(tmp_path / "a", model, channel_ids=s.unit_ids, bin_width=s.bin_width)
    loaded = load_artifact(tmp_path / "a").model
    np.testing.assert_array_equal(stream_predict(model, s.counts), stream_predict(loaded, s.counts))


def test_multi_seed_layout_summary_and_evaluate(tmp_path):
    s = tiny_session()
    spec = RunSpec(model="lstm", out=tmp_path / "run", seeds=2, epochs=1, threads=1,
                   hparams=TINY_HPARAMS["lstm"], train_overrides=TINY_TRAIN)
    summary = train_run(spec, s, {"kind": "test"})
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["n_seeds"] == 2 and [r["seed"] for r in on_disk["runs"]] == [0, 1]
    r2s = [read_config(tmp_path / "run" / f"seed-{k}")["metrics"]["test"]["r2"] for k in (0, 1)]
    assert summary["metrics"]["r2"]["mean"] == pytest.approx(np.mean(r2s))
    assert summary["metrics"]["r2"]["std"] == pytest.approx(np.std(r2s, ddof=1))
    # evaluate = the whole session streamed through step from init_state
    result = evaluate_artifact(tmp_path / "run" / "seed-1", s)
    model = load_artifact(tmp_path / "run" / "seed-1").model
    assert result["metrics"]["r2"] == r2_scores(stream_predict(model, s.counts), s.velocity, s.valid)["r2"]
    assert result["fallback"]["model"] == "wiener" and result["channel_ids_match"]
    other = tiny_session(c=5)
    with pytest.raises(ValueError, match="channels"):
        evaluate_artifact(tmp_path / "run" / "seed-1", other)


def test_seed_stats_mean_std_and_t_interval():
    st = seed_stats([0.80, 0.82, 0.84])
    assert st["mean"] == pytest.approx(0.82) and st["std"] == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, df=2)
    assert st["ci95"] == pytest.approx([0.82 - half, 0.82 + half])
    one = seed_stats([0.5])
    assert one["mean"] == 0.5 and one["std"] is None and one["ci95"] is None
    assert seed_stats([0.7, None, float("nan"), 0.9])["n"] == 2


def test_cli_train_and_evaluate_on_an_nwb_file(tmp_path):
    from typer.testing import CliRunner

    from spikestream.cli import _register, app
    from replay.nwb_reader import read_nwb
    from replay.simulator import simulate_nwb

    _register()
    nwb = tmp_path / "s.nwb"
    simulate_nwb(nwb, task="maze", minutes=1.0, seed=3, n_units=20)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--model", "lstm", "--data", str(nwb), "--out", str(tmp_path / "run"),
                              "--epochs", "1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "kalman" in res.output and "held-out test block" in res.output and (tmp_path / "run" / "config.json").is_file()
    prov = read_config(tmp_path / "run")["provenance"]
    assert prov["kind"] == "nwb" and prov["path"] == str(nwb.resolve()) and len(prov["sha256"]) == 64
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--summary-json", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "eval.json").read_text())[0]
    assert got["metrics"]["r2"] == evaluate_artifact(tmp_path / "run", read_nwb(nwb))["metrics"]["r2"]
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "neither config.json" in res.output
    res = runner.invoke(app, ["train", "--model", "gru", "--data", str(nwb), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown model" in res.output
