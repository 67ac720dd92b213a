"""What the view knows about a session, built from the messages any subscriber receives.

One `ViewState` per view process, fed by the ZeroMQ subscriber (`ingest`) and read by the
web server: `snapshot()` for a browser that just connected (the last `window_s` of bins,
markers, the latest status and task), `take_update()` for what arrived since the last
update (sent to every open page). It is plain Python with no I/O, so its rules are tested
without sockets or a browser.

Its rules, which the page only draws:
- A *restart*: `seq` went back (0 after a run, or any value not above the last) or the
  model id changed. The run's counters start again and a marker is placed.
- A *silence*: no velocity message for more than `silence_s`; when bins come back, a marker
  says how long the stream was quiet. While quiet, `last_rx` lets the page show
  "no data for N s".
- *Missing* bins: `seq` jumped forward; ZeroMQ dropped messages for this subscriber (or
  the view was too slow), counted and marked.
- *Flags*: every flag bit of every bin is counted per run, by name.
Each bin and marker carries a serial number `i`, so a page that got a snapshot ignores
the same items when they come again in the next update.
"""
from __future__ import annotations

import math
from collections import deque

import msgpack

from decoder_runtime import messages, status

VELOCITY, STATUS, TASK = messages.TOPIC, status.TOPIC, b"task"
TOPICS = (VELOCITY, STATUS, TASK)


def _clean(obj):
    """JSON-safe copy of a decoded message: non-finite floats -> None, bytes -> hex."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.hex()
    return obj


class ViewState:
    """Recent bins, markers, per-run counters, the latest status and task message."""

    def __init__(self, window_s: float = 12.0, silence_s: float = 0.5, max_rate_hz: float = 1000.0) -> None:
        self.window_s = window_s
        self.silence_s = silence_s
        self.bins: deque[list] = deque(maxlen=int(window_s * max_rate_hz))
        self.markers: deque[dict] = deque(maxlen=500)
        self.status: dict | None = None
        self.task: dict | None = None
        self.last_rx: float | None = None  # wall time of the last velocity message
        self.bad = 0  # messages that could not be read
        self.restarts = 0
        self.run: dict = {}
        self._i = 0
        self._last_seq: int | None = None
        self._new_bins: list[list] = []
        self._new_markers: list[dict] = []
        self._status_new = self._task_new = False

    def ingest(self, topic: bytes, body: bytes, rx: float) -> None:
        """One message as received at wall time `rx`; unreadable ones are counted, not raised."""
        try:
            if topic == VELOCITY:
                self._velocity(messages.unpack(body), rx)
            elif topic == STATUS:
                self.status = _clean({**status.unpack(body), "rx": rx})
                self._status_new = True
            elif topic == TASK:
                msg = msgpack.unpackb(body, raw=False)
                if not isinstance(msg, dict) or "cursor" not in msg:
                    raise ValueError("not a task message")
                self.task = _clean({**msg, "rx": rx})
                self._task_new = True
        except (ValueError, KeyError, TypeError, IndexError):
            self.bad += 1

    def _serial(self) -> int:
        self._i += 1
        return self._i

    def _mark(self, t: float, kind: str, text: str) -> None:
        m = {"i": self._serial(), "t": t, "kind": kind, "text": text}
        self.markers.append(m)
        self._new_markers.append(m)

    def _velocity(self, msg: dict, rx: float) -> None:
        seq, model, flags = int(msg["seq"]), str(msg["model"]), int(msg["flags"])
        vx, vy = (float(v) for v in msg["vel"])
        row = [0, rx, seq, float(msg["t_src"]), vx, vy, float(msg["lat_us"]), flags]  # validated before any change
        last = self._last_seq
        if last is None or seq <= last or model != self.run.get("model"):
            if last is not None:
                self.restarts += 1
                why = f"model {self.run.get('model')} -> {model}" if model != self.run.get("model") else f"seq {last} -> {seq}"
                self._mark(rx, "restart", f"restart ({why})")
            self.run = {"model": model, "since": rx, "first_seq": seq, "bins": 0, "missing": 0, "flags": {}}
        else:
            if seq > last + 1:
                self.run["missing"] += seq - last - 1
                self._mark(rx, "missing", f"{seq - last - 1} bins missing")
            if rx - self.last_rx > self.silence_s:
                self._mark(rx, "silence", f"no data for {rx - self.last_rx:.1f} s")
        self._last_seq, self.last_rx = seq, rx
        run = self.run
        run["bins"] += 1
        run["last_seq"] = seq
        counts = run["flags"]
        for name in messages.flag_names(flags):
            counts[name] = counts.get(name, 0) + 1
        row[0] = self._serial()
        if not (math.isfinite(vx) and math.isfinite(vy)):
            row[4:6] = None, None
        self.bins.append(row)
        self._new_bins.append(row)

    def _common(self, now: float) -> dict:
        return {"now": now, "last_rx": self.last_rx, "run": self.run, "restarts": self.restarts, "bad": self.bad}

    def snapshot(self, now: float) -> dict:
        """Everything a page needs to start drawing: the last `window_s` of bins and markers."""
        since = now - self.window_s
        return {"type": "snapshot", **self._common(now), "upto": self._i,
                "bins": [b for b in self.bins if b[1] >= since],
                "markers": [m for m in self.markers if m["t"] >= since],
                "status": self.status, "task": self.task}

    def take_update(self, now: float) -> dict:
        """What arrived since the last call (status/task only when new), plus the run counters."""
        update = {"type": "update", **self._common(now), "bins": self._new_bins, "markers": self._new_markers}
        if self._status_new:
            update["status"] = self.status
        if self._task_new:
            update["task"] = self.task
        self._new_bins, self._new_markers = [], []
        self._status_new = self._task_new = False
        return update
