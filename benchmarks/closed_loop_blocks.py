"""Closed-loop blocks with recalibration between them: run, recalibrate from the record, run again.

What `spikestream closed-loop --recalibrate K` runs. Block 0 uses the artifact given; after
block b its record is relabelled and the decoder retrained (training.recalibrate), and block
b + 1 runs the new artifact. Every block is a new block of trials, as in a rig: block b's
participant, targets and spikes use seed `seed + 1000 * b`, so no block repeats another's
trials and the before/after comparison is not a replay of the same noise. A drifted day stays
one day: its drift is drawn once (from `seed`, unless the drift names its own) for every block.
`assist` (computer assist) applies to block 0 only: the calibration block of a day whose
decoder cannot control yet; every block after it is the participant's alone.

Layout of OUT: `block-B/` holds that block's record.nwb, summary.json, trials.csv and
trajectories.png; `block-B/artifact/` (B >= 1) the decoder it ran; `blocks.json` the
metrics block by block.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from benchmarks.closed_loop_session import SessionOptions, run_session
from training.recalibrate import RecalibrationSpec, recalibrate

BLOCK_SEED_STRIDE = 1000
BLOCK_KEYS = ("success_rate", "time_to_target_s", "path_efficiency", "fitts_bps", "n_trials")


def run_blocks(opts: SessionOptions, rounds: int, out: Path, *, method: str = "refit",
               on_block: Callable[[int, dict], None] | None = None, on_bin=None) -> dict:
    """Run `rounds + 1` blocks with a recalibration before each after the first; returns blocks.json."""
    if rounds < 0:
        raise ValueError(f"--recalibrate must be >= 0, got {rounds}")
    out.mkdir(parents=True, exist_ok=True)
    if opts.drift is not None and opts.drift.seed is None:  # one day: every block's drift is block 0's
        opts = replace(opts, drift=replace(opts.drift, seed=opts.seed))
    artifact, blocks = opts.artifact, []
    for b in range(rounds + 1):
        folder = out / f"block-{b}"
        if b > 0:
            prev = out / f"block-{b - 1}"
            artifact = folder / "artifact"
            recal = recalibrate(RecalibrationSpec(record=prev / "record.nwb", parent=blocks[-1]["artifact_path"],
                                                  out=artifact, method=method, seed=opts.seed))
        block_opts = replace(opts, artifact=Path(artifact), seed=opts.seed + BLOCK_SEED_STRIDE * b,
                             assist=opts.assist if b == 0 else 0.0)
        summary = run_session(block_opts, record=folder / "record.nwb", out=folder, on_bin=on_bin)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        row = {"block": b, "artifact_path": str(artifact), "seed": block_opts.seed, "assist": block_opts.assist,
               **{k: summary[k] for k in BLOCK_KEYS}, "latency_us": summary["latency_us"],
               "recalibration": None if b == 0 else {k: recal[k] for k in ("test_r2", "parent_test_r2", "output_gain", "labels")}}
        blocks.append(row)
        if on_block is not None:
            on_block(b, row)
    result = {"method": method, "rounds": rounds, "model": summary["model"], "adapt": opts.adapt,
              "drift": summary["settings"]["drift"], "blocks": blocks}
    (out / "blocks.json").write_text(json.dumps(result, indent=2, default=float))
    return result
