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

The clock is libc's clock_gettime(CLOCK_MONOTONIC) (the clock of time.monotonic_ns) and the
yield libc's sched_yield, both declared to LLVM by name in numba intrinsics rather than called
through ctypes: numba will not cache a function that holds a ctypes pointer, and compiling this
one at every start cost ~0.5 s of `serve`/`replay` start-up (measured); cached, it loads in ms.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

POSTED, DONE, UNTIL = range(3)
CELLS = 3
NO_CELL = -1
_CLOCK_MONOTONIC = 1
_I32, _I64 = ir.IntType(32), ir.IntType(64)


@intrinsic
def _now_ns(typingctx):
    """clock_gettime(CLOCK_MONOTONIC) in ns, on a timespec on the stack."""
    def codegen(context, builder, signature, args):
        timespec = ir.LiteralStructType([_I64, _I64])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [_I32, timespec.as_pointer()]),
                                            "clock_gettime")
        ts = cgutils.alloca_once(builder, timespec)
        builder.call(fn, [ir.Constant(_I32, _CLOCK_MONOTONIC), ts])
        sec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 0))
        nsec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 1))
        return builder.add(builder.mul(sec, ir.Constant(_I64, 1_000_000_000)), nsec)
    return types.int64(), codegen


@intrinsic
def _sched_yield(typingctx):
    """sched_yield(): a thread that shares this core runs now."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, []), "sched_yield")
        return builder.call(fn, [])
    return types.int32(), codegen


@njit(nogil=True, cache=True)
def signal_and_spin(cells, write, value, watch, seen, until_ns, until_cell):  # pragma: no cover - numba
    """cells[write] = value (write < 0: nothing), then spin until cells[watch] != seen; False if the
    clock reached until_ns (or cells[until_cell] when until_cell >= 0, whichever is later) first.
    Runs with the GIL released; called directly on the hot path (no Python wrapper)."""
    if write >= 0:
        cells[write] = value
    while cells[watch] == seen:
        end = until_ns if until_cell < 0 else max(until_ns, cells[until_cell])
        if _now_ns() >= end:
            return False
        _sched_yield()  # a thread that shares our core runs now (module doc)
    return True


_STILL = np.zeros(1, dtype=np.int64)  # a cell nobody writes: spinning on it is pausing


def load() -> None:
    """Compile (or load from numba's cache) now, at set-up, not in the first bin."""
    signal_and_spin(np.zeros(CELLS, np.int64), POSTED, 0, DONE, 1, 0, UNTIL)


def pause_until(until_ns: int) -> None:
    """Busy-wait until the clock reaches until_ns with the GIL released (a sleep without the wake-up)."""
    signal_and_spin(_STILL, NO_CELL, 0, 0, 0, until_ns, NO_CELL)
