"""Where the model's step runs: inline on the loop's thread, or on a worker under a deadline.

Both steppers give the core one call, `step(k, x, until_ns)`, and keep the backend's
state exact: every bin handed to them is stepped exactly once, in order.

The threaded stepper (latency bound, `deadline_ms`): the loop waits for a bin's result only
until `until_ns`. The model itself is never interrupted or skipped: the worker steps every
bin in order, so its state is exactly the offline state and later bins are decoded correctly
once it catches up (its late outputs are kept in `model_vel`). Only if it falls
`max_backlog` bins behind (a model that cannot keep up at all) are bins withheld from it
(DROPPED); once it has drained its queue, its state is reset (RESET) so it never runs on a
state with holes.

Hand-off: the queues carry the work; while an answer is expected soon the waiting side spins
for it on shared counters with the GIL released instead of sleeping on the queue
(decoder_runtime.spin: each sleep costs a wake-up of tens of microseconds on a VM). The
loop spins up to `handoff_spin_us` for the worker's answer; the worker spins as long after
each bin for the next, and, when the keep-warm pass says a bin is coming (`expect`), runs dry
steps up to the time it is given and spins for the bin from then on.
`handoff_spin_us=0`: both sleep on the queues.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from decoder_runtime.messages import Flag
from decoder_runtime import spin
from decoder_runtime.spin import CELLS, DONE, NO_CELL, POSTED, UNTIL, signal_and_spin

if TYPE_CHECKING:
    from decoder_runtime.backends.base import Backend

_DROPPED, _RESET = int(Flag.DROPPED), int(Flag.RESET)
_RESET_TOKEN = -1  # worker queue item meaning "reset the backend's state"
_WARM_TOKEN = -2  # worker queue item meaning "dry steps, the backend's state unmoved" (decoder_runtime.warm)


def another_fits(due_ns: int, now_ns: int, last_ns: int) -> bool:
    """Whether to start another warm pass or dry step that must end by due_ns (the predicted bin,
    or for the worker's dry steps the time `expect` gave): only if one twice as long as the last
    (hot) one still ends by then, so a slower one does too. The one rule for the loop's repeated
    passes (decoder_runtime.warm) and the worker's dry steps."""
    return due_ns - now_ns > 2 * last_ns


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

    def expect(self, dry_until_ns: int, until_ns: int) -> None:
        """A bin is coming: nothing to prepare inline."""

    def step(self, k: int, x: np.ndarray, until_ns: int) -> np.ndarray:
        self.begin = time.monotonic_ns()
        y = self.backend.step(x)
        self.end = time.monotonic_ns()
        self.model_vel[k] = y
        return y

    def finish(self, timeout_s: float) -> None:
        pass


class ThreadedStepper:
    """The model's step on a worker thread; the loop waits for a bin's result until a deadline.

    Bins are queued in order, so the backend sees every submitted bin exactly once, in
    order, whatever the loop decided to send. Inputs and outputs live in a ring of
    preallocated slots indexed by submission number j; the queues carry only j, and
    `_bin[j % slots]` says which engine bin it was.
    """

    def __init__(self, backend: "Backend", model_vel: np.ndarray, n_channels: int, max_backlog: int,
                 handoff_spin_us: float = 500.0) -> None:
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
        self._cells = np.zeros(CELLS, dtype=np.int64)
        if self._spin_ns:
            spin.load()
        self._posted = 0  # items put on _todo (the POSTED cell)
        self._dry_until_ns = 0  # dry steps end by then (set by the keep-warm pass; 0: not known)
        self.dry_overlapped = 0  # items posted while the worker ran a dry step (they waited for it)
        self._answers = 0  # items taken from _done
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
        mono, slots, spin_ns, cells = time.monotonic_ns, self.slots, self._spin_ns, self._cells
        dry = getattr(backend, "dry_step", None)
        taken = answered = 0
        while True:
            if spin_ns:  # publish the last answer, then spin for the next item while one is expected
                signal_and_spin(cells, DONE, answered, POSTED, taken, mono() + spin_ns, UNTIL)
            j = todo.get()
            taken += 1
            if j is None:
                return
            if j == _RESET_TOKEN:
                backend.reset()
                continue
            if j == _WARM_TOKEN:
                self._dry_steps(dry, taken)
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
            answered += 1

    def _post(self, item: int | None) -> None:
        """Queue an item for the worker and bump the counter it spins on."""
        self._todo.put(item)
        self._posted += 1
        self._cells[POSTED] = self._posted

    def reset(self) -> None:
        self._post(_RESET_TOKEN)

    def expect(self, dry_until_ns: int, until_ns: int) -> None:
        """A bin is coming: the worker's dry steps go on up to dry_until_ns, then it spins for the
        bin until until_ns instead of sleeping."""
        self._dry_until_ns = dry_until_ns
        self._cells[UNTIL] = until_ns

    def _dry_steps(self, dry, taken: int) -> None:
        """Dry steps up to the time `expect` gave (`another_fits`), none started once anything is
        posted (on the worker thread)."""
        mono, cells = time.monotonic_ns, self._cells
        while True:
            t = mono()
            dry()
            took = mono() - t
            if cells[POSTED] != taken:  # a bin (or token) came during this dry step and waited for it
                self.dry_overlapped += 1
                return
            if not another_fits(self._dry_until_ns, mono(), took):
                return

    def warm(self) -> None:
        """Have the worker run a dry step on its own thread (its core's caches), if the backend has one."""
        if hasattr(self.backend, "dry_step") and not self.warm_pending:  # never queue a second one
            self.warm_pending = True
            self._post(_WARM_TOKEN)

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
                signal_and_spin(self._cells, write, self._posted, DONE, self._answers, spin_end, NO_CELL)
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
        """Let the worker finish queued bins (their outputs land in model_vel), then stop it."""
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
