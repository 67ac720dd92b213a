"""`spikestream serve`, `replay`, `listen`, `stream-nwb`: parse options, build, run, print.

`serve` and `replay` turn their options (over `--config FILE.toml` when given) into one
`RuntimeConfig` and hand it to `decoder_runtime.assemble.open_runtime`; SIGINT (Ctrl-C) and
SIGTERM set a stop flag the loop checks between bins (at most `poll_s`, 0.1 s, apart), so the
loop ends cleanly, the record is flushed and closed, and the summary is printed.
Exit codes: 0 done, 1 a failure while running, 2 bad options or input (one line, no traceback).
"""
from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from spikestream.commands.adaptation import AdaptOpt, AdaptTauOpt
from spikestream.commands.options import with_options

console = Console(stderr=True)
DEFAULT_ZMQ = "tcp://127.0.0.1:5555"

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="A run description (TOML, see decoder_runtime/config.py); options given here override it.")]
ZmqOpt = Annotated[Optional[str], typer.Option("--zmq", help=f"ZeroMQ endpoint to bind the PUB socket to ('none': do not publish). Default {DEFAULT_ZMQ}.")]
RecordOpt = Annotated[Optional[Path], typer.Option("--record", help="Write the session (counts, velocity, stamps, flags, config) to this NWB file.")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="auto | torch | torchscript | onnx | cudagraph | numba (default auto: the fastest measured for the device).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu (default) or cuda[:N].")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="Intra-op threads for the backend (>= 1).")]
DeadlineOpt = Annotated[Optional[float], typer.Option("--deadline-ms", help="Latency bound per bin (default 10): the model steps inline, watched by a guard thread; if it is not done by then, the guard sends the fallback decoder's velocity, flagged, and the next bins step on that thread until the model keeps up again. 0 = no bound (inline, unguarded).")]
HandoffSpinOpt = Annotated[Optional[float], typer.Option(
    "--handoff-spin-us", help="With a deadline, after an overrun (step on the guard's thread): how long the loop and it spin for "
                              "each other's hand-off, GIL released, instead of sleeping on a queue (us, default 500; "
                              "0 = sleep). Costs a spinning core for that long per bin.")]
OnGapOpt = Annotated[Optional[str], typer.Option("--on-gap", help="After a gap in the input: 'reset' (default) the decoder state or 'keep' it.")]
BadBinOpt = Annotated[Optional[str], typer.Option("--bad-bin", help="Bad counts (wrong length, NaN/inf, negative): 'impute' (default) with the training mean and decode, or 'hold' the last velocity.")]
LateOpt = Annotated[Optional[float], typer.Option("--late-ms", help="Flag bins arriving more than this after their timestamp as LATE (> 0; default: one bin).")]
MaxBinsOpt = Annotated[Optional[int], typer.Option("--max-bins", help="Stop after this many bins (>= 1).")]
AllowRemoteOpt = Annotated[Optional[bool], typer.Option("--allow-remote", help="Allow binding a non-loopback address.")]
CurveSecretOpt = Annotated[Optional[Path], typer.Option("--curve-secret", help="Server secret certificate (zmq.auth.create_certificates) to enable CURVE.")]
CurveClientsOpt = Annotated[Optional[Path], typer.Option("--curve-clients", help="Folder of authorised client public certificates (default: any client knowing the server key).")]
SummaryOpt = Annotated[Optional[Path], typer.Option("--summary-json", help="Also write the run summary to this JSON file.")]
KeepWarmOpt = Annotated[Optional[bool], typer.Option(
    "--keep-warm/--no-keep-warm",
    help="At real pace, run a dry pass of the bin's path (model step on a scratch state, validate, pack, send to "
         "nowhere) --warm-lead-us before each predicted bin (a replay then polls for it without sleeping). Default on; "
         "costs one core busy ~1 ms per bin (~4% of a core at 40 Hz).")]
WarmLeadOpt = Annotated[Optional[float], typer.Option(
    "--warm-lead-us", help="How long before a bin's predicted arrival the warm pass starts (us, default 1000).")]
