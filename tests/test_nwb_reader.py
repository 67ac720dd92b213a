"""read_nwb: simulated files round-trip to the ground truth; generic layouts; bad files."""
from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from pynwb import NWBHDF5IO, NWBFile, TimeSeries

from replay import NWBFormatError, bin_spike_times, read_nwb
from replay.nwb_reader import resample_to_bins

BW = 0.025


def write_nwb(path: Path, spikes: list[np.ndarray] | None, series: list[TimeSeries] = (),
              where: str = "processing") -> Path:
    """A minimal real NWB file: optional units, behaviour TimeSeries in `where`."""
    nwb = NWBFile(session_description="test", identifier=path.stem,
                  session_start_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    for s in spikes or ():
        nwb.add_unit(spike_times=s)
    if where == "processing" and series:
        module = nwb.create_processing_module("behavior", "test behaviour")
        for ts in series:
            module.add(ts)
    else:
        for ts in series:
            nwb.add_acquisition(ts)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def some_spikes(n_units: int = 3, duration: float = 2.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.uniform(0, duration, 40)) for _ in range(n_units)]


def series(name: str, data: np.ndarray, rate: float | None = 1000.0, timestamps=None) -> TimeSeries:
    kw = {"timestamps": timestamps} if timestamps is not None else {"rate": rate, "starting_time": 0.0}
    return TimeSeries(name=name, data=data, unit="mm", **kw)


# --- the simulated NLB-layout file against its ground truth -----------------------------

def test_counts_are_the_binned_stored_spike_times(sim_nwb, sim_session):
    with NWBHDF5IO(str(sim_nwb.path), "r") as io:
        units = io.read().units
        stored = [np.asarray(units.get_unit_spike_times(i)) for i in range(len(units.id))]
        ids = units.id.data[:]
    s = sim_session
    assert s.counts.shape == (sim_nwb.truth.duration / BW, len(stored))
    np.testing.assert_array_equal(s.unit_ids, ids)
    edges = np.arange(s.n_bins + 1) * BW
    for c, times in enumerate(stored):
        np.testing.assert_array_equal(s.counts[:, c], np.histogram(times, edges)[0])
    assert s.counts.sum() == sim_nwb.truth.n_spikes.sum()
    np.testing.assert_allclose(s.t, edges[1:])


def test_velocity_is_the_true_velocity_averaged_over_each_bin(sim_nwb, sim_session):
    truth = sim_nwb.truth
    per_bin = int(round(BW / truth.dt))
    expected = truth.velocity.reshape(-1, per_bin, 2).mean(axis=1)
    np.testing.assert_allclose(sim_session.velocity, expected, rtol=1e-5, atol=1e-3)
    assert sim_session.valid.all()
    assert sim_session.meta["behavior_series"] == "processing/behavior/hand_vel"
    assert sim_session.meta["behavior_gaps"]["masked_bins"] == 0


def test_position_path_differentiates_to_the_recorded_velocity(sim_nwb, sim_session):
    from_pos = read_nwb(sim_nwb.path, behavior="hand_pos")
    assert from_pos.meta["behavior_kind"] == "position"
    np.testing.assert_allclose(from_pos.velocity, sim_session.velocity, atol=1e-2)


def test_trials_round_trip(sim_nwb, sim_session):
    truth = sim_nwb.truth.trials
    assert set(truth) <= set(sim_session.trials)
    for k, v in truth.items():
        np.testing.assert_allclose(sim_session.trials[k], v)
    assert (sim_session.trial_of_bin() >= 0).any()


def test_time_window_and_bin_width(sim_nwb, sim_session):
    part = read_nwb(sim_nwb.path, t_start=10.0, t_stop=20.0)
    assert part.n_bins == 400 and part.t[0] == pytest.approx(10.025)
    np.testing.assert_array_equal(part.counts, sim_session.counts[400:800])
    assert (part.trials["start_time"] < 20.0).all() and (part.trials["stop_time"] > 10.0).all()
    fine = read_nwb(sim_nwb.path, bin_width=0.005)
    np.testing.assert_array_equal(fine.counts.reshape(-1, 5, fine.n_channels).sum(1), sim_session.counts)


# --- generic layout, gaps and resampling ---------------------------------------------

def test_generic_layout_with_nan_and_timestamp_gaps_is_masked_and_reported(tmp_path):
    ts = np.arange(2000) / 1000.0
    keep = (ts < 0.5) | (ts >= 0.6)  # a 100 ms hole in the timestamps: bins 20..23 empty
    pos = np.column_stack([100 * ts, -50 * ts, np.zeros_like(ts)])  # 3 columns: x, y, z
    pos[1500:1510] = np.nan  # NaN samples: bins 60 (and its neighbours via the derivative)
    path = write_nwb(tmp_path / "gen.nwb", some_spikes(),
                     [series("cursor_pos", pos[keep], timestamps=ts[keep])], where="acquisition")
    with pytest.warns(UserWarning, match="masked"):
        s = read_nwb(path, behavior="cursor_pos")
    assert s.meta["behavior_series"] == "acquisition/cursor_pos"
    gaps = s.meta["behavior_gaps"]
    assert gaps["time_gaps"] == 1 and gaps["nan_samples"] == 10
    assert not s.valid[20:24].all() and not s.valid[60]
    assert gaps["masked_bins"] == int((~s.valid).sum()) and gaps["fraction"] == pytest.approx(gaps["masked_bins"] / 80)
    assert np.isnan(s.velocity[~s.valid]).all()
    ok = s.valid
    np.testing.assert_allclose(s.velocity[ok], np.tile([100.0, -50.0], (ok.sum(), 1)), rtol=1e-6)


