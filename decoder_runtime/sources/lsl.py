"""A live Lab Streaming Layer stream of binned spike counts, one LSL sample per bin.

Construction resolves the stream by name / type / source_id (any combination) within a
timeout and checks it against the artifact: channel count equal, nominal rate equal to
1 / bin_width (a clear SourceError otherwise). `start()`, called by the engine right before
its first pull, opens the connection and takes the first clock-offset estimate: data flows
from the moment the engine is ready, and nothing slow is left for bin one.

Pulling blocks inside liblsl (`lsl_pull_sample_f`, GIL released) until a sample arrives or
the timeout passes: no busy-waiting. The sample lands directly in a preallocated float32
buffer. Timestamps are corrected to this machine's LSL clock by liblsl's clock sync
(`proc_clocksync`, the same as adding `time_correction()`), so `lag_s` = local_clock() -
t_src is the transport delay, on one host or across hosts.

Drops: the inlet is created with `recover=True`, so when the outlet disappears liblsl keeps
re-resolving it by its source_id and reconnects when it returns (observed: ~1-2 s after a
restarted outlet appears). Meanwhile pulls just time out: the process stays alive, an event
is logged after `silence_s`, and the first bin after the return carries GAP (its timestamp
jumped; see decoder_runtime.validate). A stream without a source_id cannot be recovered by
liblsl (it raises LostError); then this source re-resolves it by the same query itself.
"""
from __future__ import annotations

import ctypes
import time
from collections import deque

import numpy as np
import pylsl
from pylsl.lib import lib
from pylsl.util import handle_error

from decoder_runtime.sources import SourceError


def query(name: str | None = None, type: str | None = None, source_id: str | None = None) -> str:
    """The LSL predicate (XPath) selecting a stream by any of name, type and source_id."""
    parts = [f"{k}='{v}'" for k, v in (("name", name), ("type", type), ("source_id", source_id)) if v]
    if not parts:
        raise SourceError("give at least one of an LSL stream name, type or source id to look for")
    for v in (name, type, source_id):
        if v and "'" in v:
            raise SourceError(f"LSL stream selectors cannot contain a quote: {v!r}")
    return " and ".join(parts)


