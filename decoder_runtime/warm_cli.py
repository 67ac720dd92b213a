"""The keep-warm options of `serve` and `replay` (decoder_runtime.warm), parsed into WarmSettings."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from decoder_runtime.warm import WarmSettings, parse_cpus

KeepWarmOpt = Annotated[bool, typer.Option(
    "--keep-warm/--no-keep-warm",
    help="At real pace, run a dry pass of the bin's path (model step on a scratch state, validate, pack, send to "
         "nowhere) --warm-lead-us before each predicted bin (a replay then polls for it without sleeping). Costs one "
         "core busy ~1 ms per bin (~4% of a core at 40 Hz).")]
WarmLeadOpt = Annotated[float, typer.Option(
    "--warm-lead-us", help="How long before a bin's predicted arrival the warm pass starts (us).")]
WarmSpinOpt = Annotated[Optional[float], typer.Option(
    "--warm-spin-us", help="After the warm pass, poll for the bin without sleeping until this long past its predicted "
                           "arrival (0: block in the source's own wait; default: 3000 for a replay, 0 for LSL, whose "
                           "receive thread a spinning loop would starve).")]
PinCpusOpt = Annotated[Optional[str], typer.Option(
    "--pin-cpus", help="Pin the runtime's loop and worker to these cores, e.g. 1 or 0,1 (default: not pinned).")]
RealtimeOpt = Annotated[bool, typer.Option(
    "--realtime", help="Run the loop and worker under SCHED_FIFO (needs CAP_SYS_NICE or an rtprio limit).")]
FreezeGcOpt = Annotated[bool, typer.Option(
    "--freeze-gc/--no-freeze-gc",
    help="Keep Python's cyclic collector out of the loop (gc.freeze after setup, collect between bins only).")]


def warm_settings(keep_warm: bool, lead_us: float, spin_us: float | None, pin_cpus: str | None, realtime: bool, freeze_gc: bool,
                  console: Console) -> WarmSettings:
    """WarmSettings from the options, or a one-line error and exit code 2."""
    try:
        return WarmSettings(keep_warm=keep_warm, lead_us=lead_us, spin_us=spin_us, pin_cpus=parse_cpus(pin_cpus), realtime=realtime,
                            freeze_gc=freeze_gc)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
