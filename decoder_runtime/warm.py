"""Real pace: keeping the per-bin path warm between bins that come 25 ms apart.

Why it exists: back to back, a bin costs the runtime ~30-60 us; one bin every 25 ms costs
6-8x that, in every stage (model step, validate, publish), because in 25 ms of idling the
caches, branch predictors and, on a VM, the vCPU itself go cold (REFERENCE.md, "Real pace
is not back to back"). Spinning before a bin without touching the hot path does not help;
touching it does. Bins at 40 Hz are predictable, so `BinWaiter` -- the engine's wait for the
next bin -- does this:

1. Right after a bin is out, nothing: the loop waits for the next bin the ordinary way
   (liblsl's blocking pull, or a replay's sleep) until `lead_us` before the bin's predicted
   arrival. A bin that comes earlier is returned at once: the wait is the source's own pull.
2. At `lead_us` before the prediction, one *warm pass*: `Engine.bin` -- the very code a bin
   runs -- on a scratch lane: a scratch core (`_scratch_core`: a validator with the live one's
   settings, a copy of the adapter, the fallback's filter over its own ring, and the model's dry
   step (`dry_step`: the backend's own step on the last counts, its live state left as it was --
   restored, or the new state discarded)), each
   output's `warm(body)` in place of its send (decoder_runtime.publish.Publisher.warm: the send
   path, nothing delivered), no recorder (it runs after the message is out) and a one-row log.
   The live state and every output are untouched. The dry step runs inline, as the step does
   (with a deadline too: decoder_runtime.stepping.GuardedStepper); none runs while bins are
   stepped on the guard's thread after an overrun.
3. Then it waits for the bin. A replay is polled without sleeping (`pull(0)`, up to `spin_us`
   past the prediction; its pacer spins the last 1 ms anyway); with `repeat` (default) the spin
   up to the prediction is more warm passes, polled between them, each started only if one
   twice as long as the last *hot* pass ends before the predicted bin (`another_fits`). The
   first pass of a bin is cold (~250-300 us; the ones after it ~40 us): budgeting the repeats
   by it, as this did at first, left no room for them at the default 1 ms lead on most bins,
   and a bin came 200-500 us after the last pass (measured: 40 Hz arrival->sent p50 65-91 ->
   52-53 us, 3 rounds). The hot pass is first timed at start (`SETUP_PASSES` back to back), and
   a repeated pass counts as at most `PREEMPTED` times that: one the OS preempted (a 350 us
   pass in a run whose passes take 38) used to set the budget for the bins after it, whose room
   then never fit two of it, so no repeat ran to correct it (31% of a 1,200-bin run's bins, and
   75% of another's, got no repeated pass; own work p50 37 vs 20 us in them; A/B, 6 interleaved
   rounds: arrival->sent p50 51 -> 45 us, median over rounds); `summary()["no_repeat"]` counts
   the bins that still got none. An LSL inlet is waited on in liblsl (blocking pull) by
   default: the sample reaches the inlet through liblsl's own receive thread, and on a 2-core
   machine a spinning loop starves that thread (measured: push -> receive p50 4.1 ms spinning
   vs 0.75 ms blocking, same run, load ~20).
4. With `busy_wait` (off by default) every wait for a predicted bin (step 1, and for LSL the
   one after the pass) polls the source instead of sleeping in it: the loop's core never idles.
   Why: on a VM a vCPU that idled ~24 ms comes back slow at times, and a whole bin then runs
   slow -- its first pass takes 300-800 us where it takes ~280, no repeat fits, the step takes
   80-100 us where it takes 25 (the top 2% of a run's own work). Measured, 6 interleaved rounds x 800 bins at 40 Hz
   (replay, numba LSTM, guarded): own work p50 21.6 -> 18.1 us, p99 67.4 -> 38.8 us (lower in 6
   of 6), arrival->sent p50 44.9 -> 42.3 us, p99 127 -> 75 us. Cost: that core at 100%; give
   the loop a core of its own (`pin_cpus`). It does not warm what only the live bin touches
   (benchmarks.cooling): that cools with time whatever the loop does.

The prediction: bin k is expected at `offset + k * P`, with P the source's arrival period
(replay: bin width / speed; LSL: the bin width) and `offset` the smallest `t_arr - k * P`
seen over the last `WINDOW` bins, i.e. the earliest arrival phase lately seen. It is
restarted after a GAP. At `--speed max` there is no period and nothing is warmed.

A bin never waits for the warm pass beyond its own length (~50-150 us cold): the pass only
starts when the prediction is at least `lead_us` away, and bins that nonetheless arrived
while it ran are counted (`summary()["overlapped"]`). Cost: up to `lead_us` + the bin's
jitter of one core spinning per bin (the default 1 ms lead: ~4% of a core at 40 Hz). A
deadline's guard thread sleeps meanwhile (decoder_runtime.spin.guard_wait).

Process-wide settings, applied by `apply_process()` before the engine starts its guard thread
(so the guard inherits them): pin to `pin_cpus` (os.sched_setaffinity); SCHED_FIFO when
`realtime` (a clear WarmError naming the missing privilege where the OS refuses); and with
`freeze_gc` the collector's automatic runs are off inside the loop (everything from setup
is frozen out of its reach with gc.freeze) and a young-generation collection runs between
bins, right after a bin is sent, every `GC_EVERY` bins.
"""
from __future__ import annotations

