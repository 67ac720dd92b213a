"""CLI commands of the runtime: `serve`, `replay`, `listen`, `stream-nwb`.

Each command does its slow setup (artifact, backend warm-up, sockets, LSL resolution, the
record file) before the first bin, then hands over to decoder_runtime.engine. SIGINT
(Ctrl-C) and SIGTERM set a stop flag the loop checks between bins (at most `poll_s`,
0.1 s, apart), so the loop ends cleanly, the record is flushed and closed, and the summary
is printed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from decoder_runtime.adapt import Adapter
from decoder_runtime.adaptation.commands import AdaptOpt, AdaptTauOpt
from decoder_runtime.engine import Engine, EngineSettings, GapPolicy, RunResult
from decoder_runtime.messages import flag_names
from decoder_runtime.publish import DEFAULT_ADDR, Publisher, connect_subscriber, is_loopback
from decoder_runtime.validate import BadBinPolicy
from decoder_runtime.warm import BinWaiter, WarmError, WarmSettings, apply_process
from decoder_runtime.warm_cli import (FreezeGcOpt, KeepWarmOpt, PinCpusOpt, RealtimeOpt, WarmLeadOpt, WarmSpinOpt,
                                     warm_settings)

console = Console(stderr=True)

ZmqOpt = Annotated[str, typer.Option("--zmq", help="ZeroMQ endpoint to bind the PUB socket to ('none': do not publish).")]
RecordOpt = Annotated[Optional[Path], typer.Option("--record", help="Write the session (counts, velocity, stamps, flags, config) to this NWB file.")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="torch | torchscript | onnx | cudagraph | numba (default: the fastest measured for the device).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda[:N].")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="Intra-op threads for the backend.")]
DeadlineOpt = Annotated[float, typer.Option("--deadline-ms", help="Latency bound per bin: if the model is not done by then, send the fallback decoder's velocity, flagged. 0 = no bound (step inline).")]
OnGapOpt = Annotated[GapPolicy, typer.Option("--on-gap", help="After a gap in the input: 'reset' the decoder state or 'keep' it.")]
BadBinOpt = Annotated[BadBinPolicy, typer.Option("--bad-bin", help="Bad counts (wrong length, NaN/inf, negative): 'impute' with the training mean and decode, or 'hold' the last velocity without decoding.")]
LateOpt = Annotated[Optional[float], typer.Option("--late-ms", help="Flag bins arriving more than this after their timestamp as LATE (default: one bin).")]
AllowRemoteOpt = Annotated[bool, typer.Option("--allow-remote", help="Allow binding a non-loopback address.")]
CurveSecretOpt = Annotated[Optional[Path], typer.Option("--curve-secret", help="Server secret certificate (zmq.auth.create_certificates) to enable CURVE.")]
CurveClientsOpt = Annotated[Optional[Path], typer.Option("--curve-clients", help="Folder of authorised client public certificates (default: any client knowing the server key).")]
SummaryOpt = Annotated[Optional[Path], typer.Option("--summary-json", help="Also write the run summary to this JSON file.")]


@contextmanager
def _stop_on_signals():
    """A stop flag set by SIGINT/SIGTERM while the loop runs (previous handlers restored after)."""
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _load(artifact_path: Path, backend: str | None, device: str, threads: int | None):
    """Artifact, warmed-up backend and the backend's name; exits with the reason on failure."""
    from decoder_runtime.backends import BackendUnavailable, default_backend, make_backend
    from models.artifact import ArtifactError, load_artifact

    try:
        artifact = load_artifact(artifact_path)
        kind = backend or default_backend(device, model=artifact.config["model"]["name"])
        return artifact, make_backend(artifact, kind, device, threads), kind
    except (ArtifactError, BackendUnavailable) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def _adapter(artifact, adapt: str | None, adapt_tau: float | None) -> Adapter:
    """The `--adapt` chain, or the plain pass-through when the method resolves to none."""
    from decoder_runtime.adaptation import AdaptSettings
    from decoder_runtime.adaptation.commands import adapter_from_options
    from models.artifact import ArtifactError

    try:
        if AdaptSettings.resolve(artifact.config, method=adapt, tau_s=adapt_tau).method == "none":
            return Adapter()
        return adapter_from_options(artifact, adapt, adapt_tau)
    except (ArtifactError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:,.{digits}f}"


