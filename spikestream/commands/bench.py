"""`spikestream bench`: per-bin latency of every model × backend × device, and more.

The defaults are the full benchmark (20,000 bins per variant, every model and backend
this machine can run, scaling and end to end); `--quick` is a smoke test that finishes
in seconds.
"""
from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console



def _csv(value: str | None, what: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise typer.BadParameter(f"empty {what} list")
    return items


def _ints(value: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in _csv(value, what) or []]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {value!r}") from None
    if any(v <= 0 for v in out):
        raise typer.BadParameter(f"{what} must be positive, got {value!r}")
    return out


def _speeds(value: str) -> list[str]:
    from replay.pacing import parse_speed

    speeds = _csv(value, "replay speed") or []
    for v in speeds:
        try:
            parse_speed(v)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    return speeds


def _command_line() -> str:
    """The command as typed, for the report's header (the config block has every value)."""
    argv = sys.argv[1:]
    return "spikestream " + shlex.join(argv) if argv[:1] == ["bench"] else "spikestream bench (invoked in-process)"


# Long only by its option declarations (one per line); the body builds a config and makes one call.
def bench(
    models: str = typer.Option(None, "--model", help="comma-separated models (default: every model that imports here)"),
    backends: str = typer.Option(None, "--backend", help="comma-separated backends (default: all; unavailable ones are listed)"),
    devices: str = typer.Option(None, "--device", help="comma-separated devices, e.g. cpu,cuda (default: cpu, plus cuda if present)"),
    bins: int = typer.Option(20_000, min=1, help="timed bins per variant"),
    warmup: int = typer.Option(500, min=1, help="untimed warm-up bins per variant"),
    round_size: int = typer.Option(500, "--round", min=1, help="bins per variant per interleaved round"),
    pace_hz: float = typer.Option(None, "--pace-hz", min=0.001, help="step each variant once per 1/HZ s (all variants in each period, in turn) instead of back to back, e.g. 40 for 25 ms bins; takes bins/HZ seconds"),
    deadline_ms: list[float] = typer.Option([1.0], "--deadline-ms", help="deadline to count misses against, ms (repeatable; the bin width is always added)"),
    threads: int = typer.Option(1, min=1, help="intra-op threads for torch and ONNX Runtime"),
    seed: int = typer.Option(0, help="seed of the untrained models' random init"),
    artifact: list[Path] = typer.Option([], "--artifact", help="a trained artifact to bench too (repeatable)"),
    untrained: bool = typer.Option(True, "--untrained/--no-untrained", help="bench default-size untrained models of each kind"),
    e2e: bool = typer.Option(True, "--e2e/--no-e2e", help="LSL outlet → serve → ZeroMQ subscriber, end to end"),
    e2e_bins: int = typer.Option(2_000, min=10, help="bins streamed end to end (at the real 25 ms pace)"),
    runtime: bool = typer.Option(True, "--runtime/--no-runtime", help="`replay --speed max`: throughput and the runtime's own work per stage"),
    runtime_model: str = typer.Option("lstm", help="model that the runtime and end-to-end runs serve"),
    runtime_backend: str = typer.Option(None, help="backend for the runtime and end-to-end runs (default: the model's fastest step)"),
    replay_speed: str = typer.Option("max", help="comma-separated `replay --speed` values for the runtime runs, e.g. max,1"),
    runtime_bins: int = typer.Option(None, min=1, help="bins per replay run (default: --bins)"),
    replay_seconds: float = typer.Option(60.0, min=0.1, help="a replay at a finite --replay-speed runs at most this long (fewer bins)"),
    realpace: bool = typer.Option(True, "--realpace/--no-realpace", help="the runtime at 40 Hz beside max speed (keep-warm off/on), serve beside a bare LSL → ZeroMQ relay"),
    realpace_bins: int = typer.Option(2_000, min=10, help="measured bins per real-pace variant (40 Hz: 25 ms each)"),
    realpace_rounds: int = typer.Option(2, min=1, help="rounds the real-pace variants alternate in"),
    scaling: bool = typer.Option(True, "--scaling/--no-scaling", help="channel-count and width sweeps"),
    scaling_model: str = typer.Option("lstm", help="model swept for scaling"),
    scaling_backend: str = typer.Option(None, help="backend for the sweeps (default: the model's fastest)"),
    scaling_device: str = typer.Option(None, help="device for the sweeps (default: the last of --device, i.e. the GPU when there is one)"),
    scaling_bins: int = typer.Option(5_000, min=1, help="timed bins per scaling variant"),
    channels: str = typer.Option("96,1024,4096", help="channel counts swept"),
    widths: str = typer.Option("64,128,256,512", help="model widths swept"),
    quick: bool = typer.Option(False, "--quick", help="smoke test: lstm only, 500 bins, small sweeps, 300 bins end to end"),
    out: Path = typer.Option(None, help="write results.json, latencies.npz, report.md and PNG plots here"),
    old_models: str = typer.Option(None, "--models", hidden=True),  # names before one vocabulary; one release
    old_backends: str = typer.Option(None, "--backends", hidden=True),
    old_devices: str = typer.Option(None, "--devices", hidden=True),
    old_deadline_us: list[float] = typer.Option([], "--deadline-us", hidden=True),
) -> None:
    """Measure per-bin decoding latency, side by side, the way a rig would feel it."""
    models, backends, devices = models or old_models, backends or old_backends, devices or old_devices
    deadline_us = [d * 1e3 for d in deadline_ms] if not old_deadline_us else list(old_deadline_us)
    from benchmarks import BenchError, report
    from benchmarks.suite import BenchConfig, run_bench

    cfg = BenchConfig(
        models=_csv(models, "models"), backends=_csv(backends, "backends"), devices=_csv(devices, "devices"),
        bins=bins, warmup=warmup, round_size=round_size, pace_hz=pace_hz, deadlines_us=list(deadline_us),
        threads=threads, seed=seed, replay_speeds=_speeds(replay_speed), runtime_bins=runtime_bins,
        replay_seconds=replay_seconds,
        artifacts=list(artifact), untrained=untrained, scaling=scaling, scaling_model=scaling_model,
        scaling_backend=scaling_backend, scaling_device=scaling_device, scaling_bins=scaling_bins,
        channels=_ints(channels, "channels"), widths=_ints(widths, "widths"), e2e=e2e, e2e_bins=e2e_bins,
        runtime=runtime, runtime_model=runtime_model, runtime_backend=runtime_backend, command=_command_line(),
        realpace=realpace, realpace_bins=realpace_bins, realpace_rounds=realpace_rounds,
    )
    if quick:
        cfg.models = cfg.models or ["lstm"]
        cfg.bins, cfg.warmup, cfg.round_size = min(cfg.bins, 500), min(cfg.warmup, 50), min(cfg.round_size, 100)
        cfg.scaling_bins, cfg.e2e_bins = min(cfg.scaling_bins, 300), min(cfg.e2e_bins, 300)
        cfg.realpace_bins, cfg.realpace_rounds = min(cfg.realpace_bins, 200), 1
        cfg.channels, cfg.widths = [c for c in cfg.channels if c <= 1024], cfg.widths[:2]
    if not cfg.untrained and not cfg.artifacts:
        raise typer.BadParameter("--no-untrained needs at least one --artifact")
    console = Console(log_path=False)
    if not console.is_terminal:  # a log file or pipe: keep the wide tables unwrapped
        console = Console(width=200, log_path=False)
    with tempfile.TemporaryDirectory(prefix="spikestream-bench-") as work:
        try:
            results, raw = run_bench(cfg, Path(work), log=lambda s: console.log(s))
        except BenchError as e:
            raise typer.BadParameter(str(e)) from None
    console.print(f"machine: {report.machine_line(results['machine'])}")
    for w in results["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    for table in report.rich_tables(results):
        console.print(table)
    for reason, names in report.skipped_groups(results):
        console.print(f"[dim]not measured ({reason}): {', '.join(names)}[/]")
    for t in report.target_rows(results):
        mark = "[green]met[/]" if t["met"] else "[red]not met[/]"
        console.print(f"target {t['target']}: {t['measured']} ({t['variant']}) {mark}")
    if out is not None:
        files = report.write_outputs(results, raw, out)
        console.print(f"wrote {', '.join(str(f) for f in files)}")


def evaluate_drift(
    model: Annotated[list[str], typer.Option("--model", "-m", help="model to evaluate (repeatable)")] = ["lstm", "wiener"],  # noqa: B006
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="runs/<model> is taken if present, else trained there")] = Path("runs/drift"),
    seeds: Annotated[int, typer.Option("--seeds", help="evaluation seeds (training seeds and later days)")] = 3,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="epochs when a network must be trained")] = None,
    minutes: Annotated[float, typer.Option("--minutes", help="length of each later-day session")] = 8.0,
    kinds: Annotated[Optional[str], typer.Option("--kinds", help="comma list of drift kinds: none, baseline, gain, dead10, dead30, noisy, combined (default: all)")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="comma list of adaptation methods: none, health, norm, norm+health, full (default: all)")] = None,
    tau: Annotated[float, typer.Option("--adapt-tau", help="running-normalisation time constant, s")] = 60.0,
    out: Annotated[Path, typer.Option("--out", help="where drift.json and drift.md go")] = Path("benchmarks/results"),
    workers: Annotated[int, typer.Option("--workers", min=1, help="(model, seed) tasks at once (> 1: on a local Ray "
                                                                  "instance, the 'cluster' extra)")] = 1,
) -> None:
    """Streaming R² on later simulated days with each kind of drift, per adaptation method."""
    from benchmarks.drift import DRIFTS, DriftConfig, DriftEvalError, Progress, markdown, run, take_or_train
    from decoder_runtime.adaptation import METHODS
    from models.artifact import ArtifactError

    console = Console()
    progress = Progress(console.print)
    argv = sys.argv[1:]
    command = "spikestream " + shlex.join(argv) if argv[:1] == ["evaluate-drift"] else "evaluate-drift (in-process)"
    runner = None
    if workers != 1:  # training and evaluation tasks on a local Ray instance
        from functools import partial

        from benchmarks.executor import Executor, run_in_order

        runner = partial(run_in_order, executor=Executor(workers=workers, console=console), title="drift tasks")
    try:
        cfg = DriftConfig(
            runs={m: take_or_train(m, runs_dir / m, seeds, epochs, progress, runner) for m in model},
            seeds=seeds, minutes=minutes, tau_s=tau, command=command,
            kinds=tuple(kinds.split(",")) if kinds else tuple(DRIFTS),
            methods=tuple(methods.split(",")) if methods else tuple(METHODS),
        )
        results = run(cfg, out, progress, runner)
    except (DriftEvalError, ArtifactError, ValueError, OSError, RuntimeError) as e:
        console.print(f"[red]evaluate-drift: {e}[/red]")
        raise typer.Exit(1) from None
    console.print(markdown(results))
    console.print(f"wrote {out / 'drift.md'} and {out / 'drift.json'}")
