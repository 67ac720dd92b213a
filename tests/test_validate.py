"""Bad-bin checks: each problem is flagged and handled by its documented policy."""
from __future__ import annotations

import numpy as np
import pytest

from decoder_runtime.messages import Flag
from decoder_runtime.validate import Validator

C = 6
PERIOD = 0.025
FILL = np.arange(C, dtype=np.float32) + 0.5


def make(policy: str = "impute", late_s: float | None = None) -> Validator:
    v = Validator(C, PERIOD, FILL, policy, late_s)
    assert v.check(np.ones(C, np.float32), 1.0, 0.0) == 0  # a previous bin at t = 1.0
    return v


def test_good_bin_passes_unchanged():
    v = make()
    x = np.array([0, 1, 2, 3, 4, 5], dtype=np.float32)
    assert v.check(x, 1.025, 0.0) == 0
    np.testing.assert_array_equal(v.x, x)


def test_other_dtypes_and_strided_views_are_converted():
    v = make()
    x64 = np.array([0, 1, 2, 3, 4, 5], dtype=np.float64)
    assert v.check(x64, 1.025, 0.0) == 0
    np.testing.assert_array_equal(v.x, x64)
    ints = np.arange(2 * C, dtype=np.int64)[::2]
    assert v.check(ints, 1.05, 0.0) == 0
    np.testing.assert_array_equal(v.x, ints)


@pytest.mark.parametrize("policy", ["impute", "hold"])
def test_wrong_length(policy):
    v = make(policy)
    flags = v.check(np.ones(C + 1, np.float32), 1.025, 0.0)
    assert flags & Flag.BAD_LENGTH
    if policy == "impute":
        assert flags & Flag.IMPUTED and not flags & Flag.DROPPED
        np.testing.assert_array_equal(v.x, FILL)
    else:
        assert flags & Flag.DROPPED and not flags & Flag.IMPUTED


@pytest.mark.parametrize("policy", ["impute", "hold"])
def test_nonfinite(policy):
    v = make(policy)
    x = np.array([1, np.nan, 2, np.inf, -np.inf, 3], dtype=np.float32)
    flags = v.check(x, 1.025, 0.0)
    assert flags & Flag.NONFINITE and not flags & Flag.NEGATIVE  # -inf is non-finite, counted once
    if policy == "impute":
        assert flags & Flag.IMPUTED
        np.testing.assert_array_equal(v.x, [1, FILL[1], 2, FILL[3], FILL[4], 3])
    else:
        assert flags & Flag.DROPPED


@pytest.mark.parametrize("policy", ["impute", "hold"])
def test_negative(policy):
    v = make(policy)
    x = np.array([1, -1, 2, 0, -0.5, 3], dtype=np.float32)
    flags = v.check(x, 1.025, 0.0)
    assert flags & Flag.NEGATIVE and not flags & Flag.NONFINITE
    if policy == "impute":
        np.testing.assert_array_equal(v.x, [1, FILL[1], 2, 0, FILL[4], 3])
    else:
        assert flags & Flag.DROPPED


def test_nan_and_negative_together():
    v = make()
    flags = v.check(np.array([np.nan, -2, 1, 1, 1, 1], np.float32), 1.025, 0.0)
    assert flags & Flag.NONFINITE and flags & Flag.NEGATIVE and flags & Flag.IMPUTED
    np.testing.assert_array_equal(v.x[:2], FILL[:2])


@pytest.mark.parametrize("t", [0.9, 1.0, float("nan")])
def test_timestamp_not_advancing_is_dropped(t):
    v = make()
    assert v.check(np.ones(C, np.float32), t, 0.0) == Flag.BACKWARDS | Flag.DROPPED
    # the next bin is compared with the last accepted one (t = 1.0), not the rejected one
    assert v.check(np.ones(C, np.float32), 1.025, 0.0) == 0


def test_a_sustained_timestamp_jump_is_a_gap_from_the_bin_that_confirms_it():
    v = make()
    assert v.check(np.ones(C, np.float32), 1.0 + 1.4 * PERIOD, 0.0) == 0
    assert v.check(np.ones(C, np.float32), 1.0 + 10 * PERIOD, 0.0) == Flag.JUMP  # decoded, not yet trusted
    assert v.check(np.ones(C, np.float32), 1.0 + 11 * PERIOD, 0.0) == Flag.GAP  # it goes on from there
    assert v.check(np.ones(C, np.float32), 1.0 + 12 * PERIOD, 0.0) == 0


@pytest.mark.parametrize("ahead_s", [3.0, 1000.0, float("inf")])
def test_a_single_far_future_stamp_costs_only_that_bin(ahead_s):
    v = make()
    x = np.ones(C, np.float32)
    bad = v.check(x, 1.025 + ahead_s, 0.0)
    assert bad == (Flag.JUMP if ahead_s < float("inf") else Flag.BACKWARDS | Flag.DROPPED)
    for k in range(2, 50):  # the old timeline goes on: nothing backwards, dropped or held
        assert v.check(x, 1.0 + k * PERIOD, 0.0) == 0


def test_a_sustained_backwards_jump_is_a_gap_after_one_dropped_bin():
    v = make()
    x = np.ones(C, np.float32)
    assert v.check(x, 0.5, 0.0) == Flag.BACKWARDS | Flag.DROPPED  # the source clock was set back
    assert v.check(x, 0.525, 0.0) == Flag.GAP
    assert v.check(x, 0.55, 0.0) == 0


def test_a_gap_the_source_reports_moves_the_timeline_at_once():
    v = make()
    assert v.check(np.ones(C, np.float32), 0.2, 0.0, int(Flag.GAP)) == 0  # the engine keeps the source's GAP
    assert v.check(np.ones(C, np.float32), 0.225, 0.0) == 0


def test_late_flagged_beyond_threshold():
    v = make(late_s=0.010)
    assert v.check(np.ones(C, np.float32), 1.025, 0.009) == 0
    assert v.check(np.ones(C, np.float32), 1.05, 0.011) == Flag.LATE


def test_fill_must_match_channels():
    with pytest.raises(ValueError, match="fill"):
        Validator(C, PERIOD, np.zeros(C + 1), "impute")