WarmSpinOpt = Annotated[Optional[float], typer.Option(
    "--warm-spin-us", help="After the warm pass, poll for the bin without sleeping until this long past its predicted "
                           "arrival (default: 3000 for a replay, 0 for LSL, whose receive thread a spinning loop would "
                           "starve).")]
PinCpusOpt = Annotated[Optional[str], typer.Option(
    "--pin-cpus", help="Pin the runtime's loop and guard thread to these cores, e.g. 1 or 0,1 (default: not pinned).")]
RealtimeOpt = Annotated[Optional[bool], typer.Option(
    "--realtime", help="Run the loop and guard thread under SCHED_FIFO (needs CAP_SYS_NICE or an rtprio limit).")]
FreezeGcOpt = Annotated[Optional[bool], typer.Option(
    "--freeze-gc/--no-freeze-gc",
    help="Keep Python's cyclic collector out of the loop (gc.freeze after setup, collect between bins only). Default on.")]
BusyWaitOpt = Annotated[Optional[bool], typer.Option(
    "--busy-wait/--no-busy-wait",
    help="With keep-warm, wait for each bin by polling the source, never sleeping: the loop's core stays at 100%, "
         "and the bins' tail latency at real pace halves (on a VM an idle vCPU comes back slow). Default off; give "
         "it a core of its own (--pin-cpus).")]
