"""The end-to-end bench's LSL source: a process that pushes a session's bins at the bin pace.

Each sample's LSL timestamp is `pylsl.local_clock()` read immediately before the push, so
the runtime's message carries (as `t_src`) the exact moment the bin left the outlet, and a
subscriber on the same host measures push → receive on the one clock. Pacing follows a
schedule fixed from the start (sleep to 1 ms before each deadline, then spin: REFERENCE.md
measured σ 26 µs this way), so lateness never accumulates.

Run as `python -m benchmarks.lsl_outlet --counts bins.npy --name NAME --bin-width 0.025`.
It waits for a consumer (the runtime's inlet) before pushing, prints one JSON line with
its pacing statistics to stdout when done, and exits.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pylsl
import typer

STREAM_TYPE = "SpikeCounts"
SPIN_S = 0.001


def make_outlet(name: str, n_channels: int, bin_width: float) -> pylsl.StreamOutlet:
    """An outlet that sends every sample as it is pushed (chunk size 1: no batching delay)."""
    info = pylsl.StreamInfo(name, STREAM_TYPE, n_channels, 1.0 / bin_width, pylsl.cf_float32, name)
    return pylsl.StreamOutlet(info, chunk_size=1, max_buffered=60)


def push_paced(outlet: pylsl.StreamOutlet, counts: np.ndarray, bin_width: float) -> np.ndarray:
    """Push every row on a drift-free schedule; returns each push's lateness in ns."""
    late = np.empty(len(counts), dtype=np.int64)
    rows = [np.ascontiguousarray(r, dtype=np.float32) for r in counts]
    t0 = pylsl.local_clock() + 0.05
    for i, row in enumerate(rows):
        deadline = t0 + i * bin_width
        pause = deadline - pylsl.local_clock() - SPIN_S
        if pause > 0:
            time.sleep(pause)
        while (now := pylsl.local_clock()) < deadline:
            pass
        outlet.push_sample(row, now)
        late[i] = int((now - deadline) * 1e9)
    return late


def main(
    counts: Path = typer.Option(..., help=".npy file of float32 counts [T, C] to push, one row per bin"),
    name: str = typer.Option(..., help="LSL stream name (also its source id)"),
    bin_width: float = typer.Option(0.025, min=1e-4, help="seconds between bins"),
    wait_consumer: float = typer.Option(120.0, help="seconds to wait for an inlet before giving up"),
    settle: float = typer.Option(1.0, help="seconds to wait after the inlet connects (its process finishes start-up)"),
) -> None:
    data = np.load(counts)
    if data.ndim != 2:
        raise typer.BadParameter(f"{counts}: expected a [T, C] array, got shape {data.shape}")
    outlet = make_outlet(name, data.shape[1], bin_width)
    if not outlet.wait_for_consumers(wait_consumer):
        raise SystemExit(f"no LSL consumer for stream {name!r} within {wait_consumer:g} s")
    time.sleep(settle)
    late = push_paced(outlet, data, bin_width)
    time.sleep(1.0)  # let the last samples leave before the outlet closes
    us = late / 1e3
    print(json.dumps({"pushed": int(len(late)), "late_mean_us": float(us.mean()), "late_std_us": float(us.std()),
                      "late_p99_us": float(np.percentile(us, 99)), "late_max_us": float(us.max())}), flush=True)


if __name__ == "__main__":
    typer.run(main)
