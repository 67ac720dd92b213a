"""Shared by the runtime tests: a small simulated session, a real artifact, and references.

The artifact is an LSTM (random weights, fixed seed: the runtime's correctness does not
depend on training) with normalisation from the session's first half and a Wiener fallback
fitted in closed form, as training writes them. References are computed straight from the
torch modules, outside the runtime, so a runtime test compares against an independent path.
Everything is cached per process, so test modules in one pytest run share it.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import torch

from models.artifact import load_artifact, save_artifact
from models.linear import WienerDecoder
from models.lstm import LSTMDecoder
from replay.nwb_reader import read_nwb
from replay.session import BinnedSession
from replay.simulator import simulate_nwb

REPO = Path(__file__).resolve().parents[1]
N_UNITS = 24
_cache: dict = {}


def runtime_base(tmp_path_factory) -> Path:
    """The folder the runtime tests share in one pytest run (session file, artifacts)."""
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    return base


def session_file(base: Path) -> Path:
    """A 1-minute simulated maze session (2,400 bins) as NWB."""
    f = base / "runtime-sim.nwb"
    if not f.exists():
        simulate_nwb(f, task="maze", minutes=1.0, seed=11, n_units=N_UNITS)
    return f


def session(base: Path) -> BinnedSession:
    if "session" not in _cache:
        _cache["session"] = read_nwb(session_file(base))
    return _cache["session"]


def artifact(base: Path, fallback: bool = True) -> Path:
    """An LSTM artifact (hidden 16) for the session, with or without its Wiener fallback."""
    key = ("artifact", fallback)
    if key not in _cache:
        s = session(base)
        half = s.n_bins // 2
        counts, vel, valid = s.counts[:half], s.velocity[:half], s.valid[:half]
        stats = (counts.mean(0), counts.std(0), np.nanmean(vel[valid], 0), np.nanstd(vel[valid], 0))
        torch.manual_seed(0)
        model = LSTMDecoder(s.n_channels, hidden=16, layers=1)
        model.set_normalization(*stats)
        wiener = None
        if fallback:
            wiener = WienerDecoder(s.n_channels, history=5)
            wiener.set_normalization(*stats)
            z = (counts - wiener.x_mean.numpy()) / wiener.x_std.numpy()
            y = (vel - wiener.y_mean.numpy()) / wiener.y_std.numpy()
            wiener.fit(z, y, valid)
        name = "lstm-with-fallback" if fallback else "lstm-no-fallback"
        _cache[key] = save_artifact(base / name, model.eval(), channel_ids=s.unit_ids, bin_width=s.bin_width,
                                    fallback=None if wiener is None else wiener.eval())
    return _cache[key]


def offline(module: torch.nn.Module, counts: np.ndarray, resets: tuple[int, ...] = ()) -> np.ndarray:
    """The module's own `step` over the bins from init_state (state reset before bins in `resets`)."""
    state = module.init_state(1)
    out = np.empty((len(counts), 2), dtype=np.float32)
    with torch.inference_mode():
        for i, x in enumerate(counts):
            if i in resets:
                state = module.init_state(1)
            y, state = module.step(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).view(1, -1), state)
            out[i] = y[0].numpy()
    return out


def loaded(path: Path):
    return load_artifact(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def cli(*args: str, **popen) -> subprocess.Popen:
    """`spikestream ARGS` in a subprocess, from the repository, one torch thread."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "spikestream", *args], cwd=REPO, env=env, **popen)


_SECTION = {"deadline_ms": "deadline", "reserve_us": "deadline", "max_backlog": "deadline",
            "handoff_spin_us": "deadline", "bad_bin": "validation",
            "late_ms": "validation", "on_gap": "validation", "record": "output", "zmq": "output", "wait_subscriber_s": "output",
            "method": "adapt", "tau_s": "adapt"}


def config(art_path, **values):
    """A RuntimeConfig for `art_path` (torch backend, one thread, no ZeroMQ unless given) with `values` laid over."""
    from decoder_runtime.config import RuntimeConfig

    data: dict = {"model": {"artifact": str(art_path), "backend": "torch", "threads": 1}, "output": {"zmq": "none"}}
    for key, value in values.items():
        section = _SECTION.get(key)
        if section is None:
            data[key] = value
        else:
            data.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    return RuntimeConfig.from_dict(data)


def run(art, source, backend=None, outputs=(), stop=None, **values):
    """One run of the runtime exactly as `serve`/`replay` assemble it (decoder_runtime.assemble)."""
    from decoder_runtime.assemble import open_runtime

    with open_runtime(config(art.path, **values), command="test", source=source, backend=backend,
                      extra_outputs=outputs) as rt:
        result = rt.run(stop)
        rt.summary = result.summary()
    return result
