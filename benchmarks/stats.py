"""Latency summaries: the handful of numbers a paper table reports for one set of bins.

Raw latencies stay in integer nanoseconds until the very end so that nothing is rounded
twice; the summary is in microseconds because that is the scale the targets are set in.
A percentile is the smallest observed latency that at least p% of bins do not exceed
(the nearest-rank definition): always a latency that happened, never an interpolation between
two, and "p99 = 400 µs" reads literally as "99% of bins took at most 400 µs".
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
DEFAULT_DEADLINES_US = (1000.0, 25000.0)


def pct_key(p: float) -> str:
    """50 -> 'p50', 99.9 -> 'p99.9': the key a percentile has in every summary."""
    return f"p{p:g}"


def deadline_key(deadline_us: float) -> str:
    """1000 -> 'over_1000us': the key of the count of bins slower than a deadline."""
    return f"over_{deadline_us:g}us"


def nearest_rank(p: float, n: int) -> int:
    """1-based rank of the p-th percentile of n values: ceil(p/100 * n), computed exactly.

    (np.percentile's float arithmetic puts 99.9% of 1000 at rank 1000 instead of 999.)
    """
    return max(1, min(n, -(-round(p * 1000) * n // 100_000)))


def summarize(latency_ns: np.ndarray, deadlines_us: Sequence[float] = DEFAULT_DEADLINES_US) -> dict:
    """p50/p90/p99/p99.9, max, mean, std (µs), misses per deadline, and bins per second.

    `bins_per_s` is the sustained rate if bins were fed back to back (1 / mean latency):
    the throughput ceiling of a variant, not the rate a rig runs at.
    """
    ns = np.asarray(latency_ns)
    if ns.ndim != 1 or ns.size == 0:
        raise ValueError(f"need a non-empty 1-D array of latencies, got shape {ns.shape}")
    if not np.issubdtype(ns.dtype, np.integer) and not np.isfinite(ns).all():
        raise ValueError("latencies contain NaN or inf")
    us = ns.astype(np.float64) / 1e3
    out: dict = {"n": int(us.size)}
    ranked = np.sort(us)
    for p in PERCENTILES:
        out[pct_key(p)] = float(ranked[nearest_rank(p, ranked.size) - 1])
    mean = float(us.mean())
    out.update(max=float(us.max()), min=float(us.min()), mean=mean, std=float(us.std()))
    for d in deadlines_us:
        out[deadline_key(d)] = int(np.count_nonzero(us > d))
    out["bins_per_s"] = 1e6 / mean if mean > 0 else float("inf")
    return out


def ratio(summary: dict, reference: dict, key: str = "p50") -> float:
    """How many times faster than the reference a variant is at one statistic (>1 = faster)."""
    return reference[key] / summary[key] if summary[key] > 0 else float("inf")


def to_uint32_ns(latency_ns: np.ndarray) -> np.ndarray:
    """Compact storage for raw latencies: uint32 ns holds up to 4.29 s per bin.

    Anything longer (a multi-second stall) is clipped to the maximum and so still shows
    as the worst bin; silently wrapping round would hide exactly the bin that matters.
    """
    ns = np.asarray(latency_ns, dtype=np.int64)
    if (ns < 0).any():
        raise ValueError("negative latency: clock readings out of order")
    return np.minimum(ns, np.iinfo(np.uint32).max).astype(np.uint32)