import copy
import gc
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from decoder_runtime.messages import Flag
from decoder_runtime.core import BinCore, GapPolicy
from decoder_runtime.stepping import GuardedStepper, InlineStepper
from decoder_runtime.validate import Validator

if TYPE_CHECKING:
    from decoder_runtime.engine import Engine
    from decoder_runtime.sources import Pulled, Source

WINDOW = 40  # bins over which the earliest arrival phase is taken (1 s at 40 Hz)
SPIN_US = 3000.0  # default poll past the prediction for a replay (its own pacer spins anyway)
SETUP_PASSES = 3  # passes back to back at start, the fastest one timing a hot pass for the repeat rule
PREEMPTED = 4  # a repeated pass counts as at most this many hot passes of the start's (module doc, 3)
GC_EVERY = 40  # bins between young-generation collections when the collector is off in the loop
_GAP = int(Flag.GAP)


def another_fits(due_ns: int, now_ns: int, last_ns: int) -> bool:
    """Whether to start another warm pass that must end by due_ns (the predicted bin): only if one
    twice as long as the last (hot) one still ends by then, so a slower one does too."""
    return due_ns - now_ns > 2 * last_ns


class WarmError(RuntimeError):
    """A keep-warm setting this machine or process cannot honour; the message says why."""


class DryStep(Protocol):
    """A backend that can run its live step without moving its state: warms its caches (the
    step's Python and NumPy too, not only the kernel), changes nothing."""

    def dry_step(self) -> None: ...


@dataclass
class WarmSettings:
    """How the loop waits for the next bin (see the module docstring for what each costs)."""

    keep_warm: bool = True  # warm pass + spin before each predicted bin
    lead_us: float = 1000.0  # start the warm pass this long before the predicted arrival
    spin_us: float | None = None  # poll this long past the prediction (None: 3 ms for a replay, 0 for LSL)
    pin_cpus: tuple[int, ...] | None = None  # pin the runtime (loop and guard thread) to these cores
    realtime: bool = False  # SCHED_FIFO for the runtime's threads
    realtime_priority: int = 10
    freeze_gc: bool = True  # no automatic collection inside the loop; collect between bins
    repeat: bool = True  # spinning: pass again and again until the bin (each still ends before it)
    busy_wait: bool = False  # wait for a predicted bin polling the source, never sleeping: a core at 100% (module doc)

    def __post_init__(self) -> None:
        if not 0 < self.lead_us < 1e6:
            raise ValueError(f"lead_us must be in (0, 1e6) us, got {self.lead_us}")
        if self.spin_us is not None and not 0 <= self.spin_us < 1e6:
            raise ValueError(f"spin_us must be in [0, 1e6) us, got {self.spin_us}")
        if self.pin_cpus is not None:
            self.pin_cpus = tuple(int(c) for c in self.pin_cpus)
            if not self.pin_cpus or min(self.pin_cpus) < 0:
                raise ValueError(f"pin_cpus must be non-negative core numbers, got {self.pin_cpus}")
        lo, hi = os.sched_get_priority_min(os.SCHED_FIFO), os.sched_get_priority_max(os.SCHED_FIFO)
        if not lo <= self.realtime_priority <= hi:
            raise ValueError(f"realtime_priority must be in [{lo}, {hi}], got {self.realtime_priority}")

    @classmethod
    def off(cls) -> "WarmSettings":
        """The loop as it was before keep-warm: block on the source, collector untouched."""
        return cls(keep_warm=False, freeze_gc=False)

    def describe(self) -> dict:
        return {"keep_warm": self.keep_warm, "lead_us": self.lead_us, "spin_us": self.spin_us,
                "pin_cpus": list(self.pin_cpus) if self.pin_cpus else None, "realtime": self.realtime,
                "freeze_gc": self.freeze_gc, "repeat": self.repeat, "busy_wait": self.busy_wait}