class LSLSource:
    """Bins from an LSL inlet, with clock-corrected timestamps and survival across drops."""

    def __init__(self, *, n_channels: int, period: float, name: str | None = None, type: str | None = None,
                 source_id: str | None = None, resolve_timeout_s: float = 10.0, max_buflen_s: int = 360,
                 silence_s: float = 1.0) -> None:
        self.n_channels = int(n_channels)
        self.period = float(period)
        self.finished = False  # a live stream never finishes; the engine stops on a signal or --max-bins
        self.events: deque[str] = deque(maxlen=1000)
        self._query = query(name, type, source_id)
        self._max_buflen = int(max_buflen_s)
        self._silence_ns = int(silence_s * 1e9)
        self._row = np.zeros(self.n_channels, dtype=np.float32)
        self._cbuf = (ctypes.c_float * self.n_channels).from_buffer(self._row)
        self._err = ctypes.c_int()
        self._last_ns = 0
        self._silent = False
        self._inlet: pylsl.StreamInlet | None = None
        info = self._resolve(resolve_timeout_s)
        if info is None:
            raise SourceError(f"no LSL stream matching {self._query} found within {resolve_timeout_s:g} s "
                              "(is the outlet running, on this network, with these properties?)")
        self._open(info, resolve_timeout_s)

    def _resolve(self, timeout_s: float) -> pylsl.StreamInfo | None:
        found = pylsl.resolve_bypred(self._query, 1, timeout_s)
        return found[0] if found else None

    def _check(self, info: pylsl.StreamInfo) -> None:
        """Refuse a stream whose shape or rate does not fit the artifact."""
        where = f"LSL stream {info.name()!r} (type {info.type()!r}, source_id {info.source_id()!r})"
        if info.channel_count() != self.n_channels:
            raise SourceError(f"{where} has {info.channel_count()} channels; the artifact decodes {self.n_channels}")
        rate, expected = info.nominal_srate(), 1.0 / self.period
        if abs(rate - expected) > 1e-6 * expected:
            raise SourceError(f"{where} has nominal rate {rate:g} Hz; the artifact's {self.period * 1e3:g} ms "
                              f"bins need {expected:g} Hz")
        if info.channel_format() == pylsl.cf_string:
            raise SourceError(f"{where} carries strings; spike counts must be a numeric channel format")

    def _open(self, info: pylsl.StreamInfo, timeout_s: float) -> None:
        """Check the stream and make its inlet; the connection itself is opened by `start`."""
        self._check(info)
        self.info = {"name": info.name(), "type": info.type(), "source_id": info.source_id(),
                     "hostname": info.hostname(), "uid": info.uid(), "channels": info.channel_count(),
                     "nominal_rate": info.nominal_srate()}
        self._inlet = pylsl.StreamInlet(info, max_buflen=self._max_buflen, max_chunklen=1, recover=True,
                                        processing_flags=pylsl.proc_clocksync)
        self._obj = self._inlet.obj
        self._timeout_s = timeout_s

    def start(self) -> None:
        """Get the first clock-offset estimate (~0.6 s; it needs no data connection), then
        connect the data feed, so bins start flowing only once the engine is ready for them."""
        try:
            self._inlet.time_correction(self._timeout_s)
            self._inlet.open_stream(self._timeout_s)
        except (pylsl.TimeoutError, pylsl.LostError) as e:
            raise SourceError(f"LSL stream {self.info['name']!r} found but could not be opened ({e})") from None
        self._last_ns = time.monotonic_ns()

    def pull(self, timeout_s: float) -> tuple[np.ndarray, float, float, int] | None:
        if self._inlet is None:
            return self._reopen(timeout_s)
        ts = lib.lsl_pull_sample_f(self._obj, self._cbuf, self.n_channels, ctypes.c_double(timeout_s),
                                   ctypes.byref(self._err))
        if self._err.value:
            return self._error()
        now = time.monotonic_ns()
        if ts == 0.0:  # nothing within the timeout
            if not self._silent and now - self._last_ns > self._silence_ns:
                self._silent = True
                self.events.append(f"LSL stream {self.info['name']!r} silent for "
                                   f"{(now - self._last_ns) / 1e9:.1f} s; waiting for it to return")
            return None
        if self._silent:
            self._silent = False
            self.events.append(f"LSL stream {self.info['name']!r} returned after {(now - self._last_ns) / 1e9:.1f} s")
        self._last_ns = now
        return self._row, ts, pylsl.local_clock() - ts, 0

    def _error(self) -> None:
        """A lost, unrecoverable inlet: drop it and re-resolve on the next pulls."""
        try:
            handle_error(self._err)
        except pylsl.LostError:
            self.events.append(f"LSL stream {self.info['name']!r} lost and not recoverable by liblsl "
                               "(no source_id?); re-resolving it")
            self._inlet = None
            self._err.value = 0
            return None
        raise SourceError(f"LSL pull failed with error code {self._err.value}")

    def _reopen(self, timeout_s: float) -> None:
        info = self._resolve(timeout_s)
        if info is not None:
            self._open(info, timeout_s)
            self.start()
            self.events.append(f"LSL stream {self.info['name']!r} re-opened")
        return None

    def close(self) -> None:
        if self._inlet is not None:
            self._inlet.close_stream()
            self._inlet = None

    def describe(self) -> dict:
        return {"kind": "lsl", "query": self._query, **self.info}


class CountsOutlet:
    """The other end: an LSL outlet of float32 count bins at the artifact's nominal rate.

    Used by `spikestream stream-nwb` (a rig without a rig) and by tests. Pushes go straight
    from a preallocated float32 buffer to liblsl (`lsl_push_sample_ftp`), stamped with the
    LSL clock at push time unless a timestamp is given, so a subscriber can measure
    push -> receive latency against t_src.
    """

    def __init__(self, name: str, n_channels: int, period: float, *, type: str = "SpikeCounts",
                 source_id: str = "", max_buffered_s: int = 360, channel_labels: list[str] | None = None) -> None:
        info = pylsl.StreamInfo(name, type, n_channels, 1.0 / period, pylsl.cf_float32, source_id)
        if channel_labels is not None:
            channels = info.desc().append_child("channels")
            for label in channel_labels:
                channels.append_child("channel").append_child_value("label", label)
        self.n_channels = n_channels
        self.outlet = pylsl.StreamOutlet(info, chunk_size=1, max_buffered=max_buffered_s)
        self._obj = self.outlet.obj
        self._row = np.zeros(n_channels, dtype=np.float32)
        self._cbuf = (ctypes.c_float * n_channels).from_buffer(self._row)
        self._pushthrough = ctypes.c_int(1)

    def wait_for_consumers(self, timeout_s: float) -> bool:
        return self.outlet.wait_for_consumers(timeout_s)

    def have_consumers(self) -> bool:
        return self.outlet.have_consumers()

    def push(self, counts: np.ndarray, timestamp: float = 0.0) -> None:
        """Send one bin (float32[C]); timestamp 0.0 means "now" on the LSL clock."""
        np.copyto(self._row, counts, casting="unsafe")
        handle_error(lib.lsl_push_sample_ftp(self._obj, self._cbuf, ctypes.c_double(timestamp), self._pushthrough))

    def close(self) -> None:
        self.outlet = None
        self._obj = None