def test_coarse_behaviour_is_interpolated_not_masked():
    ts = np.arange(0, 2.0, 0.05)  # 20 Hz: half the 25 ms bins hold no sample
    values = np.column_stack([ts, 2 * ts])
    edges = np.arange(0, 1.95 + 1e-9, BW)
    out, valid, report = resample_to_bins(ts, values, edges)
    assert valid.all() and report["interpolated_bins"] > 0
    centre_or_mean = np.where(np.isin(np.arange(edges.size - 1) % 2, [1]),
                              0.5 * (edges[:-1] + edges[1:]), edges[:-1])
    np.testing.assert_allclose(out[:, 0], centre_or_mean, atol=1e-6)


def test_explicit_behaviour_kind_and_path(tmp_path):
    v = np.ones((2000, 2))
    path = write_nwb(tmp_path / "k.nwb", some_spikes(), [series("joystick", v)])
    with pytest.raises(NWBFormatError, match="velocity or a position"):
        read_nwb(path, behavior="joystick")
    s = read_nwb(path, behavior="processing/behavior/joystick", behavior_kind="velocity")
    np.testing.assert_allclose(s.velocity, 1.0)


# --- bad files: one test per case -----------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(NWBFormatError, match="no such file"):
        read_nwb(tmp_path / "absent.nwb")


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_hdf5(sim_nwb, tmp_path, keep):
    data = sim_nwb.path.read_bytes()
    cut = tmp_path / "cut.nwb"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(NWBFormatError, match="truncated"):
        read_nwb(cut)


def test_not_hdf5_at_all(tmp_path):
    junk = tmp_path / "junk.nwb"
    junk.write_text("this is not an HDF5 file")
    with pytest.raises(NWBFormatError, match="cannot open"):
        read_nwb(junk)


def test_missing_units_table(tmp_path):
    path = write_nwb(tmp_path / "nounits.nwb", None, [series("hand_vel", np.zeros((100, 2)))])
    with pytest.raises(NWBFormatError, match="no units table"):
        read_nwb(path)


def test_no_behaviour(tmp_path):
    path = write_nwb(tmp_path / "nobeh.nwb", some_spikes())
    with pytest.raises(NWBFormatError, match="no behaviour"):
        read_nwb(path)
    with pytest.raises(NWBFormatError, match="no behaviour TimeSeries 'cursor_pos'"):
        read_nwb(path, behavior="cursor_pos")


def test_spike_times_of_the_wrong_type(tmp_path):
    path = write_nwb(tmp_path / "strspikes.nwb", some_spikes(), [series("hand_vel", np.zeros((100, 2)))])
    with h5py.File(path, "r+") as f:
        n = f["units/spike_times"].shape[0]
        attrs = dict(f["units/spike_times"].attrs)
        del f["units/spike_times"]
        ds = f.create_dataset("units/spike_times", data=np.array([b"x"] * n))
        ds.attrs.update(attrs)
    with pytest.raises(NWBFormatError, match="spike_times must be numeric"):
        read_nwb(path)


@pytest.mark.parametrize("data, match", [
    (np.zeros(100), r"must be \[time, >=2"),
    (np.zeros((100, 1)), r"must be \[time, >=2"),
    (np.zeros((100, 2, 2)), r"must be \[time, >=2"),
    (np.array([b"a"] * 100), "must be numeric"),
])
def test_behaviour_of_the_wrong_shape_or_type(tmp_path, data, match):
    path = write_nwb(tmp_path / "badbeh.nwb", some_spikes(), [series("hand_vel", data)])
    with pytest.raises(NWBFormatError, match=match):
        read_nwb(path)


def test_ambiguous_behaviour_name(tmp_path):
    nwb_path = tmp_path / "amb.nwb"
    nwb = NWBFile(session_description="t", identifier="amb",
                  session_start_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    for s in some_spikes(duration=0.1):  # the spikes' span is the behaviour's (else: a warning)
        nwb.add_unit(spike_times=s)
    nwb.add_acquisition(series("cursor_pos", np.zeros((100, 2))))
    nwb.create_processing_module("behavior", "b").add(series("cursor_pos", np.zeros((100, 2))))
    with NWBHDF5IO(str(nwb_path), "w") as io:
        io.write(nwb)
    with pytest.raises(NWBFormatError, match="ambiguous"):
        read_nwb(nwb_path, behavior="cursor_pos")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_nwb(nwb_path, behavior="acquisition/cursor_pos").n_bins == 4


def test_nwb_format_error_is_a_value_error():
    assert issubclass(NWBFormatError, ValueError)
    assert bin_spike_times  # the reader's counts come from the tested kernel


def test_nlb_style_trials_with_text_and_ragged_columns(tmp_path):
    path = tmp_path / "trials.nwb"
    nwb = NWBFile(session_description="t", identifier="trials",
                  session_start_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    for s in some_spikes():
        nwb.add_unit(spike_times=s)
    nwb.create_processing_module("behavior", "b").add(
        series("hand_vel", np.zeros((2000, 2)), timestamps=np.arange(2000) / 1000.0))
    nwb.add_trial_column("split", "train/val/test")
    nwb.add_trial_column("barriers", "ragged per trial", index=True)
    nwb.add_trial(start_time=0.1, stop_time=0.9, split="train", barriers=[1.0, 2.0, 3.0])
    nwb.add_trial(start_time=1.0, stop_time=1.8, split="test", barriers=[4.0])
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    s = read_nwb(path)
    assert list(s.trials["split"]) == ["train", "test"]
    np.testing.assert_array_equal(s.trials["barriers"][0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(s.trials["barriers"][1], [4.0])
    assert s.trial_of_bin()[10] == 0 and s.trial_of_bin()[50] == 1
