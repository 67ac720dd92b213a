"""The one definition of every latency spikestream reports, from per-bin stage stamps.

Each bin is stamped with time.monotonic_ns() as it passes each stage (`STAGES`); 0 means
the stage did not happen for that bin (no model step for a dropped bin, or a step that
missed its deadline). The engine fills the stamps, the record stores them, and the summary
below, the message's `lat_us` and every benchmark derive their numbers from them alone:

- **latency** = arrival -> sent: what a subscriber waits for, and what `lat_us` carries
  (stamped when the message is packed, just before the non-blocking send);
- **model step** = step_begin -> step_end, for bins whose model output was sent in time;
- **own work** = latency - model step: validation, adaptation, what surrounds the step (the
  fallback's push, the guard's cells, or after an overrun the hand-off to and from the guard's
  thread), packing and sending: the runtime's overhead around the model;
- **record** = sent -> recorded, after the message is out: it never delays a subscriber,
  so it is reported on its own rather than folded into the runtime's own work.
"""
from __future__ import annotations

import math

import numpy as np

from decoder_runtime.messages import flag_names

STAGES = ("arrival", "validated", "adapted", "step_begin", "step_end", "stepped", "sent", "recorded")
ARRIVAL, VALIDATED, ADAPTED, STEP_BEGIN, STEP_END, STEPPED, SENT, RECORDED = range(len(STAGES))
# The work done in the interval ending at each stage.
STAGE_WORK = {"validated": "validate", "adapted": "adapt", "step_begin": "hand-off to step",
              "step_end": "model step", "stepped": "hand-back from step", "sent": "publish", "recorded": "record"}


def percentiles(ns: np.ndarray) -> dict:
    """p50 / p99 / p99.9 / max in µs of a latency array given in ns (NaN when empty)."""
    if ns.size == 0:
        return {"p50": math.nan, "p99": math.nan, "p99.9": math.nan, "max": math.nan, "n": 0}
    us = ns.astype(np.float64) / 1e3
    p50, p99, p999 = np.percentile(us, (50, 99, 99.9))
    return {"p50": float(p50), "p99": float(p99), "p99.9": float(p999), "max": float(us.max()), "n": int(us.size)}


def latencies(stamps: np.ndarray) -> dict[str, np.ndarray]:
    """ns per bin: the whole bin, the model step, the runtime's own work, and each stage's interval."""
    st = np.asarray(stamps, dtype=np.int64)
    if st.ndim != 2 or st.shape[1] != len(STAGES):
        raise ValueError(f"stamps must be [T, {len(STAGES)}] for stages {STAGES}, got {st.shape}")
    total = st[:, SENT] - st[:, ARRIVAL]
    stepped = st[:, STEP_END] > 0
    step = st[stepped, STEP_END] - st[stepped, STEP_BEGIN]
    out = {"latency": total, "model step": step, "own work": total[stepped] - step,
           "hand-off": st[stepped, STEPPED] - st[stepped, ADAPTED] - step}
    for i, (a, b) in enumerate(zip(STAGES, STAGES[1:])):
        ok = (st[:, i] > 0) & (st[:, i + 1] > 0)
        out[STAGE_WORK[b]] = st[ok, i + 1] - st[ok, i]
    return out


def flag_counts(flags: np.ndarray) -> dict[str, int]:
    """How many bins carried each flag."""
    out: dict[str, int] = {}
    for bit in range(31):
        c = int(np.count_nonzero(flags & (1 << bit)))
        if c:
            out[flag_names(1 << bit)[0]] = c
    return out


def summarize(stamps: np.ndarray, flags: np.ndarray, period: float, *, drops: int = 0, events: int = 0) -> dict:
    """Latency percentiles (latency, step, own work, hand-off), stage p50s, misses and flag counts."""
    lat = latencies(stamps)
    counts = flag_counts(np.asarray(flags))
    stage = {"validate": lat["validate"], "adapt": lat["adapt"], "publish": lat["publish"], "record": lat["record"],
             "step_wait": np.asarray(stamps)[:, STEPPED] - np.asarray(stamps)[:, ADAPTED]}
    return {
        "n_bins": int(len(flags)),
        "latency_us": percentiles(lat["latency"]),
        "step_us": percentiles(lat["model step"]),
        "own_us": percentiles(lat["own work"]),
        "handoff_us": percentiles(lat["hand-off"]),
        "stage_p50_us": {k: percentiles(v)["p50"] for k, v in stage.items()},
        "deadline_misses": counts.get("deadline", 0),
        "period_overruns": int(np.count_nonzero(lat["latency"] > period * 1e9)),
        "flags": counts,
        "publish_drops": drops,
        "events": events,
    }
