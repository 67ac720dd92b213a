"""The runtime's loop: one bin at a time, source -> validate -> adapt -> step -> publish -> record.

Read `Engine.run`, then `Engine.bin`, top to bottom: that is everything that happens to a bin
in a session (the keep-warm pass runs `Engine.bin` too, on a scratch lane).
What happens to the bin's counts (validate, adapt, step under the deadline with the fallback,
observe) is `decoder_runtime.core.BinCore.decode`, the same call offline evaluation makes;
the engine adds what only a live session has: the source's clock, the deadline's start,
publishing and recording. Each stage is stamped with time.monotonic_ns() into a
preallocated per-bin array (`decoder_runtime.timing.STAGES`), so a report can say where the
time went, and the loop itself allocates nothing it can avoid: the message dict and its
msgpack bytes are the only per-bin objects.

Latency bound (`deadline.deadline_ms`): the bin's answer is due `deadline - reserve` after
its arrival; the model steps inline under a guard thread, which, if the step is still running
then, answers the bin itself with the fallback's velocity, flagged (`answer_late`: the end of
`bin`, on the guard's thread); decoder_runtime.stepping says what happens to the bins after
and how the model's state stays exact. Idle and periodic work (flushing the record, draining
events, growing the log, the status message) happens between bins, once the source has had nothing to give for
`IDLE_S` (or a quarter of the time between arrivals, if shorter) after a bin; bins back to
back, with no such pause, get it a whole `flush_every` later, right after a bin. Why not at
once after the bin: the message just sent is still on its way, and ~1 ms of record flush
(HDF5 writes) right then held it up: `serve --deadline-ms 0` end to end at 40 Hz, the bin
before each flush reached a subscriber 0.56-2.49 ms after its push (median over a run's
flushes, 10 runs; any other bin 0.49-0.61 ms), 0.57-0.63 ms with the flush waiting; push ->
receive p99 0.90-2.53 -> 0.84-1.21 ms (6 runs). Waiting for a bin is the waiter's
(decoder_runtime.warm.BinWaiter): at real pace it runs a dry pass of the bin's path just
before the next bin is due, so the caches are warm when it comes.

Engines are built by `decoder_runtime.assemble` from a `RuntimeConfig`, not by hand.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from decoder_runtime.config import RuntimeConfig
from decoder_runtime.core import BinCore
from decoder_runtime.messages import MessagePacker
from decoder_runtime.record import SessionRecorder
from decoder_runtime.sources import Pulled, Source
from decoder_runtime.stepping import GuardedStepper
from decoder_runtime.timing import ADAPTED, ARRIVAL, RECORDED, SENT, STAGES, STEPPED, VALIDATED, summarize
from decoder_runtime.warm import BinWaiter, arrival_period_s

IDLE_S = 0.002  # quiet time after a bin before periodic work (module doc): its message is delivered by then


class Output(Protocol):
    """Where each bin's message goes (ZeroMQ, an in-process consumer): `send` must never block."""

    def send(self, body: bytes) -> bool: ...


@dataclass
class RunResult:
    """Per-bin arrays of one run (trimmed to the bins taken) and its summary."""

    stamps: np.ndarray  # int64[N, len(STAGES)] monotonic ns
    flags: np.ndarray  # int32[N]
    velocity: np.ndarray  # float32[N, 2] sent
    model_vel: np.ndarray  # float32[N, 2] the model's own output (NaN where it did not step)
    t_src: np.ndarray  # float64[N]
    period: float
    events: list[str] = field(default_factory=list)
    drops: int = 0
    warm: dict = field(default_factory=dict)  # what the BinWaiter did (decoder_runtime.warm)

    @property
    def n_bins(self) -> int:
        return int(self.flags.shape[0])

    def summary(self) -> dict:
        """decoder_runtime.timing's summary of this run: latencies, misses, flag counts."""
        return {**summarize(self.stamps, self.flags, self.period, drops=self.drops, events=len(self.events)),
                "warm": self.warm}