def parse_cpus(text: str | None) -> tuple[int, ...] | None:
    """'0', '0,1', '2-3' -> core numbers; None or '' -> None. ValueError on anything else."""
    if not text:
        return None
    cpus: list[int] = []
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        try:
            cpus += range(int(a), int(b) + 1) if sep else [int(a)]
        except ValueError:
            raise ValueError(f"cores must be like 0,1 or 0-3, got {text!r}") from None
    return tuple(dict.fromkeys(cpus))


def apply_process(settings: WarmSettings) -> list[str]:
    """Pin and raise the priority of this thread (inherited by threads it starts); notes of what was done.

    Raises WarmError when a requested setting is refused, naming what is missing.
    """
    notes = []
    if settings.pin_cpus:
        allowed = os.sched_getaffinity(0)
        missing = sorted(set(settings.pin_cpus) - allowed)
        if missing:
            raise WarmError(f"cannot pin to cores {missing}: this process may use only {sorted(allowed)}")
        os.sched_setaffinity(0, settings.pin_cpus)
        notes.append(f"pinned to cores {list(settings.pin_cpus)}")
    if settings.realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(settings.realtime_priority))
        except PermissionError:
            raise WarmError("real-time priority (SCHED_FIFO) refused by the OS: it needs CAP_SYS_NICE or an "
                            "rtprio limit (ulimit -r, /etc/security/limits.conf); run without --realtime") from None
        notes.append(f"SCHED_FIFO priority {settings.realtime_priority}")
    return notes


class ArrivalPredictor:
    """When bin k should arrive: the earliest recent arrival phase plus k periods."""

    def __init__(self, period_ns: float, window: int = WINDOW) -> None:
        self.period_ns = float(period_ns)
        self._phase = np.full(window, np.iinfo(np.int64).max, dtype=np.int64)
        self._i = 0
        self._k0 = 0  # bin number the phases are counted from (moves on at a restart)
        self._seen = 0

    def restart(self, k: int) -> None:
        """Forget the phase (after a gap the stream's timing starts afresh at bin k)."""
        self._phase.fill(np.iinfo(np.int64).max)
        self._k0 = k
        self._seen = 0

    def observe(self, k: int, t_arr_ns: int) -> None:
        self._phase[self._i] = t_arr_ns - round((k - self._k0) * self.period_ns)
        self._i = (self._i + 1) % self._phase.shape[0]
        self._seen += 1

    def next_ns(self, k: int) -> int | None:
        """Predicted arrival of bin k (monotonic ns), or None before any bin has been seen."""
        if not self._seen:
            return None
        return int(self._phase.min()) + round((k - self._k0) * self.period_ns)


def arrival_period_s(source: Source) -> float | None:
    """Seconds between bins as they reach the loop; None when they come back to back (replay max)."""
    pacer = getattr(source, "pacer", None)
    if pacer is not None:
        return pacer.step_ns / 1e9 if pacer.paced else None
    return source.period


class _DryStepper:
    """The stepper's seat in the scratch core: the live stepper's dry step."""

    def __init__(self, live: InlineStepper | GuardedStepper) -> None:
        self.live = live
        self.flags = 0
        self.begin = self.end = 0
        self._y = np.zeros(2, dtype=np.float32)

    def reset(self) -> None:
        pass

    def step(self, k: int, x: np.ndarray, until_ns: int) -> np.ndarray:
        self.begin = time.monotonic_ns()
        self.live.warm()
        self.end = time.monotonic_ns()
        return self._y


