"""Where the runtime's time goes, stage by stage, from the stamps its session record keeps.

The engine stamps every bin with time.monotonic_ns() at each stage (decoder_runtime.timing
STAGES) and writes them to the NWB record; decoder_runtime.timing defines every latency
derived from them (the runtime's own work = arrival -> sent minus the model step; the
record is its own stage, after the message is out).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from benchmarks import procs

OWN_WORK = "own work"  # decoder_runtime.timing's names: one definition of each latency
MODEL_STEP = "model step"


def throughput(stamps: np.ndarray, stages: tuple[str, ...]) -> dict:
    """Bins per second the loop sustained: bins over first arrival → last recorded."""
    stamps = np.asarray(stamps, dtype=np.int64)
    first, last = stamps[:, 0], stamps[:, len(stages) - 1]
    span_s = (last[last > 0].max() - first[first > 0].min()) / 1e9
    return {"bins": int(len(stamps)), "seconds": float(span_s), "bins_per_s": float(len(stamps) / span_s)}


def replay_run(artifact: Path, work_dir: Path, *, backend: str, device: str, threads: int, max_bins: int,
               deadline_ms: float, speed: str = "max", timeout_s: float = 600.0, extra: tuple[str, ...] = (),
               tag: str = "") -> dict:
    """Run `spikestream replay ARTIFACT --speed SPEED` (default session) with a record; returns its stamps.

    Publishing to a loopback port with no subscriber and recording to NWB are both on, so
    every stage of the loop does its real work. `deadline_ms` 0 runs the step inline, unguarded;
    otherwise inline under the guard thread, bound by that deadline (decoder_runtime.stepping).
    `speed` "1" replays at real pace instead; `extra` are more replay options (e.g.
    `--no-keep-warm`), `tag` names the run's files apart.
    """
    from decoder_runtime.record import STAGES, read_record

    tag = f"{backend}-{device}-s{speed}-d{deadline_ms:g}{tag}".replace(":", "")
    record, log, summary = (work_dir / f"replay_{tag}.nwb", work_dir / f"replay_{tag}.log",
                            work_dir / f"replay_{tag}.json")
    argv = procs.cli("replay", str(artifact), "--speed", speed, *extra, "--zmq", f"tcp://127.0.0.1:{procs.free_port()}",
                     "--record", str(record), "--backend", backend, "--device", device, "--threads", str(threads),
                     "--max-bins", str(max_bins), "--deadline-ms", f"{deadline_ms:g}", "--summary-json", str(summary))
    proc = procs.start(argv, log)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        raise RuntimeError(f"replay did not finish within {timeout_s:g} s:\n{procs.tail(log)}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"replay exited with code {proc.returncode}:\n{procs.tail(log)}")
    rec = read_record(record)
    return {"stamps": rec["stamps"], "stages": STAGES, "summary": json.loads(summary.read_text())}
