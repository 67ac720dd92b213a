"""The `status` message: who is decoding, how fast, and which channels are unhealthy.

The velocity message carries only what changes every bin. What a person watching a session
also needs (which model and artifact, on which backend and device, from which code, how
many bins so far at what rate, what the source is, and which channels adaptation has found
dead, stuck or noisy) changes slowly, so the runtime publishes it about once per second on
its own topic, `status`, on the same socket, from the engine's between-bins hook: never on
the per-bin path, so a status message costs no bin any latency.

ZeroMQ topic frame `b"status"`, msgpack body, a map:

| key        | type        | meaning                                                            |
| ---------- | ----------- | ------------------------------------------------------------------ |
| `v`        | int         | format version (`VERSION`)                                         |
| `t`        | float       | wall-clock time of the message (time.time(), seconds)              |
| `run`      | str         | an id fresh for every run: a new id means the decoder restarted    |
| `model`    | str         | the artifact's model id                                            |
| `backend`  | str         | backend kind (numba, onnx, torch, ...)                              |
| `device`   | str         | cpu / cuda[:N]                                                     |
| `artifact` | str         | SHA-256 of the artifact's weights file (as listed in its config)    |
| `code`     | str         | the runtime's code version (git describe, or the package version)  |
| `bins`     | int         | bins decoded so far in this run                                    |
| `rate`     | float       | bins per second since the previous status message                  |
| `source`   | map         | the source's own description (kind, stream or session, speed)      |
| `adapt`    | str         | the adaptation chain's name ("none" when off)                      |
| `health`   | map or nil  | nil without channel health; else `n_channels` and the index lists   |
|            |             | `dead`, `stuck`, `noisy` (by detector) and `masked` (all masked)   |
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import msgpack
import numpy as np

from decoder_runtime.adaptation.base import Adapter

VERSION = 1
TOPIC = b"status"


def channel_health(adapter: Adapter) -> dict | None:
    """Index lists of dead / stuck / noisy / masked channels, or None without a health stage."""
    from decoder_runtime.adaptation.channel_health import DEAD, NOISY, STUCK

    health = getattr(adapter, "health", None)
    if health is None:
        return None
    status = health.status
    return {
        "n_channels": int(status.shape[0]),
        "dead": np.flatnonzero(status == DEAD).tolist(),
        "stuck": np.flatnonzero(status == STUCK).tolist(),
        "noisy": np.flatnonzero(status == NOISY).tolist(),
        "masked": np.flatnonzero(adapter.mask).tolist(),
    }


class StatusReporter:
    """Builds and sends a status message at most every `interval_s`, from between bins.

    `tick(n)` is the engine's between-bins hook: it checks the clock and returns at once
    until `interval_s` has passed, so calling it often costs nothing.
    """

    def __init__(self, send: Callable[[bytes], object], *, model: str, backend: str, device: str,
                 artifact_sha256: str, code: str, source: dict, adapter: Adapter,
                 interval_s: float = 1.0) -> None:
        self._send = send
        self.adapter = adapter
        self.interval_s = interval_s
        self._fixed = {"v": VERSION, "run": uuid.uuid4().hex[:12], "model": model, "backend": backend,
                       "device": device, "artifact": artifact_sha256, "code": code, "source": source,
                       "adapt": adapter.name}
        self._packer = msgpack.Packer(use_bin_type=True, default=str)  # e.g. a Path in a source description
        self._last_t = -float("inf")
        self._last_n = 0
        self.sent = 0

    def tick(self, n_bins: int) -> None:
        """Send a status message if `interval_s` has passed since the last one."""
        now = time.monotonic()
        dt = now - self._last_t
        if dt < 0.9 * self.interval_s:  # the engine's 1 s block may come a hair early
            return
        rate = (n_bins - self._last_n) / dt if self.sent else 0.0
        self._last_t, self._last_n = now, n_bins
        self._send(self.build(n_bins, rate))
        self.sent += 1

    def build(self, n_bins: int, rate: float) -> bytes:
        """One status body (msgpack) for `n_bins` decoded so far at `rate` bins/s."""
        return self._packer.pack({**self._fixed, "t": time.time(), "bins": int(n_bins), "rate": float(rate),
                                  "health": channel_health(self.adapter)})


def unpack(body: bytes) -> dict:
    """Decode a status body; raises ValueError naming what is wrong."""
    try:
        msg = msgpack.unpackb(body, raw=False)
    except (msgpack.exceptions.ExtraData, ValueError) as e:
        raise ValueError(f"not a msgpack status message ({e})") from None
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        raise ValueError(f"not a status message of version {VERSION}")
    return msg
