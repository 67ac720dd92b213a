"""The subscriber's side of the velocity stream: receive, check the sequence, keep what came.

`VelocityLog` is what `spikestream listen` shows and saves, and what a test or tool uses to
check a runtime from outside: every message is stamped on arrival (monotonic ns and the LSL
clock, for end-to-end latency against the bin's source time), gaps in `seq` are counted as
missing, and bodies that are not velocity messages of this version are counted and skipped.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import zmq

from decoder_runtime.messages import MessageError, unpack
from decoder_runtime.publish import connect_subscriber

COLUMNS = ("seq", "t_src", "vx", "vy", "lat_us", "flags", "t_arr", "recv_ns", "recv_lsl")
_INT = {"seq": np.int64, "flags": np.int64, "t_arr": np.int64, "recv_ns": np.int64}


class VelocityLog:
    """A SUB socket on a runtime's velocities and the columns of everything received."""

    def __init__(self, addr: str, *, server_key: Path | None = None, client_cert: Path | None = None) -> None:
        import pylsl

        self.addr = addr
        self._clock = pylsl.local_clock
        self.sock = connect_subscriber(addr, server_key=server_key, client_cert=client_cert)
        self.cols: dict[str, list] = {k: [] for k in COLUMNS}
        self.missing = self.bad = 0
        self._last_seq: int | None = None
        self._recent: list[int] = []  # receive times of the last second, for the rate

    def __len__(self) -> int:
        return len(self.cols["seq"])

    def poll(self, timeout_ms: int, limit: int | None = None) -> int:
        """Wait up to `timeout_ms` for messages, take every one queued (up to `limit` in all); how many."""
        got = 0
        if not self.sock.poll(timeout_ms):
            return 0
        while limit is None or len(self) < limit:
            try:
                _, body = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            recv_ns, recv_lsl = time.monotonic_ns(), self._clock()
            try:
                msg = unpack(body)
            except MessageError:
                self.bad += 1
                continue
            seq = msg["seq"]
            if self._last_seq is not None and seq > self._last_seq + 1:
                self.missing += seq - self._last_seq - 1
            self._last_seq = seq
            for key, value in zip(COLUMNS, (seq, msg["t_src"], msg["vel"][0], msg["vel"][1], msg["lat_us"],
                                            msg["flags"], msg["t_arr"], recv_ns, recv_lsl)):
                self.cols[key].append(value)
            self._recent.append(recv_ns)
            got += 1
        return got

    def rate(self) -> float:
        """Messages received in the last second."""
        cutoff = time.monotonic_ns() - 1_000_000_000
        self._recent = [t for t in self._recent if t > cutoff]
        return float(len(self._recent))

    def save(self, path: Path) -> None:
        np.savez(path, **{k: np.asarray(v, dtype=_INT.get(k, np.float64)) for k, v in self.cols.items()})

    def close(self) -> None:
        self.sock.close()
