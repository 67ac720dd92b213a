"""Where bins come from: a live LSL stream (`lsl.LSLSource`) or a recorded session played
back in time (`replay.ReplaySource`).

Every source answers one call, `pull(timeout_s)`, with either None (no bin within the
timeout; `finished` says whether more can come) or a tuple
`(counts, t_src, lag_s, flags)`:

- `counts`: the bin's spike counts, normally float32[C] (a view into the source's own
  buffer, valid until the next pull; the engine copies what it keeps);
- `t_src`: the bin's source timestamp in seconds (LSL clock after clock correction, or the
  session's bin end time);
- `lag_s`: how far behind its due time the bin reached the engine (LSL: local clock minus
  t_src; replay: lateness against the pacing schedule);
- `flags`: decoder_runtime.messages.Flag bits the source itself detected.

`start()` is called right before the first pull (a replay fixes its schedule's origin
there), `close()` after the last, and `describe()` gives the settings to record. Rare
happenings (a stream went silent, came back) are appended as text to `events`, which the
engine drains between bins.
"""
from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np

Pulled = tuple[np.ndarray, float, float, int]


class SourceError(RuntimeError):
    """A source that cannot be opened as asked; the message names what is wrong."""


class Source(Protocol):
    n_channels: int
    period: float
    finished: bool
    events: deque[str]

    def start(self) -> None: ...

    def pull(self, timeout_s: float) -> Pulled | None: ...

    def close(self) -> None: ...

    def describe(self) -> dict: ...
