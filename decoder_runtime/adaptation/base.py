"""The adaptation interface: where test-time adaptation plugs into the engine's loop.

The engine calls, for every decoded bin, `counts = adapter.process(counts)` between
validation and the model's step, then ORs `adapter.flags` into the bin's flags, and after
the step hands the velocity it is about to send to `adapter.observe(velocity)` (an adapter
can watch its effect on the output, e.g. to roll itself back). Rare,
human-readable happenings (a channel masked, new weights swapped in) go to
`adapter.events`, which the engine drains outside the per-bin path and writes to the log and
the session record. `reset()` is called once before the first bin of a session; gaps do
not reset an adapter (its statistics describe the neural signal, not the decoder state).

An implementation must keep `process` cheap and allocation-free (it runs on the hot path,
before the model's deadline clock is even half spent) and may return either the input
array or its own preallocated buffer; the engine copies what it gets before the next bin.

`Adapter` itself is the pass-through: no change, no flags, no events.
"""
from __future__ import annotations

from collections import deque

import numpy as np


class Adapter:
    """Pass-through adaptation; subclasses override `process` (and `reset`)."""

    name = "none"

    def __init__(self) -> None:
        self.flags: int = 0  # Flag bits for the bin just processed (e.g. Flag.ADAPT)
        self.events: deque[str] = deque(maxlen=1000)  # drained by the engine between bins

    def process(self, counts: np.ndarray) -> np.ndarray:
        """Raw counts float32[C] of a validated bin -> the counts the decoder should see."""
        return counts

    def observe(self, velocity: np.ndarray) -> None:
        """The velocity float32[2] decoded from the bin just processed (model or fallback)."""

    def reset(self) -> None:
        """Start of a session: forget everything learned from earlier bins."""
        self.flags = 0
        self.events.clear()
