"""End to end: LSL outlet (one process) → `spikestream serve` (another) → ZeroMQ subscriber (here).

Three real processes on loopback, as in a rig. The outlet stamps each bin with
`pylsl.local_clock()` at push; the runtime carries that stamp as the message's `t_src`; this
process reads `local_clock()` on receipt. On one host LSL's clock is CLOCK_MONOTONIC, the
clock the runtime stamps arrival with (`t_arr`, monotonic ns), so each bin's path splits
into: push → runtime arrival (LSL transport), the runtime's own latency (`lat_us`: bin in
hand → message built) and the rest (send → ZeroMQ receive here). serve also records the
session, whose per-stage stamps give the runtime's own work stage by stage.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pylsl
import zmq

from benchmarks import procs
from decoder_runtime.messages import TOPIC, flag_names, unpack

PUSH_TO_RECEIVE = "push → receive"


@dataclass
class E2EResult:
    """Per-bin latencies in ns by measure (bins after the settle period), plus accounting."""

    latency_ns: dict[str, np.ndarray]
    received: int
    expected: int
    lost: int  # seq numbers never received (ZeroMQ drops or bins the runtime never took)
    flagged: dict[str, int] = field(default_factory=dict)  # flag name -> bins
    outlet: dict = field(default_factory=dict)  # the pusher's pacing summary
    settle_bins: int = 0
    record: Path | None = None  # serve's NWB record of the run (stage stamps)


def serve_argv(artifact: Path, stream: str, addr: str, backend: str, device: str, threads: int, max_bins: int,
               record: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return procs.cli("serve", str(artifact), "--lsl-name", stream, "--zmq", addr, "--backend", backend,
                     "--device", device, "--threads", str(threads), "--max-bins", str(max_bins),
                     "--record", str(record), "--wait-subscriber", "120", "--resolve-timeout", "120", *extra)


def run_e2e(artifact: Path, counts: np.ndarray, bin_width: float, work_dir: Path, *, backend: str, device: str,
            threads: int = 1, settle_bins: int = 40, start_timeout: float = 180.0, extra: tuple[str, ...] = (),
            relay: bool = False, tag: str = "") -> E2EResult:
    """Stream `counts` through a real serve process: the first `settle_bins` settle, the rest are measured.

    `extra` are more serve options; `relay` runs the bare LSL → ZeroMQ relay
    (benchmarks.bare_relay, no model, no record) in serve's place: the floor.
    """
    tag = f"{'relay' if relay else backend}-{device}{tag}".replace(":", "")
    counts_file = work_dir / f"e2e_{tag}_counts.npy"
    np.save(counts_file, np.ascontiguousarray(counts, dtype=np.float32))
    stream = f"spikestream-bench-{uuid.uuid4().hex[:8]}"
    addr = f"tcp://127.0.0.1:{procs.free_port()}"
    record = work_dir / f"e2e_{tag}_record.nwb"
    n = len(counts)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
    sub.setsockopt(zmq.RCVHWM, 0)  # never drop here: any loss must be the runtime's, not the bench's
    sub.connect(addr)
    serve_log, outlet_log = work_dir / f"e2e_{tag}_serve.log", work_dir / f"e2e_{tag}_outlet.log"
    argv = ([sys.executable, "-m", "benchmarks.bare_relay", "--name", stream, "--zmq", addr, "--max-bins", str(n)]
            if relay else serve_argv(artifact, stream, addr, backend, device, threads, n, record, extra))
    serve = procs.start(argv, serve_log)
    outlet = procs.start([sys.executable, "-m", "benchmarks.lsl_outlet", "--counts", str(counts_file),
                          "--name", stream, "--bin-width", str(bin_width), "--wait-consumer", str(start_timeout)],
                         outlet_log, capture_stdout=True)
    got: dict[int, tuple] = {}
    try:
        give_up = time.monotonic() + start_timeout + n * bin_width + 30
        quiet_since = None
        while len(got) < n and time.monotonic() < give_up:
            if sub.poll(200):
                _, body = sub.recv_multipart()
                t_recv = pylsl.local_clock()
                msg = unpack(body)
                got[msg["seq"]] = (msg["t_src"], t_recv, msg["lat_us"], msg["t_arr"], msg["flags"])
                quiet_since = None
                continue
            if serve.poll() is not None and serve.returncode != 0:
                raise RuntimeError(f"serve exited with code {serve.returncode}:\n{procs.tail(serve_log)}")
            if outlet.poll() is not None:
                if outlet.returncode != 0:
                    raise RuntimeError(f"the LSL outlet exited with code {outlet.returncode}:\n{procs.tail(outlet_log)}")
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 5:
                    break  # the outlet is done and nothing more has come for 5 s
    finally:
        sub.close(linger=0)
        outlet_out = _finish(outlet)
        if serve.poll() is None:
            try:
                serve.wait(30)  # it stops by itself after --max-bins and closes its record
            except subprocess.TimeoutExpired:
                procs.stop(serve)
    if not got:
        raise RuntimeError(f"no velocity message arrived from serve at {addr}:\n{procs.tail(serve_log)}")
    return _result(got, n, settle_bins, _last_json(outlet_out), record if record.is_file() else None)


def _finish(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """A process's stdout once it has exited (killed if it has not within `timeout`)."""
    try:
        return proc.communicate(timeout=timeout)[0] or ""
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0] or ""


def _last_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}


def _result(got: dict[int, tuple], expected: int, settle: int, outlet: dict, record: Path | None) -> E2EResult:
    seqs = np.array(sorted(s for s in got if s >= settle))
    t_src, t_recv, lat_us, t_arr = np.array([got[s][:4] for s in seqs], dtype=np.float64).T
    arrival = t_arr / 1e9
    lat = {
        PUSH_TO_RECEIVE: (t_recv - t_src) * 1e9,
        "push → runtime arrival": (arrival - t_src) * 1e9,
        "runtime (lat_us)": lat_us * 1e3,
        "runtime send → receive": (t_recv - arrival) * 1e9 - lat_us * 1e3,
    }
    flagged: dict[str, int] = {}
    for s in seqs:
        for name in flag_names(got[s][4]):
            flagged[name] = flagged.get(name, 0) + 1
    # On one host LSL's clock correction is exact to a few µs, so a leg can come out a hair below 0.
    return E2EResult(
        latency_ns={k: np.maximum(np.rint(v), 0).astype(np.int64) for k, v in lat.items()}, received=len(got),
        expected=expected, lost=expected - len(got), flagged=flagged, outlet=outlet, settle_bins=settle,
        record=record,
    )
