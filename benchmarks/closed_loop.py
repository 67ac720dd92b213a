"""Closed-loop sessions through the real runtime: fast (lock-step, in process) and live.

The world (cursor, task, participant, encoder: replay.closed_loop) makes one bin at a time
from the velocity decoded for the bin before. Two ways to put the runtime in between:

- fast (`run_fast`): the runtime's own `Engine` in this process, fed by `LockstepSource`,
  which makes the next bin only once the previous bin's velocity is back. The velocity comes
  back through the engine's real output path: the engine "publishes" each message into a
  `VelocityTap` (the Publisher's `send(bytes)` interface), which unpacks the msgpack body
  with the subscribers' own `unpack`. As fast as the CPU allows; with the model stepped
  inline (no deadline thread, the default here) the same seed gives the same bins and the same
  metrics, run to run.
- live (`run_live`): real time over the real path. Each bin is pushed to a pylsl outlet at
  1 / bin width (40 Hz), `spikestream serve` (its own process: started here, or one already
  running) decodes it, and the velocity is read back from ZeroMQ. A velocity not back before
  the next bin is due leaves the cursor where it was, as in a rig.

Both publish the task's state on its own ZeroMQ topic `task` (msgpack map, see
`replay.cursor_task.CursorTask.state_message`), fast mode only when given an address.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

from decoder_runtime.assemble import open_runtime
from decoder_runtime.config import RuntimeConfig
from decoder_runtime.messages import unpack
from decoder_runtime.publish import Publisher
from replay.closed_loop import ClosedLoopWorld, WorldSettings

TASK_TOPIC = b"task"
DEFAULT_TASK_ADDR = "tcp://127.0.0.1:5556"
DEFAULT_POPULATION_SEED = 0  # the simulator's default session's population


def training_population_seed(config: dict) -> int | None:
    """The population seed of the simulated session an artifact was trained on, if it was."""
    prov = config.get("provenance") or {}
    found = re.search(r"population_seed\W+(\d+)", json.dumps(prov))
    if found:
        return int(found.group(1))
    if prov.get("kind") == "simulated":  # the default session: population seed = its seed
        return int((prov.get("settings") or {}).get("seed", prov.get("sim_seed", 0)))
    return None


class TaskPublisher:
    """The task's state on its own topic (a Publisher with topic `task`)."""

    def __init__(self, addr: str) -> None:
        self._pub = Publisher(addr, topic=TASK_TOPIC)
        self._packer = msgpack.Packer(use_bin_type=True)

    def send(self, state: dict) -> None:
        self._pub.send(self._packer.pack(state))

    def close(self) -> None:
        self._pub.close()


class VelocityTap:
    """The engine's publisher, in process: keeps each velocity message, unpacked as a subscriber would.

    `forward`, if given, also publishes every message on a real socket.
    """

    def __init__(self, forward: Publisher | None = None) -> None:
        self.forward = forward
        self.last: dict | None = None
        self.lat_us: list[float] = []
        self.flags: list[int] = []
        self.drops = 0

    def send(self, body: bytes) -> bool:
        self.last = unpack(body)
        self.lat_us.append(float(self.last["lat_us"]))
        self.flags.append(int(self.last["flags"]))
        if self.forward is not None:
            self.forward.send(body)
        return True

    def close(self) -> None:
        if self.forward is not None:
            self.forward.close()