def _held_out_block(config: dict, session) -> tuple[int, int] | None:
    """The artifact's test block when the replayed session is the one it was trained on.

    R² over a whole training session mixes in bins the model was fitted to, which flatters it;
    the held-out figure must stand beside it.
    """
    prov = config.get("provenance") or {}
    same = (prov.get("n_bins") == session.n_bins
            and (prov.get("meta") or {}).get("nwb_identifier") == session.meta.get("nwb_identifier"))
    test = (prov.get("split") or {}).get("test")
    return (int(test[0]), int(test[1])) if same and test else None


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
                       ("handoff_us", "  of which worker hand-off (us)"), ("step_us", "model step (us)")):
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


def _run(open_source, artifact, backend, kind: str, *, device: str, zmq: str, allow_remote: bool,
         curve_secret: Path | None, curve_clients: Path | None, record: Path | None, deadline_ms: float,
         on_gap: GapPolicy, bad_bin: BadBinPolicy, late_ms: float | None, max_bins: int | None, command: str,
         adapter: Adapter, warm: WarmSettings, wait_subscriber_s: float = 0.0,
         summarize=RunResult.summary) -> tuple[RunResult, dict]:
    """Publisher, source, recorder, fallback and engine; runs until done or stopped.

    The publisher is bound (and, if asked, a subscriber awaited) before `open_source()` is
    called, so a source that starts streaming as soon as it is opened loses no message.
    `summarize(result)` makes the summary that is printed and stored in the record.
    """
    from decoder_runtime.fallback import make_fallback
    from decoder_runtime.publish import PublishError
    from decoder_runtime.record import SessionRecorder
    from models.artifact import code_version

    settings = EngineSettings(deadline_ms=deadline_ms or None, on_gap=on_gap, max_bins=max_bins)
    fallback, fallback_note = make_fallback(artifact)
    publisher = recorder = engine = source = None
    summary: dict = {"error": "the run ended abnormally"}
    try:
        if zmq != "none":
            try:
                publisher = Publisher(zmq, allow_remote=allow_remote, curve_secret=curve_secret,
                                      curve_clients=curve_clients)
            except PublishError as e:
                console.print(f"[red]error:[/red] {e}")
                raise typer.Exit(2) from None
            if not is_loopback(zmq) and curve_secret is None:
                console.print(f"[yellow]warning: publishing on {zmq} without CURVE: anyone who can reach it "
                              "can read the velocities (see --curve-secret)[/yellow]")
            if wait_subscriber_s > 0 and not publisher.wait_for_subscriber(wait_subscriber_s):
                console.print(f"[yellow]no subscriber within {wait_subscriber_s:g} s; publishing anyway[/yellow]")
        source = open_source()
        run_settings = {
            "command": command, "argv": sys.argv, "artifact": str(artifact.path), "model_id": artifact.model_id,
            "backend": kind, "device": device, "zmq": zmq, "deadline_ms": settings.deadline_ms,
            "on_gap": GapPolicy(on_gap).value, "bad_bin": BadBinPolicy(bad_bin).value, "late_ms": late_ms,
            "max_bins": max_bins, "fallback": fallback_note, "adapt": adapter.name, "source": source.describe(),
            "warm": warm.describe(),
            "code_version": code_version(), "python": sys.version.split()[0],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if record is not None:
            recorder = SessionRecorder(record, artifact.n_channels, artifact_config=artifact.config,
                                       settings=run_settings, t0_ns=time.monotonic_ns(),
                                       description=f"spikestream {command}: {artifact.model_id} on {kind}/{device}")
        engine = Engine(source, backend, model_id=artifact.model_id,
                        fill=np.asarray(artifact.config["normalization"]["x_mean"], dtype=np.float32),
                        settings=settings, publisher=publisher, recorder=recorder, fallback=fallback,
                        adapter=adapter, late_ms=late_ms, bad_bin=bad_bin, on_event=lambda line: console.print(f"[dim]{line}[/dim]"),
                        waiter=BinWaiter(warm))
        try:
            process_notes = apply_process(warm)
        except WarmError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
        console.print(f"[bold]{command}[/bold]: {artifact.model_id} on {kind}/{device}; "
                      f"deadline {settings.deadline_ms or 'none'} ms; fallback: {fallback_note}; adapt: {adapter.name}; "
                      f"publishing on {zmq}" + (f"; recording to {record}" if record else "")
                      + f"; keep-warm {'on' if warm.keep_warm else 'off'}" + "".join(f"; {n}" for n in process_notes))
        with _stop_on_signals() as stop:
            result = engine.run(stop)
        summary = summarize(result)
        return result, summary
    finally:
        if recorder is not None:
            recorder.close(summary, engine.events if engine is not None else [])
        if publisher is not None:
            publisher.close()
        if source is not None:
            source.close()


def _finish(result: RunResult, summary: dict, title: str, summary_json: Path | None) -> None:
    console.print(_summary_table(title, summary))
    for line in result.events[-20:]:
        console.print(f"[dim]{line}[/dim]")
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=2, default=float))