LslOutOpt = Annotated[Optional[str], typer.Option("--lsl-out", help="Also publish the velocity as an LSL stream of this name (vx, vy, seq, flags; stamped with the bin's source timestamp).")]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line (file and user text escaped, never read as markup); the exit to raise."""
    console.print(f"[red]error:[/red] {escape(str(message))}")
    return typer.Exit(code)


@contextmanager
def stop_on_signals():
    """A stop flag set by SIGINT/SIGTERM while the loop runs (previous handlers restored after)."""
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def build_config(config: Path | None, values: dict[str, Any]):
    """The `--config` file (or defaults) with every option the user gave laid over it."""
    from decoder_runtime.config import ConfigError, RuntimeConfig, read_toml

    try:
        base = read_toml(config) if config is not None else {}
        given = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if v is not None}
        for key, value in given.items():
            section, _, name = key.rpartition(".")
            (base.setdefault(section, {}) if section else base)[name] = value
        return RuntimeConfig.from_dict(base)
    except ConfigError as e:
        raise fail(e) from None


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:,.{digits}f}"


def _summary_table(title: str, summary: dict) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("bins", f"{summary['n_bins']:,}")
    if "r2" in summary:
        r2 = summary["r2"]
        held = summary.get("r2_held_out")
        table.add_row("R² (sent velocity, equal avg" + (", all bins incl. training)" if held else ")"), _fmt(r2["r2"], 6))
        if held:
            a, b = held["bins"]
            table.add_row(f"R² held-out test block only (bins {a:,}–{b:,})", _fmt(held["r2"], 6))
        table.add_row("R² vx / vy / var-weighted", f"{_fmt(r2['r2_vx'], 4)} / {_fmt(r2['r2_vy'], 4)} / {_fmt(r2['r2_vw'], 4)}")
        table.add_row("R² (model's own output, every bin)", _fmt(summary["r2_model"]["r2"], 6))
    for key, label in (("latency_us", "latency arrival→sent (us)"), ("own_us", "runtime's own work, excl. step (us)"),
                       ("handoff_us", "  of which around the step: fallback, guard, hand-off (us)"), ("step_us", "model step (us)")):
        p = summary[key]
        table.add_row(f"{label} p50 / p99 / p99.9 / max",
                      " / ".join(_fmt(p[q]) for q in ("p50", "p99", "p99.9", "max")))
    stage = summary["stage_p50_us"]
    table.add_row("stage p50 (us): validate / adapt / step+wait / publish / record",
                  " / ".join(_fmt(stage[k]) for k in ("validate", "adapt", "step_wait", "publish", "record")))
    table.add_row("deadline misses (fallback sent)", str(summary["deadline_misses"]))
    table.add_row("bin-period overruns", str(summary["period_overruns"]))
    table.add_row("flags", ", ".join(f"{k} {v}" for k, v in summary["flags"].items()) or "none")
    table.add_row("publish drops", str(summary["publish_drops"]))
    pacing = summary.get("pacing") or {}
    if pacing:
        table.add_row("pacing error (us) mean / sd / p99 / max",
                      " / ".join(_fmt(pacing[k]) for k in ("mean_us", "std_us", "p99_us", "max_us")))
    return table


def run_session(cfg, command: str, title: str, summary_json: Path | None, *, session=None, scores=None) -> None:
    """Build the session, run it until done or stopped, close it, print and store the summary."""
    from decoder_runtime.assemble import AssemblyError, open_runtime

    try:
        with open_runtime(cfg, command=command, session=session, say=lambda m: console.print(f"[yellow]{escape(m)}[/yellow]"),
                          on_event=lambda line: console.print(f"[dim]{escape(line)}[/dim]")) as rt:
            console.print(f"[bold]{command}[/bold]: {escape(rt.describe())}")
            with stop_on_signals() as stop:
                result = rt.run(stop)
            rt.summary = {**result.summary(), **(scores(result, rt) if scores else {})}
            summary = rt.summary
    except AssemblyError as e:
        raise fail(e) from None
    console.print(_summary_table(title.format(model=rt.artifact.model_id, backend=rt.backend_kind), summary))
    for line in result.events[-20:]:
        console.print(f"[dim]{escape(line)}[/dim]")
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=2, default=float))
    if cfg.max_bins is None and getattr(session, "n_bins", None) and result.n_bins < session.n_bins:
        console.print(f"[yellow]stopped after {result.n_bins:,} of {session.n_bins:,} bins; R² covers the bins decoded[/yellow]")


def _cpus(text: str | None) -> list[int] | None:
    from decoder_runtime.warm import parse_cpus

    try:
        cpus = parse_cpus(text)
    except ValueError as e:
        raise fail(e) from None
    return None if cpus is None else list(cpus)


# The options serve and replay share, each with the RuntimeConfig field it sets (None: not given).
RUNTIME_OPTIONS = (
    ("backend", BackendOpt, "model.backend"), ("device", DeviceOpt, "model.device"),
    ("threads", ThreadsOpt, "model.threads"), ("zmq", ZmqOpt, "output.zmq"), ("record", RecordOpt, "output.record"),
    ("lsl_out", LslOutOpt, "output.lsl_out"), ("deadline_ms", DeadlineOpt, "deadline.deadline_ms"),
    ("handoff_spin_us", HandoffSpinOpt, "deadline.handoff_spin_us"),
    ("on_gap", OnGapOpt, "validation.on_gap"), ("bad_bin", BadBinOpt, "validation.bad_bin"),
    ("late_ms", LateOpt, "validation.late_ms"), ("max_bins", MaxBinsOpt, "max_bins"),
    ("adapt", AdaptOpt, "adapt.method"), ("adapt_tau", AdaptTauOpt, "adapt.tau_s"),
    ("keep_warm", KeepWarmOpt, "warm.keep_warm"), ("warm_lead_us", WarmLeadOpt, "warm.lead_us"),
    ("warm_spin_us", WarmSpinOpt, "warm.spin_us"), ("pin_cpus", PinCpusOpt, "warm.pin_cpus"),
    ("realtime", RealtimeOpt, "warm.realtime"), ("freeze_gc", FreezeGcOpt, "warm.freeze_gc"),
    ("busy_wait", BusyWaitOpt, "warm.busy_wait"),
)
_CONFIG_KEY = {name: key for name, _, key in RUNTIME_OPTIONS}


def _runtime_values(values: dict[str, Any]) -> dict[str, Any]:
    out = {_CONFIG_KEY[name]: value for name, value in values.items()}
    out["warm.pin_cpus"] = _cpus(out["warm.pin_cpus"])
    return out


with_runtime_options = with_options([(name, ann, None) for name, ann, _ in RUNTIME_OPTIONS], "runtime", _runtime_values)


@with_runtime_options
def serve(
    artifact: Annotated[Optional[Path], typer.Argument(help="Model artifact folder (or model.artifact in --config).")] = None,
    config: ConfigOpt = None,
    lsl_name: Annotated[Optional[str], typer.Option("--lsl-name", help="LSL stream name to decode.")] = None,
    lsl_type: Annotated[Optional[str], typer.Option("--lsl-type", help="LSL stream type.")] = None,
    source_id: Annotated[Optional[str], typer.Option("--source-id", help="LSL source_id (lets a dropped stream be recovered).")] = None,
    hostname: Annotated[Optional[str], typer.Option("--lsl-hostname", help="Only an LSL stream from this host (also when re-resolving after a loss).")] = None,
    allow_remote: AllowRemoteOpt = None,
    curve_secret: CurveSecretOpt = None,
    curve_clients: CurveClientsOpt = None,
    resolve_timeout: Annotated[Optional[float], typer.Option("--resolve-timeout", help="Seconds to look for the LSL stream (default 10).")] = None,
    wait_subscriber: Annotated[Optional[float], typer.Option("--wait-subscriber", help="Wait up to this many seconds for a ZeroMQ subscriber before opening the stream.")] = None,
    summary_json: SummaryOpt = None,
    runtime: object = None,  # the RUNTIME_OPTIONS' config values
) -> None:
    """Decode a live LSL stream of spike-count bins and publish one velocity per bin over ZeroMQ."""
    cfg = build_config(config, {
        "model.artifact": artifact, "source.kind": "lsl", "source.lsl_name": lsl_name, "source.lsl_type": lsl_type,
        "source.source_id": source_id, "source.hostname": hostname, "source.resolve_timeout_s": resolve_timeout, "output.allow_remote": allow_remote,
        "output.curve_secret": curve_secret, "output.curve_clients": curve_clients,
        "output.wait_subscriber_s": wait_subscriber, **runtime})
    run_session(cfg, "serve", "serve {model} ({backend}/" + cfg.model.device + ")", summary_json)


@with_runtime_options
def replay(
    paths: Annotated[list[Path], typer.Argument(
        metavar="[FILE.nwb] ARTIFACT",
        help="An NWB session and a model artifact folder; with the artifact alone, the default simulated session.")] = None,  # noqa: B006
    config: ConfigOpt = None,
    speed: Annotated[Optional[str], typer.Option("--speed", help="1 = real time (default), a factor (e.g. 10), or 'max'.")] = None,
    via_lsl: Annotated[Optional[bool], typer.Option("--via-lsl", help="Stream the session from a `stream-nwb` process through a real LSL outlet and decode from an inlet here.")] = None,
    summary_json: SummaryOpt = None,
    runtime: object = None,  # the RUNTIME_OPTIONS' config values
) -> None:
    """Decode a recorded session as if it were live; end with R², latency, misses, flags and pacing."""
    paths = paths or []
    if len(paths) > 2 or (not paths and config is None):
        raise fail("expected [FILE.nwb] ARTIFACT")
    nwb, artifact = (None, paths[0]) if len(paths) == 1 else (paths or [None, None])
    cfg = build_config(config, {
        "model.artifact": artifact, "source.kind": "replay", "source.nwb": nwb, "source.speed": speed,
        "source.via_lsl": via_lsl, **runtime})
    session, held_out = _replay_session(cfg)

    def scores(result, rt) -> dict:
        from replay.scoring import replay_scores

        out = {"pacing": rt.engine.source.pacing()}
        if rt.session.velocity is not None:
            out.update(replay_scores(result.velocity, result.model_vel, rt.session.velocity, rt.session.valid, held_out))
        return out

    where = "default simulated session" if cfg.source.nwb is None else cfg.source.nwb
    title = ("replay {model} ({backend}/" + cfg.model.device + f") on {where}, speed {cfg.source.speed}"
             + (" via LSL" if cfg.source.via_lsl else ""))
    run_session(cfg, "replay", title, summary_json, session=session, scores=scores)


def _replay_session(cfg):
    """The session to replay (cut to max_bins) and the artifact's held-out block in it, if any.

    Its units are matched to the artifact's channels by the assembler, after the artifact is verified."""
    from models.artifact import ArtifactError, read_config
    from replay import NWBFormatError, load_session
    from replay.scoring import held_out_block

    try:
        config = read_config(cfg.model.artifact)
        bin_width = float(config["bin_width"])
        session = load_session(cfg.source.nwb and Path(cfg.source.nwb), bin_width=bin_width)
    except (ArtifactError, NWBFormatError, ValueError, KeyError, OSError) as e:
        raise fail(e) from None
    held_out = held_out_block(config, session.n_bins, session.meta.get("nwb_identifier"))
    if cfg.max_bins is not None:
        session = session.slice(0, min(cfg.max_bins, session.n_bins))
    return session, held_out


