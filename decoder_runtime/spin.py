"""Spinning hand-off between the loop and the step's worker thread, without the GIL.

Why it exists: a bin handed to the worker through a queue costs two thread wake-ups (the
worker sleeping on `todo`, then the loop sleeping on `done`), and on a VM each wake-up of an
idle vCPU costs tens of microseconds: measured ~90 us of hand-off per bin back to back and
p99 ~380 us at 40 Hz on the 2-core VM, against ~35 us for the step itself. A thread that is
already running notices a write to shared memory within a fraction of a microsecond. So
while an answer is expected soon, the waiting side spins on a shared counter instead of
sleeping -- in numba with the GIL released, so the other thread runs Python meanwhile.

The counter cells (int64) live in one small array shared by both threads (`CELLS`):
`POSTED` (items put on the worker's queue), `DONE` (results put on the loop's queue) and
`UNTIL` (until when the worker should spin for the next item, monotonic ns: set by the
keep-warm pass just before a bin is due). The queues stay the source of truth and the
fallback: a writer puts on the queue first, then bumps the counter, so a spinner that sees
the counter move finds its item on the queue at once, and a spinner that gives up blocks on
the queue as before.

The counter is written inside `signal_and_spin` -- after numba has released the GIL -- so
the thread that sees it move never finds the GIL held by the writer and never has to sleep
for it (which would cost the very wake-up this avoids).

A spinning thread calls sched_yield() between looks: alone on its core that returns at
once, but when the scheduler has put the other thread on the same core (it does, on the
2-core VM), a spin without it kept that thread off the core for a whole time slice (measured:
every fourth bin stalled ~3 ms until the worker's spin ran out).

The clock is libc's clock_gettime(CLOCK_MONOTONIC) called through ctypes (the clock of
time.monotonic_ns); numba cannot cache a function holding a ctypes pointer, so these compile
once per process (~0.5 s measured on the 2-core VM), when a worker stepper is built.
"""
from __future__ import annotations

import ctypes

import numpy as np

POSTED, DONE, UNTIL = range(3)
CELLS = 3
NO_CELL = -1
_CLOCK_MONOTONIC = 1

_libc = ctypes.CDLL(None)
_clock_gettime = _libc.clock_gettime
_clock_gettime.argtypes = [ctypes.c_int, ctypes.c_void_p]
_clock_gettime.restype = ctypes.c_int
_sched_yield = _libc.sched_yield
_sched_yield.argtypes = []
_sched_yield.restype = ctypes.c_int
_signal_and_spin = None


def _compile():
    """The numba spin, compiled on first use (numba is imported only by runtimes that step on a worker)."""
    from numba import njit

    @njit(nogil=True)
    def now_ns(ts):  # pragma: no cover - numba
        _clock_gettime(_CLOCK_MONOTONIC, ts.ctypes)
        return ts[0] * 1_000_000_000 + ts[1]

    @njit(nogil=True)
    def signal_and_spin(cells, write, value, watch, seen, until_ns, until_cell, ts):  # pragma: no cover - numba
        if write >= 0:
            cells[write] = value
        while cells[watch] == seen:
            end = until_ns if until_cell < 0 else max(until_ns, cells[until_cell])
            if now_ns(ts) >= end:
                return False
            _sched_yield()  # a thread that shares our core runs now (module doc)
        return True

    return signal_and_spin


class Spinner:
    """One thread's side of the hand-off: its own clock buffer, the shared cells."""

    def __init__(self, cells: np.ndarray) -> None:
        global _signal_and_spin
        if _signal_and_spin is None:
            _signal_and_spin = _compile()
            _signal_and_spin(np.zeros(CELLS, np.int64), POSTED, 0, DONE, 1, 0, UNTIL, np.zeros(2, np.int64))
        self._fn = _signal_and_spin
        self.cells = cells
        self._ts = np.zeros(2, dtype=np.int64)
        self._still = np.zeros(1, dtype=np.int64)  # a cell nobody writes: spinning on it is pausing

    def signal_and_spin(self, write: int, value: int, watch: int, seen: int, until_ns: int,
                        until_cell: int = NO_CELL) -> bool:
        """cells[write] = value (write < 0: nothing), then spin until cells[watch] != seen; False if
        the clock reached until_ns (or cells[until_cell], whichever is later) first. GIL released."""
        return self._fn(self.cells, write, value, watch, seen, until_ns, until_cell, self._ts)

    def pause_until(self, until_ns: int) -> None:
        """Busy-wait until the clock reaches until_ns with the GIL released (a sleep without the wake-up)."""
        self._fn(self._still, NO_CELL, 0, 0, 0, until_ns, NO_CELL, self._ts)