def serve(
    artifact: Annotated[Path, typer.Argument(help="Model artifact folder.")],
    lsl_name: Annotated[Optional[str], typer.Option("--lsl-name", help="LSL stream name to decode.")] = None,
    lsl_type: Annotated[Optional[str], typer.Option("--lsl-type", help="LSL stream type.")] = None,
    source_id: Annotated[Optional[str], typer.Option("--source-id", help="LSL source_id (lets a dropped stream be recovered).")] = None,
    backend: BackendOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    zmq: ZmqOpt = DEFAULT_ADDR,
    allow_remote: AllowRemoteOpt = False,
    curve_secret: CurveSecretOpt = None,
    curve_clients: CurveClientsOpt = None,
    record: RecordOpt = None,
    deadline_ms: DeadlineOpt = 10.0,
    on_gap: OnGapOpt = GapPolicy.RESET,
    bad_bin: BadBinOpt = BadBinPolicy.IMPUTE,
    late_ms: LateOpt = None,
    max_bins: Annotated[Optional[int], typer.Option("--max-bins", help="Stop after this many bins.")] = None,
    resolve_timeout: Annotated[float, typer.Option("--resolve-timeout", help="Seconds to look for the LSL stream.")] = 10.0,
    wait_subscriber: Annotated[float, typer.Option("--wait-subscriber", help="Wait up to this many seconds for a ZeroMQ subscriber before opening the stream.")] = 0.0,
    adapt: AdaptOpt = None,
    adapt_tau: AdaptTauOpt = None,
    keep_warm: KeepWarmOpt = True,
    warm_lead_us: WarmLeadOpt = 1000.0,
    warm_spin_us: WarmSpinOpt = None,
    pin_cpus: PinCpusOpt = None,
    realtime: RealtimeOpt = False,
    freeze_gc: FreezeGcOpt = True,
    summary_json: SummaryOpt = None,
) -> None:
    """Decode a live LSL stream of spike-count bins and publish one velocity per bin over ZeroMQ."""
    from decoder_runtime.sources import SourceError
    from decoder_runtime.sources.lsl import LSLSource

    warm = warm_settings(keep_warm, warm_lead_us, warm_spin_us, pin_cpus, realtime, freeze_gc, console)
    art, be, kind = _load(artifact, backend, device, threads)
    adapter = _adapter(art, adapt, adapt_tau)
    if not (lsl_name or lsl_type or source_id):
        console.print("[red]error:[/red] give --lsl-name, --lsl-type or --source-id to find the stream")
        raise typer.Exit(2)

    def open_source():
        try:
            return LSLSource(n_channels=art.n_channels, period=art.bin_width, name=lsl_name, type=lsl_type,
                             source_id=source_id, resolve_timeout_s=resolve_timeout)
        except SourceError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None

    result, summary = _run(open_source, art, be, kind, device=device, zmq=zmq, allow_remote=allow_remote,
                           curve_secret=curve_secret, curve_clients=curve_clients, record=record,
                           deadline_ms=deadline_ms, on_gap=on_gap, bad_bin=bad_bin, late_ms=late_ms,
                           max_bins=max_bins, command="serve", adapter=adapter, warm=warm,
                           wait_subscriber_s=wait_subscriber)
    _finish(result, summary, f"serve {art.model_id} ({kind}/{device})", summary_json)


