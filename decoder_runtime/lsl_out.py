"""Velocity as a Lab Streaming Layer stream, for task programs that read LSL rather than ZeroMQ.

One irregular-rate float32 stream (type `Velocity`) with four channels per bin: vx, vy, seq,
flags. Each sample is stamped with the source bin's timestamp (`t_src`: the LSL clock for
`serve`, the session's bin end time for `replay`), so a reader can line velocities up with the
bins they came from and, on the LSL clock, measure latency. The stream describes itself in
its info: per-channel label, unit and type (`desc/channels/channel`; velocity in the unit of
the behaviour the artifact was trained on, e.g. mm/s), the model id, the velocity message
version and the flag bits (`desc/flags/flag` name + bit), so a reader needs nothing else.

float32 carries seq exactly up to 2**24 (116 hours of 25 ms bins) and every flag bit.

`VelocityOutlet.send(body)` takes the same msgpack message body as
decoder_runtime.publish.Publisher.send, so it is one more of the engine's outputs
(`output.lsl_out` in the run description); `push` sends the values directly.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pylsl
from pylsl.lib import lib
from pylsl.util import handle_error

from decoder_runtime.messages import FLAG_NAMES, VERSION, MessageError, unpack

CHANNELS = ("vx", "vy", "seq", "flags")
STREAM_TYPE = "Velocity"


class VelocityOutlet:
    """An LSL outlet of decoded velocity; `send` never blocks the decoder (liblsl buffers)."""

    def __init__(self, name: str, *, model_id: str, velocity_unit: str, source_id: str | None = None,
                 max_buffered_s: int = 360) -> None:
        info = pylsl.StreamInfo(name, STREAM_TYPE, len(CHANNELS), pylsl.IRREGULAR_RATE, pylsl.cf_float32,
                                source_id or f"spikestream-velocity-{name}")
        desc = info.desc()
        channels = desc.append_child("channels")
        for label, unit, kind in (("vx", velocity_unit, "velocity"), ("vy", velocity_unit, "velocity"),
                                  ("seq", "count", "sequence"), ("flags", "bitfield", "flags")):
            ch = channels.append_child("channel")
            ch.append_child_value("label", label)
            ch.append_child_value("unit", unit)
            ch.append_child_value("type", kind)
        desc.append_child_value("model_id", model_id)
        desc.append_child_value("message_version", str(VERSION))
        desc.append_child_value("timestamps", "the source bin's timestamp (t_src)")
        flags = desc.append_child("flags")
        for bit, flag in FLAG_NAMES.items():
            f = flags.append_child("flag")
            f.append_child_value("name", flag)
            f.append_child_value("bit", str(bit))
        self.name = name
        self.drops = 0  # messages that could not be read as velocity messages (never pushed)
        self.outlet = pylsl.StreamOutlet(info, chunk_size=1, max_buffered=max_buffered_s)
        self._obj = self.outlet.obj
        self._row = np.zeros(len(CHANNELS), dtype=np.float32)
        self._cbuf = (ctypes.c_float * len(CHANNELS)).from_buffer(self._row)
        self._pushthrough = ctypes.c_int(1)

    def push(self, seq: int, t_src: float, vx: float, vy: float, flags: int) -> None:
        """One sample, stamped with the bin's source timestamp."""
        row = self._row
        row[0], row[1], row[2], row[3] = vx, vy, seq, flags
        handle_error(lib.lsl_push_sample_ftp(self._obj, self._cbuf, ctypes.c_double(t_src), self._pushthrough))

    def send(self, body: bytes) -> bool:
        """The Publisher interface: one msgpack velocity message body; False if it was not one."""
        try:
            m = unpack(body)
        except MessageError:
            self.drops += 1
            return False
        vx, vy = m["vel"]
        self.push(m["seq"], m["t_src"], vx, vy, m["flags"])
        return True

    def wait_for_consumers(self, timeout_s: float) -> bool:
        return self.outlet.wait_for_consumers(timeout_s)

    def close(self, linger_s: float = 0.0) -> None:
        self.outlet = None
        self._obj = None
