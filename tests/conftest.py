"""Shared fixtures: one small simulated NWB session per test run, for any test file to use."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from replay import BinnedSession, SimulationTruth, read_nwb, simulate_nwb

SMALL_MINUTES = 2.0
SMALL_UNITS = 60
SMALL_SEED = 7


@dataclass(frozen=True)
class SimFile:
    path: Path
    truth: SimulationTruth


@pytest.fixture(scope="session")
def sim_nwb(tmp_path_factory: pytest.TempPathFactory) -> SimFile:
    """A 2-minute, 60-unit simulated maze session written to NWB, with its ground truth."""
    path = tmp_path_factory.mktemp("sim") / "small_maze.nwb"
    truth = simulate_nwb(path, task="maze", minutes=SMALL_MINUTES, seed=SMALL_SEED, n_units=SMALL_UNITS)
    return SimFile(path, truth)


@pytest.fixture(scope="session")
def sim_session(sim_nwb: SimFile) -> BinnedSession:
    """`sim_nwb` read back with the default 25 ms bins."""
    return read_nwb(sim_nwb.path)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """One session cache per test module ($SPIKESTREAM_CACHE): later days are simulated once and shared."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPIKESTREAM_CACHE", str(path))
        yield path
