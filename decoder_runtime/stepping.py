"""Where the model's step runs: inline on the loop's thread, unbounded or under a guard's deadline.

Both steppers give the core one call, `step(k, x, until_ns)`, and keep the backend's
state exact: every bin handed to them is stepped exactly once, in order.

The guarded stepper (latency bound, `deadline_ms`) steps inline too, on the loop's thread,
so a bin at real pace costs what it costs with no bound. Every bin used to be handed to a
worker thread: at 40 Hz that paid ~30 us more at p50 than inline (bench, same run: 73 against
44 us), the four legs of the hand-off alone 18 us against 6.5 back to back (stamped probe:
the loop's and the worker's Python and the numba call boundary going cold between bins), and
no warming closed it.
A helper thread guards the step instead: it sleeps until the step's deadline
(decoder_runtime.spin.guard_wait) and, if the step is still running then, answers the bin
itself -- the engine's `answer_late`: the fallback's velocity, flagged, published and
recorded on the helper's thread while the model runs on. The model is never interrupted: when
its step returns, its output is kept in `model_vel`, and from then on the bins go to the
helper as a worker, the loop waiting for each only until its deadline (a model that was slow
once is likely slow again, and a loop stuck in a slow step could answer no bin at all). Only
if the worker falls `max_backlog` bins behind (a model that cannot keep up at all) are bins
withheld from it (DROPPED); once it has drained its queue, its state is reset (RESET) so it
never runs on a state with holes. After `RECOVER` bins in a row answered on time with
nothing queued, the helper goes back to guarding and the step inline.

What an inline step under the guard costs the loop: three stores into shared cells, and an
uncontended lock when the step ended within `SETTLED_NS` of its deadline (the guard looks at a
step at its deadline at the earliest; one that ended well before is settled). The bins a step
overran by more than a bin period wait in the source until it returns (they are then decoded
late, by the worker); bins queued to the worker never wait for one another.

Hand-off to the worker: the queues carry the work; while an answer is expected soon the
waiting side spins for it on shared counters with the GIL released instead of sleeping on the
queue (decoder_runtime.spin: each sleep costs a wake-up of tens of microseconds on a VM).
The loop spins up to `handoff_spin_us` for the worker's answer; the worker spins as long after
each bin for the next. `handoff_spin_us=0`: both sleep on the queues.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from decoder_runtime.messages import Flag
from decoder_runtime import spin
from decoder_runtime.spin import CELLS, DONE, FINISHED, NO_CELL, POSTED, POSTED_SINCE, STARTED, STEP_UNTIL, \
    guard_wait, signal_and_spin

if TYPE_CHECKING:
    from decoder_runtime.backends.base import Backend

_DROPPED, _RESET = int(Flag.DROPPED), int(Flag.RESET)
_RESET_TOKEN = -1  # worker queue item meaning "reset the backend's state"
_GUARD_TOKEN = -2  # worker queue item meaning "back to guarding: the loop steps inline again"
RECOVER = 40  # bins in a row on time on the worker, nothing queued, before the step goes back inline
SETTLED_NS = 100_000  # an inline step that ended this long before its deadline cannot have been answered
ANSWERED = np.zeros(2, dtype=np.float32)  # GuardedStepper.step's answer for a bin the guard answered


class InlineStepper:
    """The model's step on the loop's own thread: no hand-off, no bound."""

    def __init__(self, backend: "Backend", model_vel: np.ndarray) -> None:
        self.backend = backend
        self.model_vel = model_vel
        self.begin = self.end = 0
        self.flags = 0

    def start(self) -> None:
        self.backend.reset()

    def reset(self) -> None:
        self.backend.reset()

    def warm(self) -> None:
        """The backend's dry step (its step, state unmoved), if it has one (decoder_runtime.warm)."""
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


