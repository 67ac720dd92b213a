"""Per-bin step latency: one bin at a time through a backend, state carried, every bin timed.

The latency of a bin is the host's monotonic-clock time from handing the backend one
bin of raw counts to holding the velocity as a host array — exactly what the engine's loop
waits for. On a GPU the backend's `step` returns a NumPy array, so the device work is
finished (synchronised) inside the timed window; CUDA events bracket the same window as a
cross-check on the device's own clock.

Variants run interleaved in rounds (a round of bins for each variant, cycling, with the
order rotated every round) rather than one after another, so a burst of machine noise
lands on all of them alike instead of on whichever happened to be running.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from decoder_runtime.backends.base import Backend, BackendUnavailable
from decoder_runtime.backends import make_backend
from models.artifact import ArtifactError, load_artifact


@dataclass(frozen=True)
class Variant:
    """One thing measured: a model (artifact) on a backend on a device."""

    label: str
    backend: str
    device: str

    @property
    def key(self) -> str:
        return f"{self.label}/{self.backend}/{self.device}"


@dataclass
class Runner:
    variant: Variant
    backend: Backend
    counts: np.ndarray  # float32[T, C]: the bins it streams, cycled when N > T


@dataclass
class Timing:
    variant: Variant
    host_ns: np.ndarray  # int64[N]: perf_counter_ns from step call to velocity on host
    gpu_ns: np.ndarray | None  # int64[N]: CUDA-event time of the same window (GPU only)
    velocity: np.ndarray  # float32[N, 2]: what the backend returned, kept to check it


def pin_threads(threads: int) -> None:
    """Fix torch's intra-op threads (ORT gets the same number per backend).

    With batch-1 steps, extra threads mostly add synchronisation jitter; a fixed count makes
    runs comparable across machines.
    """
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before torch's first parallel work; keep what is set
        pass


def build_runner(variant: Variant, artifact_path: Path, counts: np.ndarray, threads: int) -> Runner:
    """Load the artifact afresh for this backend (backends move the model to their device)."""
    try:
        artifact = load_artifact(artifact_path)
    except ArtifactError as e:
        raise BackendUnavailable(str(e)) from None
    backend = make_backend(artifact, variant.backend, variant.device, threads=threads)
    if counts.shape[1] != artifact.n_channels:
        raise ValueError(f"{variant.key}: counts have {counts.shape[1]} channels, artifact expects {artifact.n_channels}")
    return Runner(variant, backend, np.ascontiguousarray(counts, dtype=np.float32))


def warm_up(runner: Runner, n_bins: int) -> None:
    """Stream bins untimed so first-call compilation, graph capture and caches are paid now.

    Also checks the backend hands back a host NumPy velocity, the contract that makes a
    host clock around `step` include all of the device's work.
    """
    step, counts = runner.backend.step, runner.counts
    for i in range(n_bins):
        y = step(counts[i % len(counts)])
    if not (isinstance(y, np.ndarray) and y.shape == (2,)):
        # A device tensor or a lazy result would let the timed window end before the work does.
        raise TypeError(f"{runner.variant.key}: step returned {type(y).__name__} {getattr(y, 'shape', '')}, "
                        "expected a host numpy array of shape (2,)")
    runner.backend.reset()
    if runner.variant.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time_bins(runner: Runner, start: int, stop: int, t: Timing) -> None:
    """Time bins [start, stop) of this runner's stream; state continues from the last call."""
    step, counts, host, vel = runner.backend.step, runner.counts, t.host_ns, t.velocity
    n_rows = len(counts)
    clock = time.perf_counter_ns
    if t.gpu_ns is None:
        for i in range(start, stop):
            x = counts[i % n_rows]
            t0 = clock()
            y = step(x)
            t1 = clock()
            host[i] = t1 - t0
            vel[i] = y
        return
    import torch

    stream = torch.cuda.current_stream(torch.device(runner.variant.device))
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    gpu = t.gpu_ns
    for i in range(start, stop):
        x = counts[i % n_rows]
        ev0.record(stream)
        t0 = clock()
        y = step(x)
        t1 = clock()
        ev1.record(stream)
        ev1.synchronize()
        host[i] = t1 - t0
        gpu[i] = int(ev0.elapsed_time(ev1) * 1e6)
        vel[i] = y


def run_interleaved(
    runners: Sequence[Runner], n_bins: int, round_size: int,
    on_round: Callable[[int, int], None] | None = None,
) -> list[Timing]:
    """Time n_bins bins per runner, round_size bins per runner per round, order rotating.

    Each runner starts from `reset()` state and carries it across rounds, so its N bins
    are one continuous stream. The garbage collector stays on (a runtime has it on too),
    but everything built during setup is frozen out of its reach first, so a collection
    costs what it would in a long-running runtime, not a sweep over the setup's objects.
    """
    if n_bins <= 0 or round_size <= 0:
        raise ValueError(f"bins ({n_bins}) and round size ({round_size}) must be positive")
    timings = []
    for r in runners:
        r.backend.reset()
        cuda = r.variant.device.startswith("cuda")
        timings.append(Timing(r.variant, np.zeros(n_bins, np.int64),
                              np.zeros(n_bins, np.int64) if cuda else None, np.zeros((n_bins, 2), np.float32)))
    gc.collect()
    gc.freeze()
    try:
        n_rounds = -(-n_bins // round_size)
        for k in range(n_rounds):
            start, stop = k * round_size, min(n_bins, (k + 1) * round_size)
            order = [(j + k) % len(runners) for j in range(len(runners))]
            for j in order:
                _time_bins(runners[j], start, stop, timings[j])
            if on_round is not None:
                on_round(k + 1, n_rounds)
    finally:
        gc.unfreeze()
    for t in timings:
        if not np.isfinite(t.velocity).all():
            raise RuntimeError(f"{t.variant.key}: backend returned non-finite velocities")
    return timings
