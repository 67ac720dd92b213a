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

import typer
from rich.console import Console

from benchmarks import BenchError, plots, report
from benchmarks.runtime import MODEL_STEP, OWN_WORK
from benchmarks.suite import BenchConfig, run_bench


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


def _command_line() -> str:
    """The command as typed, for the report's header (the config block has every value)."""
    argv = sys.argv[1:]
    return "spikestream " + shlex.join(argv) if argv[:1] == ["bench"] else "spikestream bench (invoked in-process)"


def write_outputs(results: dict, raw: dict, out: Path) -> list[Path]:
    """results.json, latencies.npz, PNG plots and report.md into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    deadlines = results["config"]["deadlines_us"]
    figs = plots.step_plots(results.get("step") or [], raw, out, deadlines)
    figs += plots.scaling_plot(results.get("scaling_channels") or [], results.get("scaling_width") or [], out)
    overhead = [r for r in results.get("runtime_overhead") or [] if r["stage"] in (OWN_WORK, MODEL_STEP)]
    figs += plots.distribution_plot(overhead, raw, out, "runtime_overhead", "runtime per bin, by stage",
                                    lambda r: f"{r['run']} · {r['backend']}/{r['device']}: {r['stage']}")
    figs += plots.distribution_plot(results.get("e2e") or [], raw, out, "e2e", "LSL push → ZeroMQ receive",
                                    lambda r: f"{r['measure']} · {r['backend']}/{r['device']}")
    figs += plots.distribution_plot([r for r in results.get("realpace") or [] if r["measure"] != MODEL_STEP], raw, out,
                                    "realpace", "real pace (40 Hz) vs max speed", lambda r: f"{r['run']}: {r['measure']}")
    return [report.write_json(results, out), report.write_raw(raw, out), report.write_markdown(results, figs, out), *figs]


def bench(
    models: str = typer.Option(None, help="comma-separated models (default: every model that imports here)"),
    backends: str = typer.Option(None, help="comma-separated backends (default: all; unavailable ones are listed)"),
    devices: str = typer.Option(None, help="comma-separated devices, e.g. cpu,cuda (default: cpu, plus cuda if present)"),
    bins: int = typer.Option(20_000, min=1, help="timed bins per variant"),
    warmup: int = typer.Option(500, min=1, help="untimed warm-up bins per variant"),
    round_size: int = typer.Option(500, "--round", min=1, help="bins per variant per interleaved round"),
    deadline_us: list[float] = typer.Option([1000.0], "--deadline-us", help="deadline to count misses against (repeatable; the bin width is always added)"),
    threads: int = typer.Option(1, min=1, help="intra-op threads for torch and ONNX Runtime"),
    seed: int = typer.Option(0, help="seed of the untrained models' random init"),
    artifact: list[Path] = typer.Option([], "--artifact", help="a trained artifact to bench too (repeatable)"),
    untrained: bool = typer.Option(True, "--untrained/--no-untrained", help="bench default-size untrained models of each kind"),
    e2e: bool = typer.Option(True, "--e2e/--no-e2e", help="LSL outlet → serve → ZeroMQ subscriber, end to end"),
    e2e_bins: int = typer.Option(2_000, min=10, help="bins streamed end to end (at the real 25 ms pace)"),
    runtime: bool = typer.Option(True, "--runtime/--no-runtime", help="`replay --speed max`: throughput and the runtime's own work per stage"),
    runtime_model: str = typer.Option("lstm", help="model that the runtime and end-to-end runs serve"),
    runtime_backend: str = typer.Option(None, help="backend for the runtime and end-to-end runs (default: the model's fastest step)"),
    realpace: bool = typer.Option(True, "--realpace/--no-realpace", help="the runtime at 40 Hz beside max speed (keep-warm off/on), serve beside a bare LSL → ZeroMQ relay"),
    realpace_bins: int = typer.Option(2_000, min=10, help="measured bins per real-pace variant (40 Hz: 25 ms each)"),
    realpace_rounds: int = typer.Option(2, min=1, help="rounds the real-pace variants alternate in"),
    scaling: bool = typer.Option(True, "--scaling/--no-scaling", help="channel-count and width sweeps"),
    scaling_model: str = typer.Option("lstm", help="model swept for scaling"),
    scaling_backend: str = typer.Option(None, help="backend for the sweeps (default: the model's fastest)"),
    scaling_device: str = typer.Option(None, help="device for the sweeps (default: the last of --devices, i.e. the GPU when there is one)"),
    scaling_bins: int = typer.Option(5_000, min=1, help="timed bins per scaling variant"),
    channels: str = typer.Option("96,1024,4096", help="channel counts swept"),
    widths: str = typer.Option("64,128,256,512", help="model widths swept"),
    quick: bool = typer.Option(False, "--quick", help="smoke test: lstm only, 500 bins, small sweeps, 300 bins end to end"),
    out: Path = typer.Option(None, help="write results.json, latencies.npz, report.md and PNG plots here"),
) -> None:
    """Measure per-bin decoding latency, side by side, the way a rig would feel it."""
    cfg = BenchConfig(
        models=_csv(models, "models"), backends=_csv(backends, "backends"), devices=_csv(devices, "devices"),
        bins=bins, warmup=warmup, round_size=round_size, deadlines_us=list(deadline_us), threads=threads, seed=seed,
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
        files = write_outputs(results, raw, out)
        console.print(f"wrote {', '.join(str(f) for f in files)}")
