"""The NWB reader on hostile files (real NWB files written with pynwb): sizes checked before
anything is allocated, and what would pass silently (negative spike times, units without
spikes, behaviour much shorter than the spikes) is warned about or refused."""
from __future__ import annotations

import subprocess
import warnings

import numpy as np
import pytest

import runtime_helpers as h
from replay import NWBFormatError, read_nwb
from test_nwb_reader import series, some_spikes, write_nwb


def test_absurd_behaviour_timestamps_are_refused_before_allocating(tmp_path):
    """Fault: timestamps spanning 1e7 s made `info` allocate ~6 GB and die with a traceback."""
    ts = np.concatenate([np.arange(99) / 100.0, [1e7]])
    path = write_nwb(tmp_path / "absurd.nwb", some_spikes(),
                     [series("cursor_vel", np.zeros((100, 2)), timestamps=ts)], where="acquisition")
    with pytest.raises(NWBFormatError, match=r"spans 1e\+07 s .* 400,000,000 bins of 25 ms x 3 units = "
                                             r"[\d,]+ MB, over the 4,096 MB limit"):
        read_nwb(path, behavior="cursor_vel")
    proc = h.cli("info", str(path), "--behavior", "cursor_vel", stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in out and "over the 4,096 MB limit" in " ".join(out.split())


def test_the_limit_is_a_setting(tmp_path, monkeypatch):
    ts = np.arange(4000) / 1000.0
    path = write_nwb(tmp_path / "ok.nwb", some_spikes(duration=4.0),
                     [series("cursor_vel", np.zeros((4000, 2)), timestamps=ts)], where="acquisition")
    assert read_nwb(path, behavior="cursor_vel").n_bins == 160
    with pytest.raises(NWBFormatError, match="over the 0 MB limit"):
        read_nwb(path, behavior="cursor_vel", max_session_mb=1e-4)
    monkeypatch.setenv("SPIKESTREAM_MAX_SESSION_MB", "0.0001")
    with pytest.raises(NWBFormatError, match="SPIKESTREAM_MAX_SESSION_MB"):
        read_nwb(path, behavior="cursor_vel")


def _read(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = read_nwb(path, behavior="cursor_vel")
    return s, [str(w.message) for w in caught]


def test_negative_spike_times_units_without_spikes_and_short_behaviour_are_warned(tmp_path):
    """Fault: negative spike times were dropped, silent units and a short behaviour series
    (the session trimmed to it) passed without a word."""
    ts = np.arange(2000) / 1000.0

    def vel():
        return [series("cursor_vel", np.zeros((2000, 2)), timestamps=ts)]

    spikes = some_spikes(duration=2.0)
    spikes[0] = np.concatenate([[-0.5, -0.2], spikes[0]])
    s, said = _read(write_nwb(tmp_path / "neg.nwb", spikes + [np.array([], float)], vel(), where="acquisition"))
    assert any("2 spike times are negative (earliest -0.5 s)" in w for w in said)
    assert any("1 of 4 units have no spike in the binned range (ids 3)" in w for w in said)
    assert s.meta["warnings"] == said and s.n_channels == 4
    short = [series("cursor_vel", np.zeros((500, 2)), timestamps=ts[:500])]
    s, said = _read(write_nwb(tmp_path / "short.nwb", some_spikes(duration=20.0), short, where="acquisition"))
    assert s.n_bins == 20
    assert any("lie outside the binned range [0, 0.5) s set by behaviour 'acquisition/cursor_vel'" in w
               and "the session is trimmed to the behaviour" in w for w in said)
    clean, said = _read(write_nwb(tmp_path / "clean.nwb", some_spikes(duration=2.0), vel(), where="acquisition"))
    assert said == [] and clean.meta["warnings"] == []


def test_a_session_with_no_spike_in_range_is_refused(tmp_path):
    ts = np.arange(2000) / 1000.0
    path = write_nwb(tmp_path / "silent.nwb", [s + 100.0 for s in some_spikes()],
                     [series("cursor_vel", np.zeros((2000, 2)), timestamps=ts)], where="acquisition")
    with pytest.raises(NWBFormatError, match=r"no unit has a spike in the binned range \[0, 2\) s"):
        _read(path)
