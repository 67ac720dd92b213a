"""The GIL-free spin of the worker hand-off (decoder_runtime.spin): it sees the other thread's
write, gives up at its time limit, honours the UNTIL cell, and leaves the GIL to other threads.

Correctness only; how much it saves is measured by `spikestream bench` (real-pace section).
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np

from decoder_runtime.spin import CELLS, DONE, NO_CELL, POSTED, UNTIL, pause_until, signal_and_spin

MS = 1_000_000


def _in_thread(fn):
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("ret", fn()))
    th.start()
    return th, out


def test_a_spinner_sees_a_write_from_another_thread_and_publishes_its_own():
    cells = np.zeros(CELLS, dtype=np.int64)
    th, out = _in_thread(lambda: signal_and_spin(cells, DONE, 7, POSTED, 0, time.monotonic_ns() + 5_000 * MS, NO_CELL))
    while cells[DONE] != 7:  # the worker's write lands before it starts spinning
        time.sleep(0.001)
    assert signal_and_spin(cells, POSTED, 1, DONE, 0, time.monotonic_ns() + 5_000 * MS, NO_CELL)  # DONE is 7, not 0: at once
    th.join(10)
    assert not th.is_alive() and out["ret"] is True


def test_a_spin_gives_up_at_its_limit_and_the_until_cell_extends_it():
    cells = np.zeros(CELLS, dtype=np.int64)
    t0 = time.monotonic_ns()
    assert signal_and_spin(cells, NO_CELL, 0, POSTED, 0, t0 + 2 * MS, NO_CELL) is False
    assert time.monotonic_ns() - t0 >= 2 * MS
    cells[UNTIL] = time.monotonic_ns() + 30 * MS
    t1 = time.monotonic_ns()
    assert signal_and_spin(cells, NO_CELL, 0, POSTED, 0, t1, UNTIL) is False
    assert time.monotonic_ns() - t1 >= 25 * MS  # spun on to UNTIL, past its own (already passed) limit


def test_pausing_leaves_the_gil_to_other_threads():
    """With a long switch interval, another thread runs during the pause only if the GIL is released."""
    progress, stop = [], threading.Event()

    def python_work():
        while not stop.is_set():
            progress.append(1)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.1)
    th = threading.Thread(target=python_work)
    try:
        th.start()
        time.sleep(0.01)  # back once the other thread lets go of the GIL
        before = len(progress)
        pause_until(time.monotonic_ns() + 20 * MS)
        during = len(progress) - before  # read before this thread can let go of the GIL again
    finally:
        stop.set()
        th.join(10)
        sys.setswitchinterval(switch)
    assert during > 0
