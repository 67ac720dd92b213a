"""spikestream replay: NWB sessions in, binned sessions out, and the simulated default.

Public API (other parts import only these names):
- `bin_spike_times`: spike times -> counts per half-open bin (numba kernel);
- `read_nwb` / `NWBFormatError`: an NWB file (NLB or generic layout) -> `BinnedSession`;
- `simulate_nwb` / `DriftSpec` / `SimulationTruth`: a simulated motor-cortex session in the
  NLB MC_Maze layout, with optional seeded drift, and its ground truth;
- `default_session` / `default_session_path` / `load_session`: the built-in default.
"""
from replay.binning import Ragged, bin_edges, bin_spike_times
from replay.defaults import default_session, default_session_path, load_session
from replay.drift import DriftSpec
from replay.nwb_reader import NWBFormatError, read_nwb
from replay.session import DEFAULT_BIN_WIDTH, BinnedSession
from replay.simulator import SimulationTruth, simulate_nwb

__all__ = [
    "DEFAULT_BIN_WIDTH", "BinnedSession", "DriftSpec", "NWBFormatError", "Ragged",
    "SimulationTruth", "bin_edges", "bin_spike_times", "default_session", "default_session_path",
    "load_session", "read_nwb", "simulate_nwb",
]
