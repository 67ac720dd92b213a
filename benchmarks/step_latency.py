"""Per-bin step latency: one bin at a time through a backend, state carried, every bin timed.

The latency of a bin is the host's monotonic-clock time from handing the backend one
bin of raw counts to holding the velocity as a host array — exactly what the engine's loop
waits for. On a GPU the backend's `step` returns a NumPy array, so the device work is
finished (synchronised) inside the timed window; CUDA events bracket the same window as a
cross-check on the device's own clock.

Variants run interleaved in rounds (a round of bins for each variant, cycling, with the
order rotated every round) rather than one after another, so a burst of machine noise
lands on all of them alike instead of on whichever happened to be running. Or, with a
pace (`run_paced`), every variant steps once per period of a real-time schedule, the way a
rig feeds a decoder, so what a bin costs after the machine sat idle for 25 ms shows.
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


def _bin_timer(runner: Runner, t: Timing) -> Callable[[int], None]:
    """A function that times bin i of this runner's stream into `t`; state carries on from the last bin.

    On a GPU, CUDA events on the backend's stream bracket the same window as the host clock.
    """
    step, counts, host, vel = runner.backend.step, runner.counts, t.host_ns, t.velocity
    n_rows = len(counts)
    clock = time.perf_counter_ns
    if t.gpu_ns is None:
        def one(i: int) -> None:
            x = counts[i % n_rows]
            t0 = clock()
            y = step(x)
            t1 = clock()
            host[i] = t1 - t0
            vel[i] = y
        return one
    import torch

    stream = torch.cuda.current_stream(torch.device(runner.variant.device))
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    gpu = t.gpu_ns

    def one_cuda(i: int) -> None:
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
    return one_cuda


def _start_timings(runners: Sequence[Runner], n_bins: int) -> list[Timing]:
    """Empty per-bin arrays for every runner, each runner reset to its start state."""
    timings = []
    for r in runners:
        r.backend.reset()
        cuda = r.variant.device.startswith("cuda")
        timings.append(Timing(r.variant, np.zeros(n_bins, np.int64),
                              np.zeros(n_bins, np.int64) if cuda else None, np.zeros((n_bins, 2), np.float32)))
    return timings


def _check_finite(timings: list[Timing]) -> list[Timing]:
    for t in timings:
        if not np.isfinite(t.velocity).all():
            raise RuntimeError(f"{t.variant.key}: backend returned non-finite velocities")
    return timings


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
    timings = _start_timings(runners, n_bins)
    timers = [_bin_timer(r, t) for r, t in zip(runners, timings)]
    gc.collect()
    gc.freeze()
    try:
        n_rounds = -(-n_bins // round_size)
        for k in range(n_rounds):
            start, stop = k * round_size, min(n_bins, (k + 1) * round_size)
            order = [(j + k) % len(runners) for j in range(len(runners))]
            for j in order:
                one = timers[j]
                for i in range(start, stop):
                    one(i)
            if on_round is not None:
                on_round(k + 1, n_rounds)
    finally:
        gc.unfreeze()
    return _check_finite(timings)


def run_paced(runners: Sequence[Runner], n_bins: int, hz: float) -> tuple[list[Timing], list[np.ndarray]]:
    """Time n_bins bins per runner at `hz` bins per second each, the pace a rig feeds them.

    Back to back, a step finds the CPU's and GPU's caches, clocks and branch predictors hot
    from the bin before; at 40 Hz a rig's decoder waits 25 ms between bins, and every stage
    gets slower (REFERENCE.md: a numba LSTM step 40 us back to back, ~240 us at 40 Hz). So
    each runner steps once per period, in its own fixed slot: runner j's bin k is released
    at t0 + k / hz + j / (hz * len(runners)), the slots spread evenly through the period, on
    one drift-free schedule (replay.pacing.Pacer: sleep, then spin the last 1 ms). Every
    runner therefore sees exactly 1 / hz between its own bins, with the others' steps in
    between, as a rig's decoder sees the rest of the runtime. All runners must fit in one
    period; a step that overruns its slot delays the next release, which the returned
    lateness (ns, per runner and bin, how late each release was) shows.
    """
    from replay.pacing import Pacer

    if n_bins <= 0 or not hz > 0:
        raise ValueError(f"bins ({n_bins}) and pace ({hz} Hz) must be positive")
    n = len(runners)
    timings = _start_timings(runners, n_bins)
    timers = [_bin_timer(r, t) for r, t in zip(runners, timings)]
    late = [np.zeros(n_bins, np.int64) for _ in runners]
    pacer = Pacer(1.0 / (hz * n))  # one slot per runner per period
    gc.collect()
    gc.freeze()
    try:
        pacer.start()
        for k in range(n_bins):
            for j, one in enumerate(timers):
                late[j][k] = pacer.wait(k * n + j)
                one(k)
    finally:
        gc.unfreeze()
    return _check_finite(timings), late