@dataclass
class Lane:
    """What a bin's work writes to: the session's (`Engine.live`), or the keep-warm pass's scratch
    twin (`Engine.scratch_lane`), so that the pass runs the very code a bin runs."""

    core: BinCore
    outputs: tuple[Output, ...]
    recorder: SessionRecorder | None
    stamps: np.ndarray  # int64[N, len(STAGES)]
    flags: np.ndarray  # int32[N]
    vel: np.ndarray  # float32[N, 2]
    t_src: np.ndarray  # float64[N]


class Engine:
    """Runs one source's bins through one core, out to the outputs and the record."""

    def __init__(self, source: Source, core: BinCore, config: RuntimeConfig, *, model_id: str,
                 outputs: Sequence[Output] = (), recorder: SessionRecorder | None = None,
                 on_event: Callable[[str], None] | None = None,
                 between_bins: Callable[[int], None] | None = None, waiter: BinWaiter | None = None) -> None:
        self.source = source
        self.waiter = waiter or BinWaiter()  # how the loop waits for a bin: plain or keep-warm
        self.core = core
        self.config = config
        self.period = source.period
        self.outputs = tuple(outputs)
        self.recorder = recorder
        self.packer = MessagePacker(model_id)
        self.on_event = on_event
        self.between_bins = between_bins  # extra periodic work, e.g. the status message (decoder_runtime.status)
        self.events: list[str] = []
        if isinstance(core.stepper, GuardedStepper):
            core.stepper.on_overrun = self.answer_late
        known = config.max_bins or getattr(source, "n_bins", None)
        self._alloc(known + config.flush_every if known else 1 << 16)

    def _alloc(self, capacity: int) -> None:
        """The per-bin log, allocated once (and doubled between bins if a live run outgrows it)."""
        old = getattr(self, "flags", None)
        n = 0 if old is None else old.shape[0]
        arrays = {
            "stamps": np.zeros((capacity, len(STAGES)), dtype=np.int64),
            "flags": np.zeros(capacity, dtype=np.int32),
            "vel": np.zeros((capacity, 2), dtype=np.float32),
            "model_vel": np.full((capacity, 2), np.nan, dtype=np.float32),
            "t_src": np.zeros(capacity, dtype=np.float64),
        }
        for name, arr in arrays.items():
            if old is not None:
                arr[:n] = getattr(self, name)
            setattr(self, name, arr)
        self.core.stepper.model_vel = self.model_vel
        self.live = Lane(self.core, self.outputs, self.recorder, self.stamps, self.flags, self.vel, self.t_src)

    def scratch_lane(self, core: BinCore, outputs: Sequence[Output]) -> Lane:
        """A lane for bins that change nothing: `core` a scratch core, no recorder, a one-row log."""
        return Lane(core, tuple(outputs), None, np.zeros((1, len(STAGES)), dtype=np.int64),
                    np.zeros(1, dtype=np.int32), np.zeros((1, 2), dtype=np.float32), np.zeros(1, dtype=np.float64))

    def _event(self, n: int, text: str) -> None:
        line = f"bin {n}: {text}"
        self.events.append(line)
        if self.on_event is not None:
            self.on_event(line)

    def _between_bins(self, n: int) -> None:
        """Periodic work, never inside a bin: flush the record, drain events, grow the log."""
        rec = self.recorder
        if rec is not None and rec.pending:
            rec.flush(self.stamps[n - rec.pending:n])
        for q in (self.source.events, self.core.adapter.events):
            while q:
                self._event(n, q.popleft())
        if n + 2 * self.config.flush_every > self.flags.shape[0]:  # room until the latest next call
            self._alloc(2 * self.flags.shape[0])
        if self.between_bins is not None:
            self.between_bins(n)

    def bin(self, lane: Lane, n: int, got: Pulled, t_arr: int, deadline_ns: int) -> int:
        """Bin n, pulled at t_arr: validate, adapt, step, publish, record, into `lane`; its flags.

        The keep-warm pass calls this too, on a scratch lane (decoder_runtime.warm)."""
        counts, t_src, lag_s, flags = got
        row = lane.stamps[n]
        row[ARRIVAL] = t_arr
        self._lane, self._n, self._got = lane, n, got  # for answer_late, should the guard answer this bin
        # 2-4. validate, adapt, step (answered by the deadline), observe
        flags = lane.core.decode(n, counts, t_src, lag_s, flags, t_arr + deadline_ns, row)
        if flags is None:  # answered at its deadline on the guard's thread (answer_late); the step ran on
            return int(lane.flags[n])
        return self._deliver(lane, n, row, got, t_arr, flags)

    def answer_late(self) -> None:
        """On the guard's thread (decoder_runtime.stepping.GuardedStepper): the model's inline step
        has overrun the deadline of the bin in flight; its answer goes out now without it."""
        lane, n = self._lane, self._n
        row = lane.stamps[n]
        self._deliver(lane, n, row, self._got, int(row[ARRIVAL]), lane.core.answer_late(row))

    def _deliver(self, lane: Lane, n: int, row: np.ndarray, got: Pulled, t_arr: int, flags: int) -> int:
        """Publish and record bin n (its velocity in the core's vx, vy, its stamps in `row`); its flags."""
        mono = time.monotonic_ns
        counts, t_src = got[0], got[1]
        vx, vy = lane.core.vx, lane.core.vy
        # 5. publish
        if lane.outputs:
            t = row.tolist()  # Python ints: cheaper than numpy scalar arithmetic, cold or warm
            st_us = ((t[VALIDATED] - t_arr) // 1000, (t[ADAPTED] - t[VALIDATED]) // 1000,
                     (t[STEPPED] - t[ADAPTED]) // 1000)
            body = self.packer.pack(n, t_src, vx, vy, (mono() - t_arr) / 1e3, flags, t_arr, st_us)
            for out in lane.outputs:
                out.send(body)
        row[SENT] = mono()
        # 6. record
        if lane.recorder is not None:
            lane.recorder.add(counts, t_src, vx, vy, flags, n)
        row[RECORDED] = mono()
        lane.flags[n] = flags
        lane.vel[n] = vx, vy
        lane.t_src[n] = t_src
        return flags

    def run(self, stop: threading.Event | None = None) -> RunResult:
        """Decode until the source ends, `max_bins` bins, or `stop` is set; returns the log."""
        stop = stop or threading.Event()
        cfg = self.config
        max_bins = cfg.max_bins or math.inf
        d = cfg.deadline
        deadline_ns = d.answer_ns
        source, core, waiter = self.source, self.core, self.waiter
        mono = time.monotonic_ns
        n = 0
        next_break = cfg.flush_every
        spacing = arrival_period_s(source)  # a replay at --speed 10 brings a bin every 2.5 ms
        idle_s = IDLE_S if spacing is None else min(IDLE_S, spacing / 4)
        work_due = False  # periodic work waits for the source to be quiet for idle_s (module doc)
        switch = sys.getswitchinterval()
        try:
            sys.setswitchinterval(2e-4)  # a waiting loop gets the GIL back within 0.2 ms, not 5 ms
            waiter.start(self)  # before the worker starts: it inherits pinning and priority
            core.start()
            source.start()
            while n < max_bins and not stop.is_set():
                # 1. take a bin (the waiter may warm the path up just before it is due)
                got = waiter.pull(idle_s if work_due else cfg.poll_s)
                t_arr = mono()
                if got is None:
                    if source.finished:
                        break
                    self._between_bins(n)
                    work_due = False
                    continue
                # 2-6. the bin's own work, into the session's lane
                flags = self.bin(self.live, n, got, t_arr, deadline_ns)
                waiter.took(t_arr, flags)
                n += 1
                if n == next_break:  # periodic work: at the next quiet moment, or now if it has waited a whole round
                    next_break = n + cfg.flush_every
                    if work_due:
                        self._between_bins(n)
                    work_due = not work_due
        finally:
            sys.setswitchinterval(switch)
            waiter.stop()
            core.finish(timeout_s=5.0)
            self._between_bins(n)
        drops = sum(getattr(o, "drops", 0) for o in self.outputs)
        return RunResult(stamps=self.stamps[:n], flags=self.flags[:n], velocity=self.vel[:n],
                         model_vel=self.model_vel[:n], t_src=self.t_src[:n], period=self.period,
                         events=list(self.events), drops=drops, warm=waiter.summary())