class LockstepSource:
    """A Source (decoder_runtime.sources) whose next bin is made once the last velocity is back."""

    def __init__(self, world: ClosedLoopWorld, tap: VelocityTap, *, task_pub: TaskPublisher | None = None,
                 on_bin: Callable[[ClosedLoopWorld], None] | None = None) -> None:
        self.world = world
        self.tap = tap
        self.task_pub = task_pub
        self.on_bin = on_bin
        self.n_channels = world.settings.n_units
        self.period = world.settings.bin_width
        self.finished = False
        self.events: deque[str] = deque()

    def start(self) -> None:
        pass

    def pull(self, timeout_s: float):
        if self.finished:
            return None
        k = self.world.k
        velocity = None
        if k > 0:
            msg = self.tap.last
            if msg is None or msg["seq"] != k - 1:
                raise RuntimeError(f"lock-step broken: bin {k - 1}'s velocity did not come back")
            velocity = np.asarray(msg["vel"], dtype=np.float64)
        counts = self.world.next_bin(velocity)
        if self.task_pub is not None:
            self.task_pub.send(self.world.state_message())
        if self.on_bin is not None:
            self.on_bin(self.world)
        if counts is None:
            self.finished = True
            return None
        return counts, (k + 1) * self.period, 0.0, 0

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"kind": "closed-loop lock-step", "bin_width": self.period, "n_channels": self.n_channels}


@dataclass
class ClosedLoopResult:
    """One closed-loop run: the world (trials, per-bin log), metrics and the runtime's latency."""

    world: ClosedLoopWorld
    metrics: dict
    latency_us: dict
    mode: str
    settings: dict = field(default_factory=dict)


def _latency(lat_us: np.ndarray) -> dict:
    lat = np.asarray(lat_us, dtype=np.float64)
    lat = lat[np.isfinite(lat)]
    if lat.size == 0:
        return {"n": 0}
    p50, p99 = np.percentile(lat, (50, 99))
    return {"p50": float(p50), "p99": float(p99), "max": float(lat.max()), "n": int(lat.size)}


def run_fast(world_settings: WorldSettings, config: RuntimeConfig, *, task_addr: str | None = None,
             on_bin: Callable[[ClosedLoopWorld], None] | None = None) -> ClosedLoopResult:
    """The closed loop with the runtime in process, lock-step, as fast as the CPU allows.

    The runtime is built by the one assembler from `config` (its source replaced by the
    lock-step source); velocities come back through `VelocityTap`, one more of its outputs."""
    world = ClosedLoopWorld(world_settings)
    tap = VelocityTap(None)
    task_pub = TaskPublisher(task_addr) if task_addr else None
    try:
        source = LockstepSource(world, tap, task_pub=task_pub, on_bin=on_bin)
        with open_runtime(config, command="closed-loop", source=source, extra_outputs=[tap]) as rt:
            result = rt.run()
            rt.summary = result.summary()
    finally:
        tap.close()
        if task_pub is not None:
            task_pub.close()
    return ClosedLoopResult(world=world, metrics=world.metrics(), mode="fast",
                            latency_us={**_latency(tap.lat_us), "deadline_misses": rt.summary["deadline_misses"]},
                            settings={"backend": rt.backend_kind, "adapt": rt.settings["adapt"]})


def run_ideal(world_settings: WorldSettings) -> ClosedLoopResult:
    """The reference loop without a runtime: the ideal decoder of the encoder, whose velocity for
    bin k is the intention issued `plan_lead_s` earlier (what the neurons carry). What the
    participant model achieves when decoding is perfect; every real decoder is measured
    against it."""
    world = ClosedLoopWorld(world_settings)
    velocity = None
    while world.next_bin(velocity) is not None:
        velocity = world.ideal_velocity()
    return ClosedLoopResult(world=world, metrics=world.metrics(), latency_us={}, mode="ideal")


@dataclass
class LiveTarget:
    """Where the live loop finds the runtime: its LSL stream name and its ZeroMQ address.

    `serve_args` (artifact, backend, adapt, ...) start a `serve` process of our own; None means
    one is already running, listening for `lsl_name`.
    """

    lsl_name: str
    zmq_addr: str
    serve_args: list[str] | None = None