class _WarmOutput:
    """An output's seat in the scratch lane: its send path with nothing delivered (Publisher.warm),
    or nothing for an output without one (the message is still packed, as for the live bin)."""

    def __init__(self, output) -> None:
        self.send = getattr(output, "warm", None) or _deliver_nothing


def _deliver_nothing(body: bytes) -> bool:
    return False


def _scratch_core(core: BinCore) -> BinCore:
    """A BinCore that runs the live core's code on its own state: the same validator settings,
    a copy of the adapter, the fallback's filter over its own ring, and the dry step."""
    v = core.validator
    validator = Validator(v.n_channels, v.period, v.fill, v.policy, late_s=v.late_s, gap_factor=v.gap_s / v.period)
    fallback = None if core.fallback is None else core.fallback.scratch()
    return BinCore(validator, _DryStepper(core.stepper), adapter=copy.deepcopy(core.adapter), fallback=fallback,
                   on_gap=GapPolicy.KEEP)


class BinWaiter:
    """The engine's wait for the next bin: plain, or with a warm pass and a spin before it.

    The engine calls `start(engine)` before its guard thread starts, `pull(timeout_s)` where it
    waits for a bin, `took(t_arr_ns, flags)` once a bin's message is out, and `stop()` last.
    """

    def __init__(self, settings: WarmSettings | None = None) -> None:
        self.settings = settings or WarmSettings.off()
        self.counts = {"warm_passes": 0, "spun_to_bin": 0, "blocked_after_spin": 0, "blocked_after_warm": 0,
                       "overlapped": 0, "skipped_no_time": 0, "no_repeat": 0}
        self.warm_ns = np.zeros(0, dtype=np.int64)
        self._engine: Engine | None = None
        self._predictor: ArrivalPredictor | None = None
        self._k = 0
        self._first_ns = 0  # duration of the last first (cold) warm pass of a bin
        self._again_ns = 0  # duration of the last repeated (hot) one, first timed at start
        self._cap_ns = 0  # ... counted as at most PREEMPTED times the one at start (and half the lead)
        self._spin_ns = 0
        self._gc_was_enabled = False

    # --- life cycle ------------------------------------------------------------------
    def start(self, engine: Engine) -> None:
        s = self.settings
        self._engine = engine
        self._k = 0
        period = arrival_period_s(engine.source)
        self._predictor = ArrivalPredictor(period * 1e9) if s.keep_warm and period else None
        spin_us = s.spin_us if s.spin_us is not None else SPIN_US if hasattr(engine.source, "pacer") else 0.0
        self._spin_ns = int(spin_us * 1e3)
        self._repeat = bool(s.repeat and self._spin_ns)
        if self._predictor is not None:
            self.prepare_passes(engine)
            if self._repeat:  # what a hot pass takes, before the first bin needs it: passes back to back
                hot = min(self.warm_pass() for _ in range(SETUP_PASSES))
                self._cap_ns = min(PREEMPTED * hot, self._half_lead_ns())
                self._again_ns = min(hot, self._cap_ns)
        if s.freeze_gc:
            gc.collect()
            gc.freeze()
            self._gc_was_enabled = gc.isenabled()
            gc.disable()

    def prepare_passes(self, engine: Engine) -> None:
        """The scratch lane `warm_pass` runs on (`start` prepares it when the source has a pace)."""
        self._engine = engine
        self._scratch_core = _scratch_core(engine.core)
        self._lane = engine.scratch_lane(self._scratch_core, [_WarmOutput(o) for o in engine.outputs])
        self._scratch_t = 0.0
        self._log = np.zeros(1 << 16, dtype=np.int64)

    def stop(self) -> None:
        if self.settings.freeze_gc:
            if self._gc_was_enabled:
                gc.enable()
            gc.unfreeze()
        if self._predictor is not None:
            self.warm_ns = self._log[:min(self.counts["warm_passes"], self._log.shape[0])].copy()

    # --- per bin -----------------------------------------------------------------------
    def pull(self, timeout_s: float) -> Pulled | None:
        """The next bin, or None when none came within `timeout_s` (as `Source.pull`)."""
        source = self._engine.source
        pred = self._predictor
        due = None if pred is None else pred.next_ns(self._k)
        if due is None:
            return source.pull(timeout_s)
        s, mono = self.settings, time.monotonic_ns
        wait_ns = due - int(s.lead_us * 1e3) - mono()
        if wait_ns > 0:  # a bin that comes early is taken at once
            got = self._wait(min(timeout_s, wait_ns * 1e-9))
            if got is not None:
                return got
            if mono() < due - int(s.lead_us * 1e3):  # the poll timeout ended the wait, not the lead
                return None
        # bounded: the pass starts only if one as long as the last ends before the predicted bin
        if due - mono() < self._first_ns:
            self.counts["skipped_no_time"] += 1
            return self._wait(timeout_s)
        self._first_ns = min(self.warm_pass(), self._half_lead_ns())
        got = source.pull(0.0)
        if got is not None:
            self.counts["overlapped"] += 1
            return got
        if self._repeat:  # spinning anyway: spin on the hot path itself
            repeats = 0
            while another_fits(due, mono(), self._again_ns):  # timed by the last hot pass, not the cold first one
                self._again_ns = min(self.warm_pass(), self._cap_ns)  # a preempted one: no budget for the next bins
                repeats += 1
                got = source.pull(0.0)
                if got is not None:
                    self.counts["overlapped"] += 1
                    return got
            if not repeats:  # the bin comes after the cold first pass only (module doc, 3)
                self.counts["no_repeat"] += 1
        spin_end = due + self._spin_ns
        while self._spin_ns and mono() < spin_end:
            got = source.pull(0.0)
            if got is not None:
                self.counts["spun_to_bin"] += 1
                return got
        self.counts["blocked_after_spin" if self._spin_ns else "blocked_after_warm"] += 1
        return self._wait(timeout_s)

    def _wait(self, timeout_s: float) -> Pulled | None:
        """`Source.pull(timeout_s)`, or with `busy_wait` the source polled until a bin comes or the
        time is up: the core never idles (module doc, 4)."""
        source, mono = self._engine.source, time.monotonic_ns
        if not self.settings.busy_wait:
            return source.pull(timeout_s)
        end = mono() + int(timeout_s * 1e9)
        while (got := source.pull(0.0)) is None and mono() < end:
            pass
        return got

    def took(self, t_arr_ns: int, flags: int) -> None:
        """A bin's message is out: learn its arrival, and collect young garbage now if it is time."""
        k = self._k
        self._k = k + 1
        if self._predictor is not None:
            if flags & _GAP:
                self._predictor.restart(k)
            self._predictor.observe(k, t_arr_ns)
        if self.settings.freeze_gc and self._k % GC_EVERY == 0:
            gc.collect(0)

    def _half_lead_ns(self) -> int:
        """The most a pass may be expected to take: one the OS preempted says nothing about the next."""
        return int(self.settings.lead_us * 500)

    def warm_pass(self) -> int:
        """The bin's own code on the scratch lane (Engine.bin): changes nothing, delivers nothing.
        Returns how long it took (ns)."""
        t0 = time.monotonic_ns()
        e = self._engine
        self._scratch_t += e.period  # an in-line timeline: the scratch validator takes the common path
        e.bin(self._lane, 0, (e.core.validator.x, self._scratch_t, 0.0, 0), t0, 0)
        self._scratch_core.adapter.events.clear()
        took = time.monotonic_ns() - t0
        i = self.counts["warm_passes"]
        if i < self._log.shape[0]:
            self._log[i] = took
        self.counts["warm_passes"] = i + 1
        return took

    def summary(self) -> dict:
        """What the waiter did over the run: settings, counts, the warm pass's own cost (us)."""
        out: dict = {**self.settings.describe(), **self.counts}
        if self.warm_ns.size:
            us = self.warm_ns / 1e3
            out["warm_pass_us"] = {"p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99)),
                                   "max": float(us.max())}
        return out
