"""Several outputs behind the one `send(body)` the engine calls: ZeroMQ and LSL side by side.

The engine publishes each bin's message once; `Fanout` hands the same bytes to every output
in order (decoder_runtime.publish.Publisher, decoder_runtime.lsl_out.VelocityOutlet). Each
output is non-blocking on its own, so the fan-out is too.
"""
from __future__ import annotations

from typing import Protocol


class Output(Protocol):
    drops: int

    def send(self, body: bytes) -> bool: ...

    def close(self, linger_s: float = ...) -> None: ...


class Fanout:
    """Sends every message body to each output; `drops` counts them over all outputs."""

    def __init__(self, outputs: list[Output]) -> None:
        self.outputs = list(outputs)

    @property
    def drops(self) -> int:
        return sum(o.drops for o in self.outputs)

    def send(self, body: bytes) -> bool:
        ok = True
        for o in self.outputs:
            ok = o.send(body) and ok
        return ok

    def close(self, linger_s: float = 0.5) -> None:
        for o in self.outputs:
            o.close(linger_s)
