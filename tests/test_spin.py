"""The GIL-free waits of decoder_runtime.spin: the hand-off's spin sees the other thread's write
and gives up at its limit; the guard's sleep wakes for an overrun step at its deadline, not for
one that ended in time, and for a posted item; both leave the GIL to other threads.

Correctness only; what they save is measured by `spikestream bench` (real-pace section).
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np

from decoder_runtime.spin import (CELLS, DONE, FINISHED, NO_CELL, POSTED, POSTED_SINCE, STARTED, STEP_UNTIL,
                                  guard_wait, signal_and_spin)

MS = 1_000_000


def _in_thread(fn):
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("ret", fn()))
    th.start()
    return th, out


def test_a_spinner_sees_a_write_from_another_thread_and_publishes_its_own():
    cells = np.zeros(CELLS, dtype=np.int64)
    th, out = _in_thread(lambda: signal_and_spin(cells, DONE, 7, POSTED, 0, time.monotonic_ns() + 5_000 * MS))
    while cells[DONE] != 7:  # the worker's write lands before it starts spinning
        time.sleep(0.001)
    assert signal_and_spin(cells, POSTED, 1, DONE, 0, time.monotonic_ns() + 5_000 * MS)  # DONE is 7, not 0: at once
    th.join(10)
    assert not th.is_alive() and out["ret"] is True


def test_a_spin_gives_up_at_its_limit():
    cells = np.zeros(CELLS, dtype=np.int64)
    t0 = time.monotonic_ns()
    assert signal_and_spin(cells, NO_CELL, 0, POSTED, 0, t0 + 2 * MS) is False
    assert time.monotonic_ns() - t0 >= 2 * MS


def test_the_guard_wakes_at_the_deadline_of_an_overrun_step_and_not_for_one_that_ended():
    cells = np.zeros(CELLS, dtype=np.int64)
    th, out = _in_thread(lambda: guard_wait(cells, 0, 5 * MS))
    # step 1 ends before its deadline: the guard does not answer it
    cells[STEP_UNTIL] = time.monotonic_ns() + 30 * MS
    cells[STARTED] = 1
    time.sleep(0.005)
    cells[FINISHED] = 1
    time.sleep(0.040)
    assert th.is_alive()
    # step 2 overruns: the guard answers with its number, at its deadline, not before
    until = time.monotonic_ns() + 20 * MS
    cells[STEP_UNTIL] = until
    cells[STARTED] = 2
    th.join(10)
    assert out["ret"] == 2 and time.monotonic_ns() >= until


def test_the_guard_wakes_for_a_posted_item():
    cells = np.zeros(CELLS, dtype=np.int64)
    th, out = _in_thread(lambda: guard_wait(cells, 0, 5 * MS))
    time.sleep(0.010)
    cells[POSTED] = 1
    th.join(10)
    assert not th.is_alive() and out["ret"] == POSTED_SINCE


def test_the_guard_s_sleep_leaves_the_gil_to_other_threads():
    """With a long switch interval, another thread runs during the wait only if the GIL is released."""
    progress, stop = [], threading.Event()

    def python_work():
        while not stop.is_set():
            progress.append(1)

    cells = np.zeros(CELLS, dtype=np.int64)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.1)
    th = threading.Thread(target=python_work)
    try:
        th.start()
        time.sleep(0.01)  # back once the other thread lets go of the GIL
        before = len(progress)
        cells[STEP_UNTIL], cells[STARTED] = time.monotonic_ns() + 20 * MS, 1  # a step that overruns in 20 ms
        assert guard_wait(cells, 0, 5 * MS) == 1
        during = len(progress) - before  # read before this thread can let go of the GIL again
    finally:
        stop.set()
        th.join(10)
        sys.setswitchinterval(switch)
    assert during > 0
