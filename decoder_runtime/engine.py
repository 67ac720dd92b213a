"""The runtime's loop: one bin at a time, source -> validate -> adapt -> step -> publish -> record.

Read `Engine.run` top to bottom: that is everything that happens to a bin. Each stage is
stamped with time.monotonic_ns() into a preallocated per-bin array (`STAGES`), so a report
can say where the time went, and the loop itself allocates nothing it can avoid: the
message dict and its msgpack bytes are the only per-bin objects.

Latency bound (`deadline_ms`): the model's step runs in a worker thread and the loop waits
for it only until `arrival + deadline - reserve`. If the step is not done by then, the loop
sends this bin's velocity on time from the numpy fallback decoder (the artifact's Wiener
filter, which sees every decoded bin) or, without one, the last velocity sent, flagged
DEADLINE. The model itself is never interrupted or skipped: the worker steps every bin in
order, so its state is exactly the offline state and later bins are decoded correctly once
it catches up (its late outputs are kept in `model_vel`). Only if it falls `max_backlog`
bins behind (a model that cannot keep up at all) are bins withheld from it (DROPPED); once
it has drained its queue, its state is reset (RESET) so it never runs on a state with holes.
With `deadline_ms` None the step runs inline: no bound, no thread hand-off.

Gaps (`on_gap`): after a GAP (bins missing before this one: the stream dropped and came
back, or its timestamps jumped), `reset` (default) starts the model and fallback from their
initial state, as at the start of a session, since a state that skipped real time describes
a moment that has passed; `keep` carries the state over the gap unchanged.

Waiting for a bin (`waiter`, decoder_runtime.warm.BinWaiter) is the one hook between bins that
shapes latency: at real pace it runs a dry pass of the path just before the next bin is due.
It never touches the live state; the engine only calls it where it would have pulled.

Idle and periodic work (flushing the record, draining events, growing the log) happens
between bins: after a bin's message is out and before the next bin is taken, or while the
source has nothing to give.
"""
from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from decoder_runtime.adapt import Adapter
from decoder_runtime.backend_api import Backend
from decoder_runtime.fallback import WienerFallback
from decoder_runtime.messages import Flag, MessagePacker, flag_names
from decoder_runtime.publish import Publisher
from decoder_runtime.record import STAGES, SessionRecorder
from decoder_runtime.sources import Source
from decoder_runtime.validate import Validator
from decoder_runtime.warm import BinWaiter

ARRIVAL, VALIDATED, ADAPTED, STEP_BEGIN, STEP_END, STEPPED, SENT, RECORDED = range(len(STAGES))
_GAP, _DROPPED, _HELD, _RESET = int(Flag.GAP), int(Flag.DROPPED), int(Flag.HELD), int(Flag.RESET)
_DEADLINE, _FALLBACK = int(Flag.DEADLINE), int(Flag.FALLBACK)
_RESET_TOKEN = -1  # worker queue item meaning "reset the backend's state"
_WARM_TOKEN = -2  # worker queue item meaning "dry step on a scratch state" (decoder_runtime.warm)


class GapPolicy(str, Enum):
    RESET = "reset"
    KEEP = "keep"


@dataclass
class EngineSettings:
    deadline_ms: float | None = 10.0  # bound on arrival -> send; None: step inline, unbounded
    reserve_us: float = 500.0  # kept back from the deadline to get the GIL back, build and send a fallback
    on_gap: GapPolicy | str = GapPolicy.RESET  # reset or keep the decoder state across a GAP
    max_backlog: int = 8  # bins the model may lag behind before bins are withheld from it
    max_bins: int | None = None  # stop after this many bins (None: until the source ends or a stop)
    poll_s: float = 0.1  # longest single wait on the source: bounds how fast a stop is noticed
    block: int = 40  # bins between record flushes / event drains (40 x 25 ms = 1 s)

    def __post_init__(self) -> None:
        self.on_gap = GapPolicy(self.on_gap)
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ValueError(f"deadline_ms must be > 0 (or None for no bound), got {self.deadline_ms}")
        if self.max_backlog < 1:
            raise ValueError(f"max_backlog must be >= 1, got {self.max_backlog}")


