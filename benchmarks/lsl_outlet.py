"""The end-to-end bench's LSL source: a process that pushes a session's bins at the bin pace.

Each sample's LSL timestamp is the LSL clock read by liblsl at the push, so
the runtime's message carries (as `t_src`) the exact moment the bin left the outlet, and a
subscriber on the same host measures push → receive on the one clock. Pacing is
`replay.pacing.Pacer`, the schedule `stream-nwb` and replay use (fixed from the start, sleep
to 1 ms before each deadline, then spin), so lateness never accumulates.

Run as `python -m benchmarks.lsl_outlet --counts bins.npy --name NAME --bin-width 0.025`.
It waits for a consumer (the runtime's inlet) before pushing, prints one JSON line with
its pacing statistics to stdout when done, and exits.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer

from decoder_runtime.sources.lsl import CountsOutlet
from replay.pacing import Pacer, pacing_stats


def push_paced(outlet: CountsOutlet, counts: np.ndarray, bin_width: float) -> np.ndarray:
    """Push every row on the runtime's own drift-free schedule; returns each push's lateness in ns.

    Each sample is stamped by liblsl with the LSL clock at the push (timestamp 0.0).
    """
    pacer = Pacer(bin_width)
    late = np.empty(len(counts), dtype=np.int64)
    pacer.start(time.monotonic_ns() + 50_000_000)  # bin 0 due 50 ms from now
    for k, row in enumerate(counts):
        late[k] = pacer.wait(k)
        outlet.push(row)
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
    outlet = CountsOutlet(name, data.shape[1], bin_width, source_id=name, max_buffered_s=60)
    if not outlet.wait_for_consumers(wait_consumer):
        raise SystemExit(f"no LSL consumer for stream {name!r} within {wait_consumer:g} s")
    time.sleep(settle)
    late = push_paced(outlet, data, bin_width)
    time.sleep(1.0)  # let the last samples leave before the outlet closes
    print(json.dumps({"pushed": int(len(late)), **pacing_stats(late)}), flush=True)


if __name__ == "__main__":
    typer.run(main)
