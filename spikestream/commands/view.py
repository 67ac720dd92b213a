"""`spikestream view`: parse the options, refuse a non-loopback host unless asked, serve."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

DEFAULT_ZMQ = "tcp://127.0.0.1:5555"


def view(
    zmq: Annotated[Optional[list[str]], typer.Option(
        "--zmq", help="ZeroMQ endpoint to subscribe to; repeatable: one runtime's and its closed-loop task's.")] = None,
    port: Annotated[int, typer.Option("--port", help="HTTP port of the page.")] = 8050,
    host: Annotated[str, typer.Option("--host", help="Address to serve the page on.")] = "127.0.0.1",
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow serving on a non-loopback address.")] = False,
) -> None:
    """Serve a live page of a running session (velocity, latency, flags, task, channel health)."""
    from rich.console import Console

    from decoder_runtime.publish import PublishError, check_endpoint, is_loopback

    console = Console(stderr=True)
    endpoints = zmq or [DEFAULT_ZMQ]
    try:
        for addr in endpoints:
            check_endpoint(addr)  # refuses what is not an endpoint at all, or a bad port
    except PublishError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    if not 0 < port < 65536:
        console.print(f"[red]error:[/red] --port must be in 1..65535, got {port}")
        raise typer.Exit(2)
    if not is_loopback(f"tcp://{host}:{port}") and not allow_remote:
        console.print(f"[red]error:[/red] refusing to serve on {host}: not a loopback address "
                      "(pass --allow-remote to show the session beyond this machine)")
        raise typer.Exit(2)

    from decoder_runtime.view import run_view

    console.print(f"spikestream view: subscribed to {', '.join(endpoints)}; open http://{host}:{port}/", soft_wrap=True)
    try:
        run_view(endpoints, host, port, print_fn=None)
    except OSError as e:
        console.print(f"[red]error:[/red] cannot serve on {host}:{port}: {e.strerror or e}")
        raise typer.Exit(2) from None
