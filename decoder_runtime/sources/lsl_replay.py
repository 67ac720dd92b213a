"""A recorded session played through a real LSL outlet, in another process, and read back.

`play` is the outlet's loop (`spikestream stream-nwb`): each bin pushed on its schedule and
stamped with its scheduled time, as an acquisition system stamps its bins. `LSLReplaySource`
is `replay --via-lsl`: it starts `spikestream stream-nwb` in a child process and decodes from
an LSL inlet here, so a replay exercises exactly the path a rig's stream takes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np

from decoder_runtime.sources.lsl import CountsOutlet, LSLSource
from replay.pacing import Pacer, pacing_stats, parse_speed


def play(counts: np.ndarray, outlet: CountsOutlet, pacer: Pacer, stop: threading.Event, *, loop: bool = False) -> dict:
    """Push counts[k] at its scheduled time until done (or forever with `loop`); pacing statistics."""
    import pylsl

    n = counts.shape[0]
    lateness = np.zeros(n, dtype=np.int64)
    k = 0
    t0_ns = pacer.start()
    lsl_t0 = pylsl.local_clock()
    while not stop.is_set() and (loop or k < n):
        late = pacer.wait(k)
        # stamped with the scheduled time, whatever this process's own jitter ("max": push time)
        outlet.push(counts[k % n], lsl_t0 + (pacer.deadline_ns(k) - t0_ns) * 1e-9 if pacer.paced else 0.0)
        lateness[k % n] = late
        k += 1
    return {"pushed": k, **(pacing_stats(lateness[:min(k, n)]) if pacer.paced else {})}


class LSLReplaySource:
    """`stream-nwb` in a child process -> LSL -> an inlet here; otherwise an `LSLSource`."""

    def __init__(self, nwb: str | None, n_bins: int, n_channels: int, bin_width: float, speed: str,
                 channel_ids: list | None = None) -> None:
        name = f"spikestream-replay-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stats = Path(tempfile.gettempdir()) / f"{name}-pacing.json"
        cmd = [sys.executable, "-m", "spikestream", "stream-nwb", *([str(nwb)] if nwb else []),
               "--lsl-name", name, "--source-id", name, "--speed", speed, "--bin-width", str(bin_width),
               "--max-bins", str(n_bins), "--wait-consumer", "60", "--summary-json", str(self._stats)]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        buflen = int(n_bins * bin_width) + 60 if parse_speed(speed) is None else 360
        try:
            self._inlet = LSLSource(n_channels=n_channels, period=bin_width, name=name, source_id=name,
                                    resolve_timeout_s=60, max_buflen_s=buflen, channel_ids=channel_ids)
        except BaseException:
            self._proc.terminate()
            raise
        self.n_bins = n_bins
        self.n_channels, self.period, self.events = n_channels, bin_width, self._inlet.events
        self._pulled = 0
        self.pacing_stats: dict = {}

    @property
    def finished(self) -> bool:
        return self._pulled >= self.n_bins

    def start(self) -> None:
        self._inlet.start()

    def pull(self, timeout_s: float):
        got = self._inlet.pull(timeout_s)
        if got is not None:
            self._pulled += 1
        return got

    def pacing(self) -> dict:
        """The outlet process's release-error statistics: written when it exits, so once every bin
        has been pulled this waits for it (it is done pushing); {} before that."""
        if self.finished:
            self._end_child()
        return self.pacing_stats

    def _end_child(self) -> None:
        """Wait for the outlet process (terminate it after 10 s) and read its statistics."""
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            self._proc.wait(5)
        if self._stats.is_file():
            self.pacing_stats = json.loads(self._stats.read_text())
            self._stats.unlink()

    def close(self) -> None:
        self._inlet.close()
        self._end_child()

    def describe(self) -> dict:
        return {**self._inlet.describe(), "via": "stream-nwb child process"}