def replay(
    paths: Annotated[list[Path], typer.Argument(
        metavar="[FILE.nwb] ARTIFACT",
        help="An NWB session and a model artifact folder; with the artifact alone, the default simulated session.")],
    speed: Annotated[str, typer.Option("--speed", help="1 = real time, a factor (e.g. 10), or 'max'.")] = "1",
    via_lsl: Annotated[bool, typer.Option("--via-lsl", help="Stream the session from a `stream-nwb` process through a real LSL outlet and decode from an inlet here.")] = False,
    zmq: ZmqOpt = DEFAULT_ADDR,
    record: RecordOpt = None,
    backend: BackendOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    deadline_ms: DeadlineOpt = 10.0,
    on_gap: OnGapOpt = GapPolicy.RESET,
    bad_bin: BadBinOpt = BadBinPolicy.IMPUTE,
    late_ms: LateOpt = None,
    max_bins: Annotated[Optional[int], typer.Option("--max-bins", help="Replay only the first N bins.")] = None,
    adapt: AdaptOpt = None,
    adapt_tau: AdaptTauOpt = None,
    keep_warm: KeepWarmOpt = True,
    warm_lead_us: WarmLeadOpt = 1000.0,
    warm_spin_us: WarmSpinOpt = None,
    pin_cpus: PinCpusOpt = None,
    realtime: RealtimeOpt = False,
    freeze_gc: FreezeGcOpt = True,
    summary_json: SummaryOpt = None,
) -> None:
    """Decode a recorded session as if it were live; end with R², latency, misses, flags and pacing."""
    from decoder_runtime.sources.lsl import LSLSource
    from decoder_runtime.sources.replay import ReplaySource
    from replay import NWBFormatError, load_session
    from replay.pacing import parse_speed
    from replay.scoring import r2_scores

    if len(paths) not in (1, 2):
        console.print("[red]error:[/red] expected [FILE.nwb] ARTIFACT")
        raise typer.Exit(2)
    nwb, artifact = (None, paths[0]) if len(paths) == 1 else paths
    warm = warm_settings(keep_warm, warm_lead_us, warm_spin_us, pin_cpus, realtime, freeze_gc, console)
    try:
        speed_v = parse_speed(speed)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    art, be, kind = _load(artifact, backend, device, threads)
    adapter = _adapter(art, adapt, adapt_tau)
    try:
        session = load_session(nwb, bin_width=art.bin_width)
    except (NWBFormatError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    if session.n_channels != art.n_channels:
        console.print(f"[red]error:[/red] the session has {session.n_channels} channels; "
                      f"the artifact decodes {art.n_channels}")
        raise typer.Exit(2)
    held_out = _held_out_block(art.config, session)
    if max_bins is not None:
        session = session.slice(0, min(max_bins, session.n_bins))
    opened: list = []
    stats_file = None
    streamer = None
    if via_lsl:
        name = f"spikestream-replay-{os.getpid()}"
        stats_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}-pacing.json"
        cmd = [sys.executable, "-m", "decoder_runtime.cli", "stream-nwb", *([str(nwb)] if nwb else []),
               "--lsl-name", name, "--source-id", name, "--speed", speed, "--bin-width", str(art.bin_width),
               "--max-bins", str(session.n_bins), "--wait-consumer", "60", "--stats-json", str(stats_file)]
        streamer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        buflen = int(session.duration) + 60 if speed_v is None else 360

        def open_source():
            opened.append(LSLSource(n_channels=art.n_channels, period=art.bin_width, name=name, source_id=name,
                                    resolve_timeout_s=60, max_buflen_s=buflen))
            return opened[-1]
    else:
        def open_source():
            opened.append(ReplaySource.from_session(session, speed_v))
            return opened[-1]

    def summarize(result: RunResult) -> dict:
        s = result.summary()
        n = result.n_bins
        if session.velocity is not None:
            s["r2"] = r2_scores(result.velocity, session.velocity[:n], session.valid[:n])
            s["r2_model"] = r2_scores(result.model_vel, session.velocity[:n], session.valid[:n])
            if held_out is not None and n > held_out[0]:
                a, b = held_out[0], min(held_out[1], n)
                s["r2_held_out"] = {**r2_scores(result.velocity[a:b], session.velocity[a:b], session.valid[a:b]),
                                    "bins": [a, b]}
        if not via_lsl:
            s["pacing"] = opened[0].pacing()
        return s

    try:
        result, summary = _run(open_source, art, be, kind, device=device, zmq=zmq, allow_remote=False,
                               curve_secret=None, curve_clients=None, record=record, deadline_ms=deadline_ms,
                               on_gap=on_gap, bad_bin=bad_bin, late_ms=late_ms, max_bins=session.n_bins,
                               command="replay", adapter=adapter, warm=warm, summarize=summarize)
    finally:
        if streamer is not None:
            try:
                streamer.wait(10)
            except subprocess.TimeoutExpired:
                streamer.terminate()
                streamer.wait(5)
    if stats_file is not None and stats_file.is_file():
        summary["pacing"] = json.loads(stats_file.read_text())
        stats_file.unlink()
    if result.n_bins < session.n_bins:
        console.print(f"[yellow]stopped after {result.n_bins:,} of {session.n_bins:,} bins; "
                      "R² covers the bins decoded[/yellow]")
    where = "default simulated session" if nwb is None else str(nwb)
    _finish(result, summary, f"replay {art.model_id} ({kind}/{device}) on {where}, speed {speed}"
            + (" via LSL" if via_lsl else ""), summary_json)


