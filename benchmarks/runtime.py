"""Where the runtime's time goes, stage by stage, from the stamps its session record keeps.

The engine stamps every bin with time.monotonic_ns() at each stage (decoder_runtime.record
STAGES: arrival, validated, adapted, step_begin, step_end, stepped, sent, recorded) and
writes them to the NWB record. Differencing consecutive stamps gives each stage's cost;
the runtime's own work is everything from arrival to recorded except the model step
itself (step_begin → step_end), i.e. validate, adapt, hand-off, publish and record.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from benchmarks import procs

OWN_WORK = "runtime (excl. step)"
MODEL_STEP = "model step"
# The interval ending at each stage, named by the work done in it.
STAGE_WORK = {
    "validated": "validate",
    "adapted": "adapt",
    "step_begin": "hand-off to step",
    "step_end": MODEL_STEP,
    "stepped": "hand-back from step",
    "sent": "publish",
    "recorded": "record",
}


def stage_latencies(stamps: np.ndarray, stages: tuple[str, ...]) -> dict[str, np.ndarray]:
    """ns per bin for each stage interval, plus the runtime's own work and the whole bin.

    A stamp of 0 means that stage did not happen for that bin (e.g. no model step for a
    dropped bin); such bins are left out of that interval, and count a zero-length step in
    the runtime's own work.
    """
    stamps = np.asarray(stamps, dtype=np.int64)
    if stamps.ndim != 2 or stamps.shape[1] != len(stages):
        raise ValueError(f"stamps must be [T, {len(stages)}] for stages {stages}, got {stamps.shape}")
    col = {name: stamps[:, i] for i, name in enumerate(stages)}
    out: dict[str, np.ndarray] = {}
    for a, b in zip(stages, stages[1:]):
        ok = (col[a] > 0) & (col[b] > 0)
        out[STAGE_WORK.get(b, f"{a} → {b}")] = col[b][ok] - col[a][ok]
    first, last = col[stages[0]], col[stages[-1]]
    whole = (first > 0) & (last > 0)
    step = np.where((col["step_begin"] > 0) & (col["step_end"] > 0), col["step_end"] - col["step_begin"], 0)
    out["whole bin (arrival → recorded)"] = (last - first)[whole]
    out[OWN_WORK] = (last - first - step)[whole]
    return out


def throughput(stamps: np.ndarray, stages: tuple[str, ...]) -> dict:
    """Bins per second the loop sustained: bins over first arrival → last recorded."""
    stamps = np.asarray(stamps, dtype=np.int64)
    first, last = stamps[:, 0], stamps[:, len(stages) - 1]
    span_s = (last[last > 0].max() - first[first > 0].min()) / 1e9
    return {"bins": int(len(stamps)), "seconds": float(span_s), "bins_per_s": float(len(stamps) / span_s)}


def replay_max(artifact: Path, work_dir: Path, *, backend: str, device: str, threads: int, max_bins: int,
               deadline_ms: float, timeout_s: float = 600.0, speed: str = "max", extra: tuple[str, ...] = (),
               tag: str = "") -> dict:
    """Run `spikestream replay ARTIFACT --speed max` (default session) with a record; returns its stamps.

    Publishing to a loopback port with no subscriber and recording to NWB are both on, so
    every stage of the loop does its real work. `deadline_ms` 0 runs the step inline (no
    worker-thread hand-off), otherwise on the engine's worker thread under that bound.
    `speed` "1" replays at real pace instead; `extra` are more replay options (e.g.
    `--no-keep-warm`), `tag` names the run's files apart.
    """
    from decoder_runtime.record import STAGES, read_record

    tag = f"{backend}-{device}-d{deadline_ms:g}-s{speed}{tag}".replace(":", "")
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
