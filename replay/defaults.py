"""The built-in default session: simulated once, cached as NWB, read like any real file.

Going through the file and `read_nwb` (rather than handing over the simulator's arrays)
means the default exercises exactly the path real data takes.
"""
from __future__ import annotations

import os
from pathlib import Path

from replay.nwb_reader import NWBFormatError, read_nwb
from replay.session import BinnedSession
from replay.simulator import SIMULATOR_VERSION, simulate_nwb

DEFAULT_TASK = "maze"
DEFAULT_MINUTES = 10.0
DEFAULT_UNITS = 142  # like MC_Maze_Small


def cache_dir() -> Path:
    """$SPIKESTREAM_CACHE if set, else ~/.cache/spikestream."""
    env = os.environ.get("SPIKESTREAM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "spikestream"


def default_session_path(task: str = DEFAULT_TASK, seed: int = 0, minutes: float | None = None) -> Path:
    """Path of the cached default NWB file, simulating it first if missing or unreadable."""
    minutes = DEFAULT_MINUTES if minutes is None else float(minutes)
    path = cache_dir() / f"sim-{task}-seed{seed}-{minutes:g}min-{DEFAULT_UNITS}u-v{SIMULATOR_VERSION}.nwb"
    if not _readable(path):
        simulate_nwb(path, task=task, minutes=minutes, seed=seed, n_units=DEFAULT_UNITS)
    return path


def default_session(task: str = DEFAULT_TASK, seed: int = 0, minutes: float | None = None,
                    **read_kw) -> BinnedSession:
    """The default simulated session (10 min maze, 142 units), or its first `minutes`."""
    sim_minutes = DEFAULT_MINUTES if minutes is None else max(DEFAULT_MINUTES, float(minutes))
    path = default_session_path(task, seed, sim_minutes)
    if minutes is not None:
        read_kw.setdefault("t_start", 0.0)
        read_kw.setdefault("t_stop", float(minutes) * 60.0)
    session = read_nwb(path, **read_kw)
    session.meta.update(default_session={"task": task, "seed": seed, "minutes": sim_minutes})
    return session


def load_session(path: str | os.PathLike | None, **kw) -> BinnedSession:
    """A session from an NWB file, or the default simulated one when `path` is None.

    Keywords go to `read_nwb` (bin_width, behavior, t_start, t_stop, ...); for the default,
    `task`, `seed` and `minutes` pick which simulated session.
    """
    if path is None:
        return default_session(**kw)
    return read_nwb(path, **kw)


def _readable(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        from pynwb import NWBHDF5IO

        with NWBHDF5IO(str(path), "r") as io:
            nwb = io.read()
            return nwb.units is not None and "behavior" in nwb.processing
    except Exception:  # any failure to open means: simulate it again
        return False
