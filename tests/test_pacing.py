"""Pacing: deadlines come from the start time, so errors never accumulate."""
from __future__ import annotations

import time

import numpy as np
import pytest

from replay.pacing import Pacer, pacing_stats, parse_speed


def test_parse_speed():
    assert parse_speed("1") == 1.0
    assert parse_speed("2.5") == 2.5
    assert parse_speed("max") is None
    assert parse_speed("inf") is None
    for bad in ("0", "-1", "fast-ish"):
        with pytest.raises(ValueError, match="speed"):
            parse_speed(bad)


def test_deadlines_are_computed_from_t0_not_accumulated():
    p = Pacer(0.025, speed=3.0)
    p.start(t0_ns=1_000)
    for k in (0, 1, 7, 40_000, 3_000_000):
        assert p.deadline_ns(k) == 1_000 + round(k * 0.025e9 / 3.0)
    # float accumulation of the period would drift; the schedule after 3 M bins is exact to 1 ns
    assert abs(p.deadline_ns(3_000_000) - (1_000 + 25_000 * 10**9)) <= 1


def test_max_speed_never_waits():
    p = Pacer(0.025, speed=None)
    p.start()
    assert all(p.wait(k) == 0 for k in range(1000))


def test_no_drift_over_200_bins_at_speed_10_even_after_a_stall():
    """Releases are never early, and after a 20 ms stall the schedule catches up.

    A scheduler that slept one period after each release would end 20 ms (plus every
    oversleep) behind; this one releases the bins after the stall at once until back on
    schedule, so the last bins are late only by the wake-up error.
    """
    p = Pacer(0.025, speed=10.0)
    late = np.zeros(200, dtype=np.int64)
    released = np.zeros(200, dtype=np.int64)
    t0 = p.start()
    for k in range(200):
        late[k] = p.wait(k)
        released[k] = time.monotonic_ns()
        if k == 50:
            time.sleep(0.020)
    deadlines = t0 + np.round(np.arange(200) * 2.5e6).astype(np.int64)
    assert (released >= deadlines).all()
    assert (late >= 0).all()
    assert late[51] >= 15_000_000  # the stall did make the next bin late ...
    assert np.median(late[150:]) < 10_000_000  # ... and 100 bins later nothing of it remains
    stats = pacing_stats(late)
    assert set(stats) == {"mean_us", "std_us", "p50_us", "p99_us", "max_us"}