def stream_nwb(
    file: Annotated[Optional[Path], typer.Argument(help="NWB session (default: the built-in simulated session).")] = None,
    lsl_name: Annotated[str, typer.Option("--lsl-name", help="LSL stream name.")] = "spikestream",
    lsl_type: Annotated[str, typer.Option("--lsl-type", help="LSL stream type.")] = "SpikeCounts",
    source_id: Annotated[Optional[str], typer.Option("--source-id", help="LSL source_id (default: spikestream-NAME).")] = None,
    speed: Annotated[str, typer.Option("--speed", help="1 = real time, a factor, or 'max'.")] = "1",
    loop: Annotated[bool, typer.Option("--loop", help="Start over at the end, forever.")] = False,
    bin_width: Annotated[float, typer.Option("--bin-width", help="Bin width in seconds.")] = 0.025,
    max_bins: Annotated[Optional[int], typer.Option("--max-bins", help="Play only the first N bins (>= 1).")] = None,
    wait_consumer: Annotated[float, typer.Option("--wait-consumer", help="Wait up to this many seconds for an inlet before playing (0: start at once).")] = 0.0,
    linger: Annotated[float, typer.Option("--linger", help="After the last bin, keep the outlet up this long while an inlet is connected.")] = 5.0,
    stats_json: Annotated[Optional[Path], typer.Option("--summary-json", "--stats-json", help="Write the pacing-error statistics here at exit.")] = None,
) -> None:
    """Play a session into an LSL outlet (float32, one sample per bin, nominal rate 1/bin width)."""
    from decoder_runtime.sources.lsl import CountsOutlet
    from decoder_runtime.sources.lsl_replay import play
    from replay import NWBFormatError, load_session
    from replay.pacing import Pacer, parse_speed

    if max_bins is not None and max_bins < 1:
        raise fail(f"--max-bins must be >= 1, got {max_bins}")
    try:
        pacer = Pacer(bin_width, parse_speed(speed))
        session = load_session(file, bin_width=bin_width)
    except (NWBFormatError, ValueError) as e:
        raise fail(e) from None
    counts = session.counts[:max_bins] if max_bins else session.counts
    n = counts.shape[0]
    outlet = CountsOutlet(lsl_name, session.n_channels, bin_width, type=lsl_type,
                          source_id=source_id or f"spikestream-{lsl_name}",
                          max_buffered_s=max(360, int(n * bin_width) + 60),
                          channel_labels=[str(u) for u in session.unit_ids])
    console.print(f"stream-nwb: {escape(repr(lsl_name))} ({session.n_channels} channels, {1 / bin_width:g} Hz), "
                  f"{n:,} bins at speed {escape(speed)}{' (looping)' if loop else ''}")
    if wait_consumer > 0 and not outlet.wait_for_consumers(wait_consumer):
        raise fail(f"no inlet connected within {wait_consumer:g} s", 1)
    with stop_on_signals() as stop:
        stats = play(counts, outlet, pacer, stop, loop=loop)
        deadline = time.monotonic() + linger
        while not stop.is_set() and outlet.have_consumers() and time.monotonic() < deadline:
            time.sleep(0.05)
    outlet.close()
    if stats_json is not None:
        stats_json.write_text(json.dumps({k: v for k, v in stats.items() if k != "pushed"}))
    console.print(f"stream-nwb: pushed {stats['pushed']:,} bins" + (
        f"; pacing error mean {stats['mean_us']:.1f} us, sd {stats['std_us']:.1f}, p99 {stats['p99_us']:.1f}"
        if "mean_us" in stats else ""))


