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
is logged after `silence_s`, and the first bin after the return carries GAP (silence followed
by a timestamp jump). liblsl cannot recover a stream without a source_id (the pull raises
LostError), nor one that came back under a new source_id (a restarted acquisition program):
so after `reresolve_s` of silence, or on LostError, this source re-resolves the stream itself
by the query it was given (name, type, and source_id / hostname if they were given),
reconnects to what it finds, says which stream that is (source_id, host, uid), and flags the
first bin from it GAP (a stream back under the same source_id is left to liblsl's recovery). Several streams matching the query: the newest is taken and the event
says which, and that the choice was ambiguous.

Channel identity: given the artifact's `channel_ids`, the stream's channel labels (in its
description, as `stream-nwb` writes them) are matched to them by name (decoder_runtime.channels):
reordered if the same set, refused with the differences if not, matched by position (and said
so) when the stream has no labels.
"""
from __future__ import annotations

import ctypes
import math
import time
from collections import deque

import numpy as np
import pylsl
from pylsl.lib import lib
from pylsl.util import LostError, TimeoutError, handle_error

from decoder_runtime.channels import match_channels
from decoder_runtime.messages import Flag
from decoder_runtime.sources import SourceError

_GAP = int(Flag.GAP)


def query(name: str | None = None, type: str | None = None, source_id: str | None = None,
          hostname: str | None = None) -> str:
    """The LSL predicate (XPath) selecting a stream by any of name, type, source_id and hostname."""
    parts = [f"{k}='{v}'" for k, v in (("name", name), ("type", type), ("source_id", source_id),
                                       ("hostname", hostname)) if v]
    if not parts:
        raise SourceError("give at least one of an LSL stream name, type or source id to look for")
    for v in (name, type, source_id, hostname):
        if v and "'" in v:
            raise SourceError(f"LSL stream selectors cannot contain a quote: {v!r}")
    return " and ".join(parts)


def _describe(info: pylsl.StreamInfo) -> str:
    return f"source_id {info.source_id()!r} on host {info.hostname()!r} (uid {info.uid()})"


class LSLSource:
    """Bins from an LSL inlet, with clock-corrected timestamps and survival across drops."""

    def __init__(self, *, n_channels: int, period: float, name: str | None = None, type: str | None = None,
                 source_id: str | None = None, hostname: str | None = None, resolve_timeout_s: float = 10.0,
                 max_buflen_s: int = 360, silence_s: float = 1.0, reresolve_s: float = 2.0,
                 channel_ids: list | None = None, ambiguity_wait_s: float = 0.5) -> None:
        self.n_channels = int(n_channels)
        self.period = float(period)
        self.finished = False  # a live stream never finishes; the engine stops on a signal or --max-bins
        self.events: deque[str] = deque(maxlen=1000)
        self.channel_note = ""
        self._query = query(name, type, source_id, hostname)
        self._max_buflen = int(max_buflen_s)
        self._silence_ns = int(silence_s * 1e9)
        self._reresolve_ns = int(reresolve_s * 1e9)
        self._ambiguity_wait_s = ambiguity_wait_s
        self._channel_ids = channel_ids
        self._row = np.zeros(self.n_channels, dtype=np.float32)
        self._cbuf = (ctypes.c_float * self.n_channels).from_buffer(self._row)
        self._ordered = np.zeros(self.n_channels, dtype=np.float32)
        self._order: np.ndarray | None = None
        self._err = ctypes.c_int()
        self._last_ns = self._tried_ns = 0
        self._last_ts = math.nan
        self._silent = False
        self._gap_next = False
        self._inlet: pylsl.StreamInlet | None = None
        self._timeout_s = resolve_timeout_s
        infos = self._resolve(resolve_timeout_s)
        if not infos:
            raise SourceError(f"no LSL stream matching {self._query} found within {resolve_timeout_s:g} s "
                              "(is the outlet running, on this network, with these properties?)")
        self._open(self._pick(infos))

    def _resolve(self, timeout_s: float) -> list[pylsl.StreamInfo]:
        """Every stream matching the query: the first within `timeout_s`, then any others that
        answer within `ambiguity_wait_s` (so two outlets with one name are noticed)."""
        found = pylsl.resolve_bypred(self._query, 1, timeout_s)
        if found and self._ambiguity_wait_s > 0:
            found += pylsl.resolve_bypred(self._query, len(found) + 1, self._ambiguity_wait_s)
        return list({i.uid(): i for i in found}.values())

    def _pick(self, infos: list[pylsl.StreamInfo]) -> pylsl.StreamInfo:
        """The newest matching stream; when there are several, say which and that it is ambiguous."""
        infos = sorted(infos, key=lambda i: i.created_at(), reverse=True)
        if len(infos) > 1:
            self.events.append(
                f"ambiguous: {len(infos)} LSL streams match {self._query}; decoding the newest, {_describe(infos[0])}; "
                f"also found: {'; '.join(_describe(i) for i in infos[1:])} (give a source id or hostname to choose)")
        return infos[0]

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

    def _open(self, info: pylsl.StreamInfo) -> None:
        """Check the stream, make its inlet and match its channels; `start` opens the data feed."""
        self._check(info)
        inlet = pylsl.StreamInlet(info, max_buflen=self._max_buflen, max_chunklen=1, recover=True,
                                  processing_flags=pylsl.proc_clocksync)
        if self._channel_ids is not None:
            try:
                labels = inlet.info(self._timeout_s).get_channel_labels()
            except (TimeoutError, LostError) as e:
                raise SourceError(f"LSL stream {info.name()!r}: could not read its description ({e})") from None
            self._order, self.channel_note = match_channels(self._channel_ids, labels, f"LSL stream {info.name()!r}")
            self.events.append(self.channel_note)
        self._inlet = inlet
        self._obj = inlet.obj
        self.info = {"name": info.name(), "type": info.type(), "source_id": info.source_id(),
                     "hostname": info.hostname(), "uid": info.uid(), "channels": info.channel_count(),
                     "nominal_rate": info.nominal_srate(), "channel_match": self.channel_note}

    def start(self, data_first: bool = False) -> None:
        """Get the first clock-offset estimate (~0.6 s; it needs no data connection), then
        connect the data feed, so bins start flowing only once the engine is ready for them.
        On a reconnect mid-run (`data_first`) the feed is connected first: the stream is already
        flowing, and what it sends during the clock estimate must not be lost."""
        try:
            if data_first:
                self._inlet.open_stream(self._timeout_s)
            self._inlet.time_correction(self._timeout_s)
            if not data_first:
                self._inlet.open_stream(self._timeout_s)
        except (TimeoutError, LostError) as e:
            raise SourceError(f"LSL stream {self.info['name']!r} found but could not be opened ({e})") from None
        self._last_ns = time.monotonic_ns()

    def pull(self, timeout_s: float) -> tuple[np.ndarray, float, float, int] | None:
        if self._inlet is None:
            return self._reconnect()
        ts = lib.lsl_pull_sample_f(self._obj, self._cbuf, self.n_channels, ctypes.c_double(timeout_s),
                                   ctypes.byref(self._err))
        if self._err.value:
            return self._error()
        now = time.monotonic_ns()
        if ts == 0.0:  # nothing within the timeout
            quiet = now - self._last_ns
            if not self._silent and quiet > self._silence_ns:
                self._silent = True
                self.events.append(f"LSL stream {self.info['name']!r} silent for {quiet / 1e9:.1f} s; "
                                   "waiting for it to return")
            if quiet > self._reresolve_ns and now - self._tried_ns > self._reresolve_ns:
                return self._reconnect()  # came back under another source_id? look for it by the query
            return None
        flags = 0
        if self._silent:
            self._silent = False
            self.events.append(f"LSL stream {self.info['name']!r} returned after {(now - self._last_ns) / 1e9:.1f} s")
            if ts - self._last_ts > 1.5 * self.period:  # gone, and back further on: a gap, not a glitch
                flags = _GAP
        if self._gap_next:
            self._gap_next = False
            flags = _GAP
        self._last_ns = now
        self._last_ts = ts
        row = self._row
        if self._order is not None:
            np.take(row, self._order, out=self._ordered)
            row = self._ordered
        return row, ts, pylsl.local_clock() - ts, flags

    def _error(self) -> None:
        """A lost, unrecoverable inlet: drop it and re-resolve on the next pulls."""
        try:
            handle_error(self._err)
        except LostError:
            self.events.append(f"LSL stream {self.info['name']!r} lost and not recoverable by liblsl "
                               "(no source_id?); re-resolving it")
            self._inlet = None
            self._err.value = 0
            return None
        except Exception as e:  # noqa: BLE001 - liblsl's other errors: name them, and stop cleanly
            raise SourceError(f"LSL pull failed: {e}") from None
        raise SourceError(f"LSL pull failed with error code {self._err.value}")

    def _reconnect(self) -> None:
        """Look for the stream by the query; switch to a stream other than the silent one."""
        self._tried_ns = time.monotonic_ns()
        infos = self._resolve(0.5)
        current = None if self._inlet is None else self.info["uid"]
        if not infos or any(i.uid() == current for i in infos):
            return None  # nothing yet, or the current stream is still there (paused): keep waiting
        if current is not None and self.info["source_id"]:
            # back under the same source_id: liblsl's own recovery reconnects the inlet we have
            infos = [i for i in infos if i.source_id() != self.info["source_id"]]
            if not infos:
                return None
        old, kept = self.info, (self._inlet, self._order, self.channel_note)
        try:
            self._open(self._pick(infos))
            self.start(data_first=True)
        except SourceError as e:  # keep waiting on the old inlet (liblsl may still recover it)
            self._inlet, self._order, self.channel_note = kept
            self.info = old
            if self._inlet is not None:
                self._obj = self._inlet.obj
            self.events.append(f"found a stream matching {self._query} but cannot decode it: {e}; still looking")
            return None
        if kept[0] is not None:
            kept[0].close_stream()
        self._gap_next = True
        self._silent = False
        self.events.append(f"LSL stream {old['name']!r} (source_id {old['source_id']!r}, uid {old['uid']}) "
                           f"reconnected to source_id {self.info['source_id']!r} on host {self.info['hostname']!r} "
                           f"(uid {self.info['uid']}); the next bin is flagged gap")
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
