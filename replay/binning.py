"""Spike times -> spike counts per bin, the one binning every path in spikestream uses.

Edge convention (it decides which bin a spike exactly on an edge lands in, so it is fixed
here once): bin k covers the half-open interval

    [t_start + k * bin_width, t_start + (k + 1) * bin_width)

with the edges evaluated in float64 exactly as `bin_edges` writes them. A spike exactly on
an inner edge counts in the later bin; a spike exactly on the final edge, before `t_start`
or after the last bin is dropped. This matches `numpy.histogram` on the same edges except
for its last bin, which numpy closes on the right. Spike times need not be sorted (each
spike is placed on its own), but they must be finite: a NaN spike time is a corrupt file,
not a spike, so it raises.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numba
import numpy as np


class Ragged(NamedTuple):
    """NWB's ragged layout, as a units table stores it: no per-unit copies needed."""

    flat: np.ndarray  # all units' spike times, concatenated
    ends: np.ndarray  # end index of each unit's run in `flat`


def bin_edges(t_start: float, n_bins: int, bin_width: float) -> np.ndarray:
    """float64[n_bins + 1]: the edges the binning kernel uses (bin end times are edges[1:])."""
    return t_start + np.arange(n_bins + 1, dtype=np.float64) * bin_width


@numba.njit(cache=True, nogil=True)
def _bin_ragged(
    flat: np.ndarray, ends: np.ndarray, edges: np.ndarray, bin_width: float, out: np.ndarray
) -> None:
    """Count each unit's spikes into `out[T, C]`; O(spikes), no sorting needed.

    The index is first computed arithmetically, then nudged by at most one bin against the
    explicit edges so floating-point rounding can never move a spike across an edge.
    """
    n_bins = out.shape[0]
    t0 = edges[0]
    t_end = edges[n_bins]
    begin = 0
    for c in range(ends.shape[0]):
        end = ends[c]
        for i in range(begin, end):
            s = flat[i]
            if s < t0 or s >= t_end:
                continue
            k = int(np.floor((s - t0) / bin_width))
            if k >= n_bins:
                k = n_bins - 1
            if s < edges[k]:
                k -= 1
            elif s >= edges[k + 1]:
                k += 1
            out[k, c] += 1.0
        begin = end


def as_ragged(spike_times: Sequence[np.ndarray] | Ragged) -> Ragged:
    """Normalise a list of per-unit spike-time arrays, or an NWB-style (flat, ends) pair."""
    if isinstance(spike_times, Ragged):
        flat = _as_float_times(spike_times.flat, "spike_times")
        ends = np.asarray(spike_times.ends)
        if ends.ndim != 1 or ends.dtype.kind not in "iu":
            raise TypeError(f"ragged end indices must be 1-D integers, got {ends.dtype} {ends.shape}")
        ends = ends.astype(np.int64)
        if ends.size and (np.any(np.diff(ends) < 0) or ends[0] < 0 or ends[-1] != flat.size):
            raise ValueError(
                "ragged spike times: the end indices must be non-decreasing and end at "
                f"len(flat)={flat.size}, got first={ends[0]}, last={ends[-1]}"
            )
        if not ends.size and flat.size:
            raise ValueError(f"ragged spike times: {flat.size} spike times but no units")
        return Ragged(flat, ends)
    units = [_as_float_times(u, f"spike_times[{i}]") for i, u in enumerate(spike_times)]
    ends = np.cumsum([u.size for u in units], dtype=np.int64)
    flat = np.concatenate(units) if units else np.zeros(0, dtype=np.float64)
    return Ragged(flat, ends)


def bin_spike_times(
    spike_times: Sequence[np.ndarray] | Ragged,
    t_start: float,
    n_bins: int,
    bin_width: float,
) -> np.ndarray:
    """float32[n_bins, C] spike counts, bins half-open as the module docstring fixes.

    `spike_times` is one array of times (seconds) per unit, in any order, or a `Ragged`
    (flat times, per-unit end indices) straight from an NWB units table.
    """
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    if n_bins < 0:
        raise ValueError(f"n_bins must be >= 0, got {n_bins}")
    if not np.isfinite(t_start):
        raise ValueError(f"t_start must be finite, got {t_start}")
    flat, ends = as_ragged(spike_times)
    out = np.zeros((n_bins, ends.size), dtype=np.float32)
    if n_bins:
        _bin_ragged(flat, ends, bin_edges(t_start, n_bins, bin_width), float(bin_width), out)
    return out


def _as_float_times(x: object, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be numeric seconds, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} holds {int(np.sum(~np.isfinite(arr)))} non-finite spike time(s)")
    return arr