def _listen_table(log) -> Table:
    import numpy as np

    from decoder_runtime.messages import flag_names

    table = Table(title=f"listening on {escape(log.addr)}", show_header=True, header_style="bold")
    for col in ("received", "missing seq", "rate (Hz)", "runtime lat p50/p99 (us)", "arrival→receive p50/p99 (us)",
                "last velocity", "flags seen"):
        table.add_column(col, justify="right")
    got, n = log.cols, len(log)
    if n == 0:
        table.add_row("0", "0", "-", "-", "-", "-", "-")
        return table
    lat = np.asarray(got["lat_us"][-1000:])
    e2e = (np.asarray(got["recv_ns"][-1000:]) - np.asarray(got["t_arr"][-1000:])) / 1e3
    flags = 0
    for f in got["flags"][-1000:]:
        flags |= f
    table.add_row(f"{n:,}", f"{log.missing:,}", f"{log.rate():.1f}",
                  f"{np.percentile(lat, 50):.0f} / {np.percentile(lat, 99):.0f}",
                  f"{np.percentile(e2e, 50):.0f} / {np.percentile(e2e, 99):.0f}",
                  f"({got['vx'][-1]:+.3f}, {got['vy'][-1]:+.3f})", ", ".join(flag_names(flags)) or "none")
    return table