def stream_nwb(
    file: Annotated[Optional[Path], typer.Argument(help="NWB session (default: the built-in simulated session).")] = None,
    lsl_name: Annotated[str, typer.Option("--lsl-name", help="LSL stream name.")] = "spikestream",
    lsl_type: Annotated[str, typer.Option("--lsl-type", help="LSL stream type.")] = "SpikeCounts",
    source_id: Annotated[Optional[str], typer.Option("--source-id", help="LSL source_id (default: spikestream-NAME).")] = None,
    speed: Annotated[str, typer.Option("--speed", help="1 = real time, a factor, or 'max'.")] = "1",
    loop: Annotated[bool, typer.Option("--loop", help="Start over at the end, forever.")] = False,
    bin_width: Annotated[float, typer.Option("--bin-width", help="Bin width in seconds.")] = 0.025,
    max_bins: Annotated[Optional[int], typer.Option("--max-bins", help="Play only the first N bins.")] = None,
    wait_consumer: Annotated[float, typer.Option("--wait-consumer", help="Wait up to this many seconds for an inlet before playing (0: start at once).")] = 0.0,
    linger: Annotated[float, typer.Option("--linger", help="After the last bin, keep the outlet up this long while an inlet is connected.")] = 5.0,
    stats_json: Annotated[Optional[Path], typer.Option("--stats-json", help="Write the pacing-error statistics here at exit.")] = None,
) -> None:
    """Play a session into an LSL outlet (float32, one sample per bin, nominal rate 1/bin width)."""
    import pylsl

    from decoder_runtime.sources.lsl import CountsOutlet
    from replay import NWBFormatError, load_session
    from replay.pacing import Pacer, pacing_stats, parse_speed

    try:
        pacer = Pacer(bin_width, parse_speed(speed))
        session = load_session(file, bin_width=bin_width)
    except (NWBFormatError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    counts = session.counts[:max_bins] if max_bins else session.counts
    n = counts.shape[0]
    outlet = CountsOutlet(lsl_name, session.n_channels, bin_width, type=lsl_type,
                          source_id=source_id or f"spikestream-{lsl_name}",
                          max_buffered_s=max(360, int(n * bin_width) + 60),
                          channel_labels=[str(u) for u in session.unit_ids])
    console.print(f"stream-nwb: {lsl_name!r} ({session.n_channels} channels, {1 / bin_width:g} Hz), "
                  f"{n:,} bins at speed {speed}{' (looping)' if loop else ''}")
    if wait_consumer > 0 and not outlet.wait_for_consumers(wait_consumer):
        console.print(f"[red]error:[/red] no inlet connected within {wait_consumer:g} s")
        raise typer.Exit(1)
    lateness = np.zeros(n, dtype=np.int64)
    k = 0
    with _stop_on_signals() as stop:
        t0_ns = pacer.start()
        lsl_t0 = pylsl.local_clock()
        while not stop.is_set() and (loop or k < n):
            late = pacer.wait(k)
            # a bin is stamped with its scheduled time, as an acquisition system stamps its
            # bins: regular, whatever this process's own scheduling jitter ("max": push time)
            outlet.push(counts[k % n], lsl_t0 + (pacer.deadline_ns(k) - t0_ns) * 1e-9 if pacer.paced else 0.0)
            lateness[k % n] = late
            k += 1
        deadline = time.monotonic() + linger
        while not stop.is_set() and outlet.have_consumers() and time.monotonic() < deadline:
            time.sleep(0.05)
    stats = pacing_stats(lateness[:min(k, n)]) if pacer.paced else {}
    outlet.close()
    if stats_json is not None:
        stats_json.write_text(json.dumps(stats))
    console.print(f"stream-nwb: pushed {k:,} bins" + (
        f"; pacing error mean {stats['mean_us']:.1f} us, sd {stats['std_us']:.1f}, p99 {stats['p99_us']:.1f}"
        if stats else ""))


_SAVED = ("seq", "t_src", "vx", "vy", "lat_us", "flags", "t_arr", "recv_ns", "recv_lsl")


def _listen_table(addr: str, got: dict[str, list], missing: int, rate: float) -> Table:
    table = Table(title=f"listening on {addr}", show_header=True, header_style="bold")
    for col in ("received", "missing seq", "rate (Hz)", "runtime lat p50/p99 (us)", "arrival→receive p50/p99 (us)",
                "last velocity", "flags seen"):
        table.add_column(col, justify="right")
    n = len(got["seq"])
    if n == 0:
        table.add_row("0", "0", "-", "-", "-", "-", "-")
        return table
    lat = np.asarray(got["lat_us"][-1000:])
    e2e = (np.asarray(got["recv_ns"][-1000:]) - np.asarray(got["t_arr"][-1000:])) / 1e3
    flags = 0
    for f in got["flags"][-1000:]:
        flags |= f
    table.add_row(f"{n:,}", f"{missing:,}", f"{rate:.1f}",
                  f"{np.percentile(lat, 50):.0f} / {np.percentile(lat, 99):.0f}",
                  f"{np.percentile(e2e, 50):.0f} / {np.percentile(e2e, 99):.0f}",
                  f"({got['vx'][-1]:+.3f}, {got['vy'][-1]:+.3f})", ", ".join(flag_names(flags)) or "none")
    return table


def listen(
    zmq: Annotated[str, typer.Option("--zmq", help="ZeroMQ endpoint of the runtime's PUB socket.")] = DEFAULT_ADDR,
    save: Annotated[Optional[Path], typer.Option("--save", help="Save what was received to this .npz file.")] = None,
    count: Annotated[Optional[int], typer.Option("--count", help="Stop after N messages.")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Stop after this many seconds without a message.")] = None,
    curve_server_key: Annotated[Optional[Path], typer.Option("--curve-server-key", help="The server's public certificate (enables CURVE).")] = None,
    curve_client_cert: Annotated[Optional[Path], typer.Option("--curve-client-cert", help="This client's secret certificate (default: a fresh key pair).")] = None,
) -> None:
    """Subscribe to a runtime's velocities: a live table of rate, latency and the last velocity."""
    import pylsl
    import zmq as zmq_lib

    from decoder_runtime.messages import MessageError, unpack
    from decoder_runtime.publish import PublishError

    try:
        sock = connect_subscriber(zmq, server_key=curve_server_key, client_cert=curve_client_cert)
    except PublishError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    got: dict[str, list] = {k: [] for k in _SAVED}
    missing = bad = 0
    last_seq = None
    rate_window: list[int] = []
    quiet_since = time.monotonic()
    with _stop_on_signals() as stop, Live(_listen_table(zmq, got, 0, 0.0), console=console,
                                          refresh_per_second=4) as live:
        next_draw = time.monotonic()
        while not stop.is_set() and (count is None or len(got["seq"]) < count):
            if sock.poll(100):
                while count is None or len(got["seq"]) < count:
                    try:
                        _, body = sock.recv_multipart(zmq_lib.NOBLOCK)
                    except zmq_lib.Again:
                        break
                    recv_ns, recv_lsl = time.monotonic_ns(), pylsl.local_clock()
                    try:
                        msg = unpack(body)
                    except MessageError:
                        bad += 1
                        continue
                    if last_seq is not None and msg["seq"] > last_seq + 1:
                        missing += msg["seq"] - last_seq - 1
                    last_seq = msg["seq"]
                    for key, value in zip(_SAVED, (msg["seq"], msg["t_src"], msg["vel"][0], msg["vel"][1],
                                                   msg["lat_us"], msg["flags"], msg["t_arr"], recv_ns, recv_lsl)):
                        got[key].append(value)
                    rate_window.append(recv_ns)
                quiet_since = time.monotonic()
            elif timeout is not None and time.monotonic() - quiet_since > timeout:
                break
            now = time.monotonic()
            if now >= next_draw:
                cutoff = time.monotonic_ns() - 1_000_000_000
                rate_window = [t for t in rate_window if t > cutoff]
                live.update(_listen_table(zmq, got, missing, float(len(rate_window))))
                next_draw = now + 0.25
        live.update(_listen_table(zmq, got, missing, float(len(rate_window))))
    sock.close()
    if bad:
        console.print(f"[yellow]{bad} messages were not velocity messages of this version and were skipped[/yellow]")
    if save is not None:
        dtypes = {"seq": np.int64, "flags": np.int64, "t_arr": np.int64, "recv_ns": np.int64}
        np.savez(save, **{k: np.asarray(v, dtype=dtypes.get(k, np.float64)) for k, v in got.items()})
        console.print(f"saved {len(got['seq']):,} messages to {save}")
