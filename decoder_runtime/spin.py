"""GIL-free waits between the loop and the step's helper thread: the guard's sleep, the hand-off's spin.

The guard (decoder_runtime.stepping.GuardedStepper): while the loop steps the model inline,
the helper thread sleeps in `guard_wait` until the step in progress would overrun its
deadline. The loop says what it is doing in shared counter cells (`STARTED`, `FINISHED`,
`STEP_UNTIL`), a few plain stores per bin: no system call, no wake-up, no GIL on either side.
The guard sleeps (clock_nanosleep, absolute) until the running step's deadline, or, with no
step running, one `interval` -- the deadline itself -- so a step that starts after it looked
has a deadline no earlier than its next look, and it never wakes later than a deadline.

The hand-off (after an overrun, while the helper steps the bins): a bin handed to a thread
through a queue costs two thread wake-ups (the worker sleeping on `todo`, then the loop
sleeping on `done`), and on a VM each wake-up of an idle vCPU costs tens of microseconds:
measured ~90 us of hand-off per bin back to back and p99 ~380 us at 40 Hz on the 2-core VM,
against ~35 us for the step itself. A thread that is already running notices a write to shared
memory within a fraction of a microsecond. So while an answer is expected soon, the waiting
side spins on a shared counter (`POSTED`, `DONE`) instead of sleeping -- in numba with the GIL
released, so the other thread runs Python meanwhile. The queues stay the source of truth and
the fallback: a writer puts on the queue first, then bumps the counter, so a spinner that sees
the counter move finds its item on the queue at once, and a spinner that gives up blocks on
the queue as before. The counter is written inside `signal_and_spin` -- after numba has
released the GIL -- so the thread that sees it move never finds the GIL held by the writer and
never has to sleep for it (which would cost the very wake-up this avoids).

A spinning thread calls sched_yield() between looks: alone on its core that returns at
once, but when the scheduler has put the other thread on the same core (it does, on the
2-core VM), a spin without it kept that thread off the core for a whole time slice (measured:
every fourth bin stalled ~3 ms until the worker's spin ran out).

The clock is libc's clock_gettime(CLOCK_MONOTONIC) (the clock of time.monotonic_ns), the
sleep its clock_nanosleep and the yield its sched_yield, all declared to LLVM by name in numba
intrinsics rather than called through ctypes: numba will not cache a function that holds a
ctypes pointer, and compiling these at every start cost ~0.5 s of `serve`/`replay` start-up
(measured); cached, they load in ms.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

POSTED, DONE, STARTED, FINISHED, STEP_UNTIL = range(5)
CELLS = 5
NO_CELL = -1
POSTED_SINCE = -1  # guard_wait's answer when an item was posted for the helper
_CLOCK_MONOTONIC = 1
_TIMER_ABSTIME = 1
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


@intrinsic
def _sleep_until(typingctx, until_ns):
    """clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) to until_ns: the thread sleeps, nothing spins."""
    def codegen(context, builder, signature, args):
        timespec = ir.LiteralStructType([_I64, _I64])
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I32, [_I32, _I32, timespec.as_pointer(), timespec.as_pointer()]),
            "clock_nanosleep")
        ts = cgutils.alloca_once(builder, timespec)
        second = ir.Constant(_I64, 1_000_000_000)
        builder.store(builder.sdiv(args[0], second), cgutils.gep_inbounds(builder, ts, 0, 0))
        builder.store(builder.srem(args[0], second), cgutils.gep_inbounds(builder, ts, 0, 1))
        return builder.call(fn, [ir.Constant(_I32, _CLOCK_MONOTONIC), ir.Constant(_I32, _TIMER_ABSTIME), ts,
                                 ir.Constant(timespec.as_pointer(), None)])
    return types.int32(types.int64), codegen


@njit(nogil=True, cache=True)
def signal_and_spin(cells, write, value, watch, seen, until_ns):  # pragma: no cover - numba
    """cells[write] = value (write < 0: nothing), then spin until cells[watch] != seen; False if the
    clock reached until_ns first. Runs with the GIL released; called directly on the hot path
    (no Python wrapper)."""
    if write >= 0:
        cells[write] = value
    while cells[watch] == seen:
        if _now_ns() >= until_ns:
            return False
        _sched_yield()  # a thread that shares our core runs now (module doc)
    return True


@njit(nogil=True, cache=True)
def guard_wait(cells, taken, interval_ns):  # pragma: no cover - numba
    """Sleep until the inline step in progress (cells[STARTED] != cells[FINISHED]) reaches
    cells[STEP_UNTIL] -- returns its number then -- or until cells[POSTED] is no longer `taken`
    (returns POSTED_SINCE). With no step running it looks again every interval_ns (module doc).
    Runs with the GIL released."""
    while True:
        if cells[POSTED] != taken:
            return POSTED_SINCE
        started = cells[STARTED]
        now = _now_ns()
        if started != cells[FINISHED]:
            until = cells[STEP_UNTIL]
            if now >= until:
                return started
            _sleep_until(until)
        else:
            _sleep_until(now + interval_ns)


def load() -> None:
    """Compile (or load from numba's cache) now, at set-up, not in the first bin."""
    cells = np.zeros(CELLS, np.int64)
    signal_and_spin(cells, POSTED, 0, DONE, 1, 0)
    guard_wait(cells, 1, 0)
