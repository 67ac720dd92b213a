"""The velocity message: what every subscriber of a spikestream runtime receives.

One ZeroMQ message per input bin: a topic frame `b"velocity"` and a msgpack body, a map

| key      | type         | meaning                                                              |
| -------- | ------------ | -------------------------------------------------------------------- |
| `v`      | int          | message format version (`VERSION`); a reader refuses other versions  |
| `seq`    | int          | bin sequence number, 0, 1, 2, ... per run, contiguous: a gap in      |
|          |              | `seq` at a subscriber means ZeroMQ dropped messages for it           |
| `t_src`  | float        | the bin's source timestamp, seconds (LSL clock after clock           |
|          |              | correction for `serve`; the session's bin end time for `replay`)     |
| `vel`    | [float, float] | decoded velocity (vx, vy) in the units the model was trained on    |
| `model`  | str          | the artifact's model id                                              |
| `lat_us` | float        | the runtime's own latency for this bin: bin in hand -> message built |
| `flags`  | int          | bitfield of `Flag` below                                             |
| `t_arr`  | int          | the bin's arrival stamp, `time.monotonic_ns()` (CLOCK_MONOTONIC, so  |
|          |              | a subscriber on the same host can difference it with its own clock)  |
| `st_us`  | [int, int, int] | per-stage durations in us: validate, adapt, step (incl. hand-off) |

Flags are a stable bitfield (new bits may be added; existing bits never change meaning
within a version). Several can be set on one bin.
"""
from __future__ import annotations

import enum

import msgpack

VERSION = 1
TOPIC = b"velocity"


class Flag(enum.IntFlag):
    """Why a bin's velocity is not simply "the model's output for good input, on time"."""

    GAP = 1 << 0  # bins are missing before this one (source timestamp jumped, or the stream dropped)
    ADAPT = 1 << 1  # test-time adaptation changed this bin's input
    DEADLINE = 1 << 2  # the model missed --deadline-ms; vel came from the fallback (or last value)
    FALLBACK = 1 << 3  # vel came from the artifact's fallback decoder (Wiener filter)
    HELD = 1 << 4  # vel repeats the last velocity sent (no fallback, or the bin was not decoded)
    BAD_LENGTH = 1 << 5  # the bin had the wrong number of channels
    NONFINITE = 1 << 6  # the bin held NaN or inf counts
    NEGATIVE = 1 << 7  # the bin held negative counts
    BACKWARDS = 1 << 8  # the source timestamp did not advance past the previous bin's
    LATE = 1 << 9  # the bin reached the runtime more than --late-ms after its source timestamp
    IMPUTED = 1 << 10  # some or all counts were replaced by the training mean before decoding
    DROPPED = 1 << 11  # the bin was not given to the model (policy "hold", or the model is too far behind)
    RESET = 1 << 12  # the decoder state was reset before this bin (after a gap, or after falling behind)
    JUMP = 1 << 13  # the timestamp jumped ahead of the timeline; decoded, not trusted yet: if the next bin
    #                 continues from it, that bin is flagged GAP; if the next continues the old timeline, this
    #                 was a single bad stamp and cost only this flag (see decoder_runtime.validate)


FLAG_NAMES: dict[int, str] = {int(f): f.name.lower() for f in Flag}


def flag_names(flags: int) -> list[str]:
    """Names of the bits set in `flags`, lowest bit first (unknown bits as 'bitN')."""
    out = []
    for bit in range(32):
        if flags & (1 << bit):
            out.append(FLAG_NAMES.get(1 << bit, f"bit{bit}"))
    return out


class MessagePacker:
    """Builds message bodies with one reused msgpack Packer (no per-bin packer setup)."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self._packer = msgpack.Packer(use_bin_type=True)

    def pack(self, seq: int, t_src: float, vx: float, vy: float, lat_us: float, flags: int,
             t_arr: int, st_us: tuple[int, int, int]) -> bytes:
        return self._packer.pack({
            "v": VERSION, "seq": seq, "t_src": t_src, "vel": (vx, vy), "model": self.model_id,
            "lat_us": lat_us, "flags": flags, "t_arr": t_arr, "st_us": st_us,
        })


class MessageError(ValueError):
    """A message body that is not a spikestream velocity message this reader understands."""


def unpack(body: bytes) -> dict:
    """Decode a body and check its version; raises MessageError naming what is wrong."""
    try:
        msg = msgpack.unpackb(body, raw=False)
    except (msgpack.exceptions.ExtraData, ValueError) as e:
        raise MessageError(f"not a msgpack velocity message ({e})") from None
    if not isinstance(msg, dict) or "v" not in msg:
        raise MessageError("not a velocity message: expected a map with a 'v' version key")
    if msg["v"] != VERSION:
        raise MessageError(f"velocity message version {msg['v']!r}; this reader understands {VERSION}")
    return msg
