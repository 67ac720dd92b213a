"""The drift evaluation: later days are the same array, streams are the runtime's, numbers add up."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks.drift import DRIFTS, DriftConfig, DriftEvalError, Progress, aggregate, later_day, Day0, run
from decoder_runtime.adaptation.fit import fit_reference
from decoder_runtime.backends import make_backend
from models.artifact import load_artifact, save_artifact
from replay.scoring import r2_scores
from training.baselines import fit_wiener
from training.data import fit_normalization, make_split


@pytest.fixture(scope="module")
def wiener_artifact(sim_nwb, sim_session, tmp_path_factory):
    """A Wiener filter trained on the small simulated session, recorded as simulated data."""
    split = make_split(sim_session)
    norm = fit_normalization(sim_session, split.train)
    model, _ = fit_wiener(sim_session.slice(*split.train), sim_session.slice(*split.val), norm)
    prov = {"kind": "simulated", "task": sim_nwb.truth.task, "sim_seed": sim_nwb.truth.seed, "split": split.to_dict(),
            "meta": {"notes": sim_session.meta["notes"]}}  # what training records for a simulated session
    path = save_artifact(tmp_path_factory.mktemp("art") / "wiener", model, channel_ids=sim_session.unit_ids,
                         bin_width=sim_session.bin_width, provenance=prov)
    fit_reference(load_artifact(path), sim_nwb.path, k=4)
    return path


def test_later_day_is_the_same_array_on_another_day(wiener_artifact, sim_session, cache):
    day0 = Day0.of(load_artifact(wiener_artifact))
    clean = later_day(day0, "none", 0, 1.0, sim_session.bin_width)
    dead = later_day(day0, "dead30", 0, 1.0, sim_session.bin_width)
    assert clean.n_channels == sim_session.n_channels
    rates0, rates1 = sim_session.counts.mean(0), clean.counts.mean(0)
    assert np.corrcoef(rates0, rates1)[0, 1] > 0.9  # the same neurons...
    assert not np.array_equal(clean.counts[:100], sim_session.counts[:100])  # ...on another day
    silent = (dead.counts.sum(0) == 0).sum()
    assert silent == round(0.3 * sim_session.n_channels)
    files = sorted((cache / "drift").glob("*.nwb"))
    assert len(files) == 2  # simulated once, then cached
    stamps = [f.stat().st_mtime_ns for f in files]
    later_day(day0, "none", 0, 1.0, sim_session.bin_width)
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_small_evaluation_end_to_end(wiener_artifact, tmp_path, cache):
    torch.set_num_threads(1)
    cfg = DriftConfig(runs={"wiener": [wiener_artifact]}, seeds=1, minutes=1.0, kinds=("none", "dead30"),
                      methods=("none", "norm+health", "full"), latency_bins=500, latent_k=4)
    results = run(cfg, tmp_path / "out", Progress(lambda s: None))
    saved = json.loads((tmp_path / "out" / "drift.json").read_text())
    md = (tmp_path / "out" / "drift.md").read_text()
    assert len(saved["rows"]) == 2 * 3 and "| dead30 |" in md and "recovered" in md
    assert {x["method"] for x in results["latency"]} == {"none", "norm+health", "full"}
    assert all(x["in_loop"]["p50_us"] > 0 and x["in_loop"]["p99_us"] > 0 for x in results["latency"])
    # the 'none' stream is exactly what the runtime's backend gives on that session
    art = load_artifact(wiener_artifact)
    session = later_day(Day0.of(art), "none", 0, 1.0, art.bin_width)
    backend = make_backend(art, "torch", "cpu")
    pred = np.stack([backend.step(x) for x in session.counts])
    row = next(r for r in results["rows"] if (r["kind"], r["method"]) == ("none", "none"))
    assert row["r2"] == pytest.approx(r2_scores(pred, session.velocity, session.valid)["r2"], abs=1e-5)
    assert results["parity"]["wiener"]["max_abs_diff"] < 1e-3 * float(np.max(art.config["normalization"]["y_std"]))
    dead = next(r for r in results["rows"] if (r["kind"], r["method"]) == ("dead30", "norm+health"))
    assert dead["events"].get("masked", 0) >= 0.3 * art.n_channels - 1  # the dead channels were found


def test_aggregate_recovered_fraction_and_control_check():
    cfg = DriftConfig(runs={"m": []}, seeds=2, kinds=("none", "dead30"), methods=("none", "health", "full"))
    r2 = {("none", "none"): 0.80, ("none", "health"): 0.80, ("none", "full"): 0.78,
          ("dead30", "none"): 0.60, ("dead30", "health"): 0.70, ("dead30", "full"): 0.75}
    rows = [{"model": "m", "seed": s, "kind": k, "method": m, "r2": v + 0.01 * s} for s in (0, 1)
            for (k, m), v in r2.items()]
    a = aggregate(rows, cfg)["m"]
    assert a["recovered"]["dead30"]["health"]["of_mean"] == pytest.approx(0.5)
    assert a["recovered"]["dead30"]["full"]["per_seed"] == pytest.approx([0.75, 0.75])
    assert a["control"]["health"]["ok"] and not a["control"]["full"]["ok"]  # full costs 0.02 on the clean day
    assert a["r2"]["dead30"]["none"]["std"] == pytest.approx(math.sqrt(0.00005))


def test_config_rejects_unknown_kinds_and_missing_references():
    with pytest.raises(DriftEvalError, match="unknown"):
        DriftConfig(runs={}, kinds=("none", "earthquake"))
    with pytest.raises(DriftEvalError, match="references"):
        DriftConfig(runs={}, kinds=tuple(k for k in DRIFTS if k != "none"))


def test_artifact_trained_on_a_real_file_or_an_old_simulator_is_refused(wiener_artifact):
    art = load_artifact(wiener_artifact)
    notes = json.loads(art.config["provenance"]["meta"]["notes"])
    art.config["provenance"]["meta"]["notes"] = json.dumps({**notes, "simulator_version": -1})
    with pytest.raises(DriftEvalError, match="retrain"):
        Day0.of(art)
    art.config["provenance"] = {"kind": "nwb", "path": "/data/monkey.nwb"}
    with pytest.raises(DriftEvalError, match="simulated"):
        Day0.of(art)
