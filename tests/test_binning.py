"""The binning kernel against numpy.histogram on hand-built spike trains, edges included."""
from __future__ import annotations

import numpy as np
import pytest

from replay import Ragged, bin_edges, bin_spike_times


def histogram_half_open(spikes: np.ndarray, t_start: float, n_bins: int, bw: float) -> np.ndarray:
    """numpy.histogram closes its last bin on the right; one extra edge makes all half-open."""
    return np.histogram(spikes, bins=bin_edges(t_start, n_bins + 1, bw))[0][:n_bins]


def test_hand_counted_edges():
    # edges 1.0, 1.5, 2.0, 2.5: before start, on each edge, just inside, on the last edge, after
    spikes = [np.array([0.99, 1.0, 1.49, 1.5, 2.0, 2.4999, 2.5, 3.0])]
    counts = bin_spike_times(spikes, 1.0, 3, 0.5)
    assert counts.dtype == np.float32 and counts.shape == (3, 1)
    np.testing.assert_array_equal(counts[:, 0], [2, 1, 2])


def test_spikes_exactly_on_inexact_float_edges():
    # 0.1 and 0.025 are not exact in binary; a spike equal to an edge must open that bin.
    t0, bw, n = 0.1, 0.025, 400
    edges = bin_edges(t0, n, bw)
    counts = bin_spike_times([edges], t0, n, bw)[:, 0]
    np.testing.assert_array_equal(counts, np.ones(n))  # the final edge is dropped
    np.testing.assert_array_equal(counts, histogram_half_open(edges, t0, n, bw))


def test_matches_histogram_on_random_trains_with_edge_cases():
    rng = np.random.default_rng(0)
    t0, bw, n = 3.7, 0.025, 200
    edges = bin_edges(t0, n, bw)
    units = [
        rng.uniform(t0 - 1, t0 + n * bw + 1, 500),  # many outside on both sides
        np.concatenate([edges[rng.integers(0, n + 1, 50)], [t0 - 1e-12, edges[-1]]]),
        np.array([]),  # an empty unit
        rng.permutation(rng.uniform(t0, t0 + n * bw, 300)),  # unsorted
        np.array([t0, t0, t0]),  # repeats on the first edge
    ]
    counts = bin_spike_times(units, t0, n, bw)
    assert counts.shape == (n, len(units))
    for c, u in enumerate(units):
        np.testing.assert_array_equal(counts[:, c], histogram_half_open(u, t0, n, bw), err_msg=f"unit {c}")
    np.testing.assert_array_equal(counts[:, 2], 0)
    assert counts[0, 4] == 3


def test_order_of_spikes_does_not_matter_and_ragged_matches_list():
    rng = np.random.default_rng(1)
    units = [np.sort(rng.uniform(0, 10, k)) for k in (0, 5, 1000, 37)]
    shuffled = [rng.permutation(u) for u in units]
    ragged = Ragged(np.concatenate(units), np.cumsum([u.size for u in units]))
    a = bin_spike_times(units, 0.0, 400, 0.025)
    np.testing.assert_array_equal(a, bin_spike_times(shuffled, 0.0, 400, 0.025))
    np.testing.assert_array_equal(a, bin_spike_times(ragged, 0.0, 400, 0.025))
    assert a.sum() == sum(u.size for u in units)


def test_degenerate_shapes():
    assert bin_spike_times([np.array([1.0])], 0.0, 0, 0.025).shape == (0, 1)
    assert bin_spike_times([], 0.0, 10, 0.025).shape == (10, 0)
    ints = bin_spike_times([np.array([0, 1, 2], dtype=np.int64)], 0.0, 3, 1.0)
    np.testing.assert_array_equal(ints[:, 0], [1, 1, 1])


@pytest.mark.parametrize("units, kwargs, error, match", [
    ([np.array([0.1, np.nan])], {}, ValueError, "non-finite"),
    ([np.array(["0.1", "0.2"])], {}, TypeError, "numeric"),
    ([np.zeros((2, 2))], {}, ValueError, "1-D"),
    ([np.array([0.1])], {"bin_width": 0.0}, ValueError, "bin_width"),
    ([np.array([0.1])], {"n_bins": -1}, ValueError, "n_bins"),
    (Ragged(np.array([0.1, 0.2]), np.array([1, 3])), {}, ValueError, "end indices"),
    (Ragged(np.array([0.1, 0.2]), np.array([1.0, 2.0])), {}, TypeError, "integers"),
])
def test_bad_input_is_rejected_clearly(units, kwargs, error, match):
    args = {"t_start": 0.0, "n_bins": 10, "bin_width": 0.025} | kwargs
    with pytest.raises(error, match=match):
        bin_spike_times(units, **args)