class _InlineStepper:
    """The model's step on the loop's own thread: no hand-off, no bound."""

    def __init__(self, backend: Backend, model_vel: np.ndarray) -> None:
        self.backend = backend
        self.model_vel = model_vel
        self.begin = self.end = 0
        self.flags = 0

    def start(self) -> None:
        self.backend.reset()

    def reset(self) -> None:
        self.backend.reset()

    def warm(self) -> None:
        """A step on a scratch state, if the backend has one (decoder_runtime.warm)."""
        dry = getattr(self.backend, "dry_step", None)
        if dry is not None:
            dry()

    def step(self, k: int, x: np.ndarray, until_ns: int) -> np.ndarray:
        self.begin = time.monotonic_ns()
        y = self.backend.step(x)
        self.end = time.monotonic_ns()
        self.model_vel[k] = y
        return y

    def finish(self, timeout_s: float) -> None:
        pass


class _ThreadedStepper:
    """The model's step on a worker thread; the loop waits for a bin's result until a deadline.

    Bins are queued in order, so the backend sees every submitted bin exactly once, in
    order, whatever the loop decided to send. Inputs and outputs live in a ring of
    preallocated slots indexed by submission number j; the queues carry only j, and
    `_bin[j % slots]` says which engine bin it was.
    """

    def __init__(self, backend: Backend, model_vel: np.ndarray, n_channels: int, max_backlog: int) -> None:
        self.backend = backend
        self.model_vel = model_vel
        self.max_backlog = max_backlog
        self.slots = max_backlog + 4
        self._in = np.zeros((self.slots, n_channels), dtype=np.float32)
        self._out = np.zeros((self.slots, 2), dtype=np.float32)
        self._times = np.zeros((self.slots, 2), dtype=np.int64)
        self._bin = np.zeros(self.slots, dtype=np.int64)
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self.submitted = 0  # bins handed to the worker
        self.completed = 0  # bins the worker has finished (written by the worker only)
        self.withholding = False
        self.warm_pending = False  # a dry step is queued or running on the worker
        self.begin = self.end = 0
        self.flags = 0
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._work, name="spikestream-step", daemon=True)
        # torch's intra-op thread count (OpenMP) is per thread: a new thread would start with
        # one per core and, on a busy machine, stall for ~100 ms in OpenMP barriers. The
        # worker adopts the count the backend was built with on this thread.
        torch = sys.modules.get("torch")
        self._torch_threads = torch.get_num_threads() if torch is not None else None

    def start(self) -> None:
        """Start the worker and let it warm the backend up on its own thread (per-thread caches)."""
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        try:
            if self._torch_threads is not None:
                sys.modules["torch"].set_num_threads(self._torch_threads)
            for _ in range(3):
                self.backend.step(self._in[0])
            self.backend.reset()
        except BaseException as e:  # surfaced on the loop's thread by start()
            self.error = e
            self._ready.set()
            return
        self._ready.set()
        backend, todo, done, inp, out, times = self.backend, self._todo, self._done, self._in, self._out, self._times
        mono, slots = time.monotonic_ns, self.slots
        dry = getattr(backend, "dry_step", None)
        while True:
            j = todo.get()
            if j is None:
                return
            if j == _RESET_TOKEN:
                backend.reset()
                continue
            if j == _WARM_TOKEN:
                dry()
                self.warm_pending = False
                continue
            s = j % slots
            try:
                t0 = mono()
                out[s] = backend.step(inp[s])
                times[s, 0] = t0
                times[s, 1] = mono()
            except BaseException as e:  # re-raised by the loop at its next step
                self.error = e
                return
            self.completed = j + 1
            done.put(j)

    def reset(self) -> None:
        self._todo.put(_RESET_TOKEN)

    def warm(self) -> None:
        """Have the worker run a dry step on its own thread (its core's caches), if the backend has one."""
        if hasattr(self.backend, "dry_step") and not self.warm_pending:  # never queue a second one
            self.warm_pending = True
            self._todo.put(_WARM_TOKEN)

    def step(self, k: int, x: np.ndarray, until_ns: int) -> np.ndarray | None:
        """Queue bin k and wait for its velocity until `until_ns`; None if it is not ready."""
        if self.error is not None:
            raise RuntimeError("the model's step failed on the worker thread") from self.error
        self.flags = 0
        backlog = self.submitted - self.completed
        if self.withholding or backlog >= self.max_backlog:
            if backlog > 0:
                self.withholding = True
                self.flags = _DROPPED
                return None
            self.withholding = False  # caught up: restart from a clean state, not one with holes
            self._todo.put(_RESET_TOKEN)
            self.flags = _RESET
        j = self.submitted
        s = j % self.slots
        self._in[s] = x
        self._bin[s] = k
        self.submitted = j + 1
        self._todo.put(j)
        done = self._done
        while True:
            remaining = until_ns - time.monotonic_ns()
            try:
                d = done.get(timeout=remaining * 1e-9) if remaining > 0 else done.get(block=False)
            except queue.Empty:
                return None
            ds = d % self.slots
            self.model_vel[self._bin[ds]] = self._out[ds]
            if d == j:
                self.begin, self.end = int(self._times[ds, 0]), int(self._times[ds, 1])
                return self._out[ds]

    def finish(self, timeout_s: float) -> None:
        """Let the worker finish queued bins (their outputs land in model_vel), then stop it."""
        if self._thread.ident is None:
            return
        self._todo.put(None)
        self._thread.join(timeout_s)
        while True:
            try:
                d = self._done.get(block=False)
            except queue.Empty:
                break
            self.model_vel[self._bin[d % self.slots]] = self._out[d % self.slots]


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
        return summarize(self)