def listen(
    zmq: Annotated[str, typer.Option("--zmq", help="ZeroMQ endpoint of the runtime's PUB socket.")] = DEFAULT_ZMQ,
    save: Annotated[Optional[Path], typer.Option("--save", help="Save what was received to this .npz file.")] = None,
    count: Annotated[Optional[int], typer.Option("--count", min=1, help="Stop after N messages.")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=0.0, help="Stop after this many seconds without a message.")] = None,
    curve_server_key: Annotated[Optional[Path], typer.Option("--curve-server-key", help="The server's public certificate (enables CURVE).")] = None,
    curve_client_cert: Annotated[Optional[Path], typer.Option("--curve-client-cert", help="This client's secret certificate (default: a fresh key pair).")] = None,
) -> None:
    """Subscribe to a runtime's velocities: a live table of rate, latency and the last velocity."""
    from decoder_runtime.publish import PublishError
    from decoder_runtime.subscribe import VelocityLog

    try:
        log = VelocityLog(zmq, server_key=curve_server_key, client_cert=curve_client_cert)
    except PublishError as e:
        raise fail(e) from None
    quiet_since = time.monotonic()
    warned = False
    with stop_on_signals() as stop, Live(_listen_table(log), console=console, refresh_per_second=4) as live:
        next_draw = time.monotonic()
        while not stop.is_set() and (count is None or len(log) < count):
            now = time.monotonic()
            if log.poll(100, count):
                quiet_since = now
            elif timeout is not None and now - quiet_since > timeout:
                break
            elif not len(log) and not warned and now - quiet_since > 3.0:
                warned = True
                console.print(f"[yellow]nothing received on {escape(zmq)} for 3 s: is a runtime publishing there? "
                              "(still listening)[/yellow]")
            if now >= next_draw:
                live.update(_listen_table(log))
                next_draw = now + 0.25
        live.update(_listen_table(log))
    log.close()
    if log.bad:
        console.print(f"[yellow]{log.bad} messages were not velocity messages of this version and were skipped[/yellow]")
    if save is not None:
        log.save(save)
        console.print(f"saved {len(log):,} messages to {escape(str(save))}")
