"""The floor for the end-to-end bench: a bare Python LSL → ZeroMQ relay, with no model and no runtime.

Each sample is pulled with pylsl's ordinary blocking `pull_sample` and sent on at once as a
velocity message (zero velocity) through the runtime's own `Publisher` and `MessagePacker`,
so the subscriber of benchmarks.e2e reads it exactly as it reads `serve`'s messages and the
difference between the two is what the runtime adds: validation, the model, the record, its
loop. `lat_us` is the relay's own pull-return → sent time.

Run as `python -m benchmarks.bare_relay --name STREAM --zmq tcp://127.0.0.1:PORT --max-bins N`:
it waits for a subscriber, resolves the stream, relays N samples and exits.
"""
from __future__ import annotations

import time

import pylsl
import typer

from decoder_runtime.messages import MessagePacker
from decoder_runtime.publish import Publisher


def main(
    name: str = typer.Option(..., help="LSL stream name to relay"),
    zmq: str = typer.Option(..., help="ZeroMQ endpoint to publish on (loopback)"),
    max_bins: int = typer.Option(..., min=1, help="samples to relay before exiting"),
    timeout: float = typer.Option(120.0, help="seconds to wait for the subscriber, and for the stream"),
) -> None:
    publisher = Publisher(zmq)
    packer = MessagePacker("bare-relay")
    try:
        if not publisher.wait_for_subscriber(timeout):
            raise SystemExit(f"no subscriber on {zmq} within {timeout:g} s")
        found = pylsl.resolve_byprop("name", name, 1, timeout)
        if not found:
            raise SystemExit(f"no LSL stream {name!r} within {timeout:g} s")
        inlet = pylsl.StreamInlet(found[0], max_chunklen=1, processing_flags=pylsl.proc_clocksync)
        inlet.open_stream(timeout)
        for seq in range(max_bins):
            _, ts = inlet.pull_sample(timeout)
            if ts is None:
                break
            t_arr = time.monotonic_ns()
            publisher.send(packer.pack(seq, ts, 0.0, 0.0, (time.monotonic_ns() - t_arr) / 1e3, 0, t_arr, (0, 0, 0)))
    finally:
        publisher.close()


if __name__ == "__main__":
    typer.run(main)