class Engine:
    """Wires one source, one backend and the outputs into the per-bin loop."""

    def __init__(self, source: Source, backend: Backend, *, model_id: str, fill: np.ndarray,
                 settings: EngineSettings | None = None, publisher: Publisher | None = None,
                 recorder: SessionRecorder | None = None, adapter: Adapter | None = None,
                 fallback: WienerFallback | None = None, late_ms: float | None = None,
                 bad_bin: str = "impute", on_event: Callable[[str], None] | None = None,
                 waiter: BinWaiter | None = None) -> None:
        self.source = source
        self.waiter = waiter or BinWaiter()  # how the loop waits for a bin: plain or keep-warm
        self.settings = settings or EngineSettings()
        self.period = source.period
        self.n_channels = source.n_channels
        self.publisher = publisher
        self.recorder = recorder
        self.adapter = adapter or Adapter()
        self.fallback = fallback
        self.packer = MessagePacker(model_id)
        self.validator = Validator(self.n_channels, self.period, fill, bad_bin,
                                   None if late_ms is None else late_ms / 1e3)
        self.on_event = on_event
        self.events: list[str] = []
        known = self.settings.max_bins or getattr(source, "n_bins", None)
        self._alloc(known + self.settings.block if known else 1 << 16)
        self._stepper = (_InlineStepper(backend, self.model_vel) if self.settings.deadline_ms is None else
                         _ThreadedStepper(backend, self.model_vel, self.n_channels, self.settings.max_backlog))

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
        if old is not None:
            self._stepper.model_vel = self.model_vel

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
        for q in (self.source.events, self.adapter.events):
            while q:
                self._event(n, q.popleft())
        if n + self.settings.block > self.flags.shape[0]:
            self._alloc(2 * self.flags.shape[0])

    def run(self, stop: threading.Event | None = None) -> RunResult:
        """Decode until the source ends, `max_bins` bins, or `stop` is set; returns the log."""
        stop = stop or threading.Event()
        s = self.settings
        max_bins = s.max_bins or math.inf
        deadline_ns = 0 if s.deadline_ms is None else int(s.deadline_ms * 1e6 - s.reserve_us * 1e3)
        reset_on_gap = s.on_gap is GapPolicy.RESET
        source, validator, adapter, stepper, waiter = self.source, self.validator, self.adapter, self._stepper, self.waiter
        fallback, publisher, recorder, pack = self.fallback, self.publisher, self.recorder, self.packer.pack
        mono = time.monotonic_ns
        last_vx = last_vy = 0.0
        n = 0
        next_break = s.block
        switch = sys.getswitchinterval()
        try:
            sys.setswitchinterval(2e-4)  # a waiting loop gets the GIL back within 0.2 ms, not 5 ms
            adapter.reset()
            validator.reset()
            if fallback is not None:
                fallback.reset()
            waiter.start(self)  # before the worker starts: it inherits pinning and priority
            stepper.start()
            source.start()
            while n < max_bins and not stop.is_set():
                # 1. take a bin (the waiter may warm the path up just before it is due)
                got = waiter.pull(s.poll_s)
                t_arr = mono()
                if got is None:
                    if source.finished:
                        break
                    self._between_bins(n)
                    continue
                counts, t_src, lag_s, flags = got
                # 2. validate: flags, and the bin to decode in validator.x (unless DROPPED)
                flags |= validator.check(counts, t_src, lag_s)
                t_val = mono()
                if flags & _DROPPED:
                    # not decoded: the message repeats the last velocity, the state does not move
                    vx, vy = last_vx, last_vy
                    flags |= _HELD
                    t_ad = t_step = t_val
                    t_b = t_e = 0
                else:
                    # 3. adapt
                    x = adapter.process(validator.x)
                    flags |= adapter.flags
                    t_ad = mono()
                    if flags & _GAP and reset_on_gap:
                        stepper.reset()
                        if fallback is not None:
                            fallback.reset()
                        flags |= _RESET
                    # 4. step, bounded by the deadline
                    if fallback is not None:
                        fallback.push(x)
                    y = stepper.step(n, x, t_arr + deadline_ns)
                    flags |= stepper.flags
                    if y is not None:
                        t_b, t_e = stepper.begin, stepper.end
                    else:  # the model missed the deadline: answer on time without it
                        t_b = t_e = 0
                        flags |= _DEADLINE
                        if fallback is not None:
                            y = fallback.predict()
                            flags |= _FALLBACK
                    if y is not None:
                        vx, vy = y.tolist()
                        adapter.observe(y)
                    else:
                        vx, vy = last_vx, last_vy
                        flags |= _HELD
                    t_step = mono()
                # 5. publish
                if publisher is not None:
                    publisher.send(pack(n, t_src, vx, vy, (mono() - t_arr) / 1e3, flags, t_arr,
                                        ((t_val - t_arr) // 1000, (t_ad - t_val) // 1000, (t_step - t_ad) // 1000)))
                t_sent = mono()
                # 6. record
                if recorder is not None:
                    recorder.add(counts, t_src, vx, vy, flags, n)
                self.stamps[n] = (t_arr, t_val, t_ad, t_b, t_e, t_step, t_sent, mono())
                self.flags[n] = flags
                self.vel[n] = last_vx, last_vy = vx, vy
                self.t_src[n] = t_src
                waiter.took(t_arr, flags)
                n += 1
                if n == next_break:
                    self._between_bins(n)
                    next_break = n + s.block
        finally:
            sys.setswitchinterval(switch)
            stepper.finish(timeout_s=5.0)
            waiter.stop()
            self._between_bins(n)
        return RunResult(stamps=self.stamps[:n], flags=self.flags[:n], velocity=self.vel[:n],
                         model_vel=self.model_vel[:n], t_src=self.t_src[:n], period=self.period,
                         events=list(self.events), drops=0 if publisher is None else publisher.drops,
                         warm=waiter.summary())


def _pct(x: np.ndarray) -> dict:
    """p50 / p99 / p99.9 / max (us) of a latency array given in ns."""
    if x.size == 0:
        return {"p50": math.nan, "p99": math.nan, "p99.9": math.nan, "max": math.nan, "n": 0}
    us = x.astype(np.float64) / 1e3
    p50, p99, p999 = np.percentile(us, (50, 99, 99.9))
    return {"p50": float(p50), "p99": float(p99), "p99.9": float(p999), "max": float(us.max()), "n": int(us.size)}


def summarize(result: RunResult) -> dict:
    """Latency percentiles (total, model step, the runtime's own work), misses and flag counts."""
    st = result.stamps
    total = st[:, SENT] - st[:, ARRIVAL]
    stepped = st[:, STEP_END] > 0  # bins whose model output was used (in time)
    step = st[stepped, STEP_END] - st[stepped, STEP_BEGIN]
    own = total[stepped] - step
    handoff = st[stepped, STEPPED] - st[stepped, ADAPTED] - step  # queue to the worker and back (0 inline)
    flag_counts: dict[str, int] = {}
    for bit in range(31):
        c = int(np.count_nonzero(result.flags & (1 << bit)))
        if c:
            flag_counts[flag_names(1 << bit)[0]] = c
    stage = {
        "validate": _pct(st[:, VALIDATED] - st[:, ARRIVAL])["p50"],
        "adapt": _pct(st[:, ADAPTED] - st[:, VALIDATED])["p50"],
        "step_wait": _pct(st[:, STEPPED] - st[:, ADAPTED])["p50"],
        "publish": _pct(st[:, SENT] - st[:, STEPPED])["p50"],
        "record": _pct(st[:, RECORDED] - st[:, SENT])["p50"],
    }
    return {
        "n_bins": result.n_bins,
        "latency_us": _pct(total),
        "step_us": _pct(step),
        "own_us": _pct(own),
        "handoff_us": _pct(handoff),
        "stage_p50_us": stage,
        "deadline_misses": flag_counts.get("deadline", 0),
        "period_overruns": int(np.count_nonzero(total > result.period * 1e9)),
        "flags": flag_counts,
        "publish_drops": result.drops,
        "events": len(result.events),
        "warm": result.warm,
    }