class GuardedStepper:
    """The model's step under a deadline: inline, guarded by a helper thread, or on that helper
    as a worker for a while after a step overran (module doc).

    Bins for the worker are queued in order, so the backend sees every submitted bin exactly
    once, in order, whatever the loop decided to send. Inputs and outputs live in a ring of
    preallocated slots indexed by submission number j; the queues carry only j, and
    `_bin[j % slots]` says which engine bin it was.
    """

    def __init__(self, backend: "Backend", model_vel: np.ndarray, n_channels: int, max_backlog: int,
                 guard_interval_ns: int, handoff_spin_us: float = 500.0) -> None:
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
        self._spin_ns = int(handoff_spin_us * 1e3)
        self._interval_ns = int(guard_interval_ns)
        self._cells = np.zeros(CELLS, dtype=np.int64)
        spin.load()
        self.on_overrun: Callable[[], None] | None = None  # answers the overrun bin (Engine.answer_late)
        self._claim = threading.Lock()  # who answers an inline bin: the loop (step ended) or the guard
        self._answered = threading.Event()  # the guard has answered the bin it claimed
        self._claimed = 0  # the inline step the guard claimed (its number, STARTED)
        self._inline = True  # steps inline under the guard (False: on the helper, as a worker)
        self._seq = 0  # inline steps started (the STARTED cell)
        self._on_time = 0  # worker bins in a row answered on time with nothing queued
        self._posted = 0  # items put on _todo (the POSTED cell)
        self._answers = 0  # items taken from _done
        self.submitted = 0  # bins handed to the worker
        self.completed = 0  # bins the worker has finished (written by the worker only)
        self.overruns = 0  # inline steps the guard answered
        self.withholding = False
        self.begin = self.end = 0
        self.flags = 0
        self.error: BaseException | None = None  # the helper's failure, raised by the loop's next step
        self._thread = threading.Thread(target=self._help, name="spikestream-guard", daemon=True)
        # torch's intra-op thread count (OpenMP) is per thread: a new thread would start with
        # one per core and, on a busy machine, stall for ~100 ms in OpenMP barriers. The
        # helper adopts the count the backend was built with on this thread.
        torch = sys.modules.get("torch")
        self._torch_threads = torch.get_num_threads() if torch is not None else None

    def start(self) -> None:
        """Start the guard, and warm the backend up here, where it steps (the helper steps only after
        an overrun, a bin already missed)."""
        if self.on_overrun is None:
            raise RuntimeError("GuardedStepper.on_overrun is not set: nothing would answer a bin the model overran")
        self._thread.start()
        for _ in range(3):
            self.backend.step(self._in[0])
        self.backend.reset()

    def _help(self) -> None:
        """The helper thread: guard the inline steps; after an overrun, step the queued bins."""
        if self._torch_threads is not None:
            sys.modules["torch"].set_num_threads(self._torch_threads)
        backend, todo, done, inp, out, times = self.backend, self._todo, self._done, self._in, self._out, self._times
        mono, slots, spin_ns, cells = time.monotonic_ns, self.slots, self._spin_ns, self._cells
        taken = answered = 0
        guarding = True
        while True:
            if guarding:
                seq = guard_wait(cells, taken, self._interval_ns)
                if seq != POSTED_SINCE:
                    guarding = not self._answer_overrun(seq)
                    continue
            elif spin_ns:  # publish the last answer, then spin for the next item while one is expected
                signal_and_spin(cells, DONE, answered, POSTED, taken, mono() + spin_ns)
            j = todo.get()
            taken += 1
            if j is None:
                return
            if j == _GUARD_TOKEN:
                guarding = True
                continue
            if j == _RESET_TOKEN:
                backend.reset()
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
            answered += 1

    def _answer_overrun(self, seq: int) -> bool:
        """The inline step `seq` is past its deadline: claim its bin and answer it (on the helper's
        thread), unless the step ended meanwhile. Whether it was claimed."""
        with self._claim:
            if self._cells[FINISHED] == seq:
                return False
            self._claimed = seq
        try:
            self.on_overrun()
        except BaseException as e:  # re-raised by the loop at its next step
            self.error = e
        finally:
            self._answered.set()
        return True

    def _post(self, item: int | None) -> None:
        """Queue an item for the helper and bump the counter it spins on."""
        self._todo.put(item)
        self._posted += 1
        self._cells[POSTED] = self._posted

    def reset(self) -> None:
        if self._inline:
            self.backend.reset()
        else:
            self._post(_RESET_TOKEN)

    def warm(self) -> None:
        """The backend's dry step, inline, if it has one and steps inline now (decoder_runtime.warm)."""
        dry = getattr(self.backend, "dry_step", None)
        if dry is not None and self._inline:
            dry()

    def step(self, k: int, x: np.ndarray, until_ns: int) -> np.ndarray | None:
        """Step bin k, answered by `until_ns`: its velocity; None if the model missed; ANSWERED if the
        guard has answered the bin already (the step overran its deadline)."""
        if not self._inline:
            return self._step_on_worker(k, x, until_ns)
        # inline, the guard told in the cells (module doc)
        cells = self._cells
        seq = self._seq = self._seq + 1
        cells[STEP_UNTIL] = until_ns
        cells[STARTED] = seq
        self.begin = time.monotonic_ns()
        try:
            y = self.backend.step(x)
        finally:
            cells[FINISHED] = seq
        self.end = end = time.monotonic_ns()
        self.model_vel[k] = y
        if end < until_ns - SETTLED_NS:  # the guard looks at until_ns at the earliest: it will see FINISHED
            return y
        return self._settle(seq, y)

    def _settle(self, seq: int, y: np.ndarray) -> np.ndarray:
        """An inline step that ended close to (or past) its deadline: did the guard answer its bin?"""
        with self._claim:
            late = self._claimed == seq
        if not late:
            return y
        self._answered.wait()  # the guard's answer is out before this thread goes on
        self._answered.clear()
        self.overruns += 1
        self._inline = False  # the next bins go to the helper (module doc)
        return ANSWERED

    def _step_on_worker(self, k: int, x: np.ndarray, until_ns: int) -> np.ndarray | None:
        """Bin k on the worker (after an overrun), then back inline once it has kept up for RECOVER bins.
        The helper fails only in this mode (a step it ran, or its answer that started the mode)."""
        if self.error is not None:
            raise RuntimeError("the guard thread failed (a step it ran, or its answer to an overrun bin)") from self.error
        y = self._queue_and_wait(k, x, until_ns)
        on_time = y is not None and not self.flags and self.completed == self.submitted
        self._on_time = self._on_time + 1 if on_time else 0
        if self._on_time >= RECOVER:  # (flags are 0 now, as the inline steps leave them)
            self._on_time = 0
            self._inline = True
            self._post(_GUARD_TOKEN)
        return y

    def _queue_and_wait(self, k: int, x: np.ndarray, until_ns: int) -> np.ndarray | None:
        """Queue bin k for the worker and wait for its velocity until `until_ns`; None if it is not ready."""
        self.flags = 0
        backlog = self.submitted - self.completed
        if self.withholding or backlog >= self.max_backlog:
            if backlog > 0:
                self.withholding = True
                self.flags = _DROPPED
                return None
            self.withholding = False  # caught up: restart from a clean state, not one with holes
            self._post(_RESET_TOKEN)
            self.flags = _RESET
        j = self.submitted
        s = j % self.slots
        self._in[s] = x
        self._bin[s] = k
        self.submitted = j + 1
        self._todo.put(j)
        self._posted += 1
        done, spinning = self._done, self._spin_ns > 0
        if spinning:  # post with the GIL released, then spin for an answer (module doc), up to spin_end
            spin_end = min(until_ns, time.monotonic_ns() + self._spin_ns)
            write = POSTED
        else:
            self._cells[POSTED] = self._posted
        while True:
            if spinning:
                signal_and_spin(self._cells, write, self._posted, DONE, self._answers, spin_end)
                write = NO_CELL
            remaining = until_ns - time.monotonic_ns()
            try:
                d = done.get(timeout=remaining * 1e-9) if remaining > 0 else done.get(block=False)
            except queue.Empty:
                return None
            self._answers += 1
            ds = d % self.slots
            self.model_vel[self._bin[ds]] = self._out[ds]
            if d == j:
                self.begin, self.end = int(self._times[ds, 0]), int(self._times[ds, 1])
                return self._out[ds]

    def finish(self, timeout_s: float) -> None:
        """Let the worker finish queued bins (their outputs land in model_vel), then stop the helper."""
        if self._thread.ident is None:
            return
        self._post(None)
        self._thread.join(timeout_s)
        while True:
            try:
                d = self._done.get(block=False)
            except queue.Empty:
                break
            self._answers += 1
            self.model_vel[self._bin[d % self.slots]] = self._out[d % self.slots]