def _start_serve(target: LiveTarget, summary_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "spikestream", "serve", *target.serve_args, "--lsl-name", target.lsl_name,
           "--source-id", target.lsl_name, "--zmq", target.zmq_addr, "--wait-subscriber", "180",
           "--resolve-timeout", "180", "--summary-json", str(summary_path)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop_serve(proc: subprocess.Popen) -> str:
    """SIGINT (the loop ends cleanly and writes its summary), then wait; returns its stderr tail."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return (err or "")[-2000:]


def _velocity_until(sock, k: int, until_ns: int, got: dict[int, dict]) -> None:
    """Receive velocity messages into `got` until bin k's is in or `until_ns` passes."""
    import zmq

    while k not in got:
        remaining_ms = (until_ns - time.monotonic_ns()) / 1e6
        if remaining_ms <= 0 or not sock.poll(max(int(remaining_ms), 0) or 1):
            if time.monotonic_ns() >= until_ns:
                return
            continue
        while True:
            try:
                _, body = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = unpack(body)
            got[msg["seq"]] = msg


def run_live(world_settings: WorldSettings, target: LiveTarget, *, task_addr: str | None = DEFAULT_TASK_ADDR,
             connect_timeout_s: float = 180.0,
             on_bin: Callable[[ClosedLoopWorld], None] | None = None) -> ClosedLoopResult:
    """The closed loop in real time: pylsl outlet at 1 / bin width -> `serve` -> ZeroMQ -> cursor."""
    import pylsl

    from decoder_runtime.publish import connect_subscriber
    from decoder_runtime.sources.lsl import CountsOutlet
    from replay.pacing import Pacer

    world = ClosedLoopWorld(world_settings)
    bw = world_settings.bin_width
    outlet = CountsOutlet(target.lsl_name, world_settings.n_units, bw, source_id=target.lsl_name)
    sock = connect_subscriber(target.zmq_addr)
    task_pub = TaskPublisher(task_addr) if task_addr else None
    summary_path = Path(tempfile.gettempdir()) / f"spikestream-cl-{os.getpid()}-serve.json"
    proc = _start_serve(target, summary_path) if target.serve_args is not None else None
    got: dict[int, dict] = {}
    serve_err = ""
    try:
        if not outlet.wait_for_consumers(connect_timeout_s):
            raise RuntimeError(f"no runtime connected to LSL stream {target.lsl_name!r} within {connect_timeout_s:g} s"
                               + (f": {proc.stderr.read()[-500:] if proc.poll() is not None else ''}" if proc else ""))
        time.sleep(0.5)  # the runtime's inlet opens its stream; our subscription is already in
        pacer = Pacer(bw, 1.0)
        t0_ns = pacer.start(time.monotonic_ns() + 50_000_000)
        lsl_t0 = pylsl.local_clock() + 0.05
        velocity = None
        k = 0
        while True:
            pacer.wait(k)
            counts = world.next_bin(velocity)
            if task_pub is not None:
                task_pub.send(world.state_message())
            if on_bin is not None:
                on_bin(world)
            if counts is None:
                break
            outlet.push(counts, lsl_t0 + (pacer.deadline_ns(k) - t0_ns) * 1e-9)
            _velocity_until(sock, k, pacer.deadline_ns(k + 1) - 1_000_000, got)
            msg = got.get(k)
            velocity = None if msg is None else np.asarray(msg["vel"], dtype=np.float64)
            k += 1
    finally:
        outlet.close()
        if proc is not None:
            serve_err = _stop_serve(proc)
        sock.close()
        if task_pub is not None:
            task_pub.close()
    lat = np.array([got[j]["lat_us"] for j in range(world.k) if j in got])
    serve_summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    summary_path.unlink(missing_ok=True)
    held = int(np.count_nonzero(~world.arrays()["answered"][:-1]))  # the last bin's answer is never needed
    return ClosedLoopResult(world=world, metrics=world.metrics(), mode="live",
                            latency_us={**_latency(lat), "unanswered_bins": held, "never_answered": int(world.k - len(lat)),
                                        "serve_summary": serve_summary, "serve_stderr_tail": serve_err[-300:]})
