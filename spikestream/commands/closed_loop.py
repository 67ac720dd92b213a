"""`spikestream closed-loop`: a simulated participant drives a cursor task through the runtime."""
from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spikestream.commands.adaptation import AdaptOpt, AdaptTauOpt
from spikestream.commands.data import with_drift_options
from spikestream.commands.runtime import BackendOpt, DeviceOpt, ThreadsOpt, escape

console = Console(stderr=True)


class TaskKind(str, Enum):
    center_out = "center-out"
    grid = "grid"


def _print_summary(summary: dict) -> None:
    m = summary["metrics"]
    table = Table(title=f"closed loop ({summary['mode']}): {summary['model']} on {m['task']}", show_header=False)

    def fmt(x, digits=3):
        return "-" if x is None else f"{x:.{digits}f}"

    table.add_row("trials (success / timeout)", f"{m['n_trials']} ({m['n_success']} / {m['n_timeout']})")
    table.add_row("success rate", fmt(m["success_rate"]))
    table.add_row("time to target, median / mean (s)", f"{fmt(m['time_to_target_s'], 2)} / {fmt(m['time_to_target_mean_s'], 2)}")
    table.add_row("path efficiency (median)", fmt(m["path_efficiency"]))
    table.add_row("dial-in time (median, s) / re-entries (mean)", f"{fmt(m['dial_in_s'], 2)} / {fmt(m['re_entries_mean'], 2)}")
    table.add_row("Fitts throughput (bits/s)", fmt(m["fitts_bps"]))
    if "bitrate_bps" in m:
        table.add_row("achieved bit rate (bits/s)", fmt(m["bitrate_bps"]))
    lat = summary["latency_us"]
    if lat.get("n"):
        table.add_row("decoder latency per bin p50 / p99 (us)", f"{lat['p50']:.0f} / {lat['p99']:.0f}")
    if "unanswered_bins" in lat:
        table.add_row("bins not answered in time (cursor held)", str(lat["unanswered_bins"]))
    console.print(table)


def _run_blocks(opts, rounds: int, method: str, out: Optional[Path]) -> None:
    """`--recalibrate K`: blocks with recalibration between them (benchmarks.closed_loop_blocks)."""
    from benchmarks.closed_loop_blocks import run_blocks
    from models.artifact import ArtifactError

    if out is None:
        console.print("[red]error:[/red] --recalibrate needs --out DIR (each block's record and artifact go there)")
        raise typer.Exit(2)
    table = Table(title=f"closed loop with recalibration ({method}) every block: {opts.artifact}")
    for col in ("block", "success", "time to target (s)", "path eff.", "Fitts (bits/s)", "held-out R² new / parent"):
        table.add_column(col, justify="right")

    def row(b: int, r: dict) -> None:
        rc = r["recalibration"]
        console.print(f"block {b}: success {r['success_rate']:.2f}, time to target {r['time_to_target_s'] or float('nan'):.2f} s")
        table.add_row(str(b), f"{r['success_rate']:.2f}", f"{r['time_to_target_s'] or float('nan'):.2f}",
                      f"{r['path_efficiency'] or float('nan'):.3f}", f"{r['fitts_bps'] or float('nan'):.3f}",
                      "-" if rc is None else f"{rc['test_r2']:.3f} / {rc['parent_test_r2']:.3f}")

    try:
        run_blocks(opts, rounds, out, method=method, on_block=row)
    except (ValueError, RuntimeError, OSError, ArtifactError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    console.print(table)
    console.print(f"blocks: {out / 'blocks.json'}")


@with_drift_options
def closed_loop(
    artifact: Annotated[Path, typer.Argument(help="Model artifact folder (RUN) that decodes the session.")],
    task: Annotated[TaskKind, typer.Option("--task", help="center-out(-and-back) to 8 targets, or a random-target grid (bit rate).")] = TaskKind.center_out,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials to run (center-out counts out and back trials).")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Participant, targets, spikes: same seed, same session.")] = 0,
    population_seed: Annotated[Optional[int], typer.Option("--population-seed", help="The neurons (default: the artifact's training population when simulated, else 0).")] = None,
    live: Annotated[bool, typer.Option("--live", help="Real time over pylsl -> `serve` (its own process) -> ZeroMQ, instead of the lock-step engine in process.")] = False,
    connect: Annotated[bool, typer.Option("--connect", help="With --live: use a `serve` already running on --lsl-name / --zmq instead of starting one.")] = False,
    lsl_name: Annotated[Optional[str], typer.Option("--lsl-name", help="--live: the LSL stream to push bins to (default: a name of our own).")] = None,
    zmq: Annotated[str, typer.Option("--zmq", help="--live: the runtime's velocity address; fast: also publish velocities here if given ('none': do not).")] = "none",
    task_zmq: Annotated[Optional[str], typer.Option("--task-zmq", help="Publish the task state (topic 'task') here (--live default tcp://127.0.0.1:5556; 'none': do not).")] = None,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    adapt: AdaptOpt = None,
    adapt_tau: AdaptTauOpt = None,
    deadline_ms: Annotated[Optional[float], typer.Option("--deadline-ms", help="Latency bound per bin (default: 0 = inline, deterministic, in fast mode; 10 live).")] = None,
    target_radius: Annotated[float, typer.Option("--target-radius", help="mm")] = 20.0,
    target_distance: Annotated[float, typer.Option("--target-distance", help="mm")] = 100.0,
    cursor_gain: Annotated[float, typer.Option("--cursor-gain", help="cursor velocity = gain x decoded velocity")] = 1.0,
    hold: Annotated[float, typer.Option("--hold", help="s")] = 0.5,
    timeout: Annotated[float, typer.Option("--timeout", help="s")] = 10.0,
    visual_delay: Annotated[float, typer.Option("--visual-delay", help="s: the participant's visual feedback delay")] = 0.2,
    drift: object = None,  # a replay.drift.DriftSpec or None, from the drift options
    record: Annotated[Optional[Path], typer.Option("--record", help="Write the session (counts, intention, decoded velocity, cursor, target, trials) to this NWB file.")] = None,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Write the run's summary here.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for trajectories.png, trials.csv and summary.json.")] = None,
    assist: Annotated[float, typer.Option("--assist", min=0.0, max=1.0, help="Computer assist: the cursor moves with (1 - A) x decoded + A x the ideal velocity (1: an observation block). With --recalibrate, block 0 only.")] = 0.0,
    recalibrate: Annotated[int, typer.Option("--recalibrate", min=0, help="K > 0: run K + 1 blocks, recalibrating the decoder from each block's record before the next (needs --out).")] = 0,
    recalibrate_method: Annotated[str, typer.Option("--recalibrate-method", help="Labels for --recalibrate: refit, or intention (the simulated truth: a check).")] = "refit",
) -> None:
    """Run a closed-loop cursor session: a simulated participant, its neurons, the runtime, the cursor."""
    from benchmarks.closed_loop_session import SessionOptions, run_session

    opts = SessionOptions(
        artifact=artifact, task=task.value, trials=trials, seed=seed, population_seed=population_seed, live=live,
        connect=connect, lsl_name=lsl_name or f"spikestream-cl-{os.getpid()}", zmq=None if zmq == "none" else zmq,
        task_zmq=task_zmq, backend=backend, device=device or "cpu", threads=threads, adapt=adapt, adapt_tau=adapt_tau,
        deadline_ms=deadline_ms, target_radius=target_radius, target_distance=target_distance,
        cursor_gain=cursor_gain, hold=hold, timeout=timeout, visual_delay=visual_delay,
        drift=drift, assist=assist)
    if recalibrate:
        _run_blocks(opts, recalibrate, recalibrate_method, out)
        return
    with Progress(TextColumn("[bold]closed loop[/bold] trials"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        job = bar.add_task("trials", total=trials)
        try:
            summary = run_session(opts, record=record, out=out,
                                  on_bin=lambda w: w.k % 40 or bar.update(job, completed=len(w.task.trials) - 1))
        except (ValueError, RuntimeError, OSError) as e:
            console.print(f"[red]error:[/red] {escape(str(e))}")
            raise typer.Exit(2) from None
    _print_summary(summary)
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2, default=float))
    if record is not None:
        critical = summary.get("record_critical", [])
        console.print(f"record: {record} (nwbinspector: {len(critical)} critical findings)")
