"""`spikestream train` and `spikestream evaluate`: the training CLI, with rich output."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Written out so `--help` needs no torch import (tests/test_cli.py checks it against models.registry).
MODEL_NAMES = ("lstm", "transformer", "rvq", "mamba", "wiener", "kalman")

console = Console()


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def results_table(summary: dict) -> Table:
    """One row for the trained model (mean ± std over seeds) and one per baseline (same split)."""
    from training.report import fmt_stat

    m = summary["metrics"]
    n = summary["n_seeds"]
    table = Table(title=f"held-out test block, streamed through step ({n} seed{'s' if n > 1 else ''})",
                  caption="R²: equal average of vx, vy (headline); vw: variance-weighted; trial: per-trial "
                          "median / 5th pct; beats: mean R² above the Wiener / Kalman baseline (same split)")
    ci = m["r2"].get("ci95")
    cols = ["model", "R²", *(["95% CI"] if ci else []), "R² vw", "trial med/p5", "params", "train s", "beats W/K"]
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    beats = summary["beats_baselines"]
    verdict = "/".join(("yes" if beats[b] else "[red]NO[/red]") if b in beats else "–" for b in ("wiener", "kalman"))
    trial = f"{fmt_stat(m.get('trial_r2_median'), 2, False)} / {fmt_stat(m.get('trial_r2_p5'), 2, False)}"
    table.add_row(summary["model"], fmt_stat(m["r2"]), *([f"[{ci[0]:.3f}, {ci[1]:.3f}]"] if ci else []),
                  fmt_stat(m["r2_vw"]), trial, f"{int(m['n_params']['mean']):,}", fmt_stat(m["seconds"], 0), verdict)
    for name, b in summary["baselines_test"].items():
        if name != summary["model"]:
            trial = f"{_num(b.get('trial_r2_median'), 2)} / {_num(b.get('trial_r2_p5'), 2)}"
            table.add_row(f"[dim]{name}[/dim]", _num(b["r2"]), *([""] if ci else []), _num(b["r2_vw"]), trial,
                          "", "", "")
    return table


def rvq_table(summary: dict) -> Table:
    from training.report import fmt_stat

    m = summary["metrics"]
    table = Table(title="RVQ codebooks on the held-out block (target: utilisation ≥ 50% per stage)")
    for col in ("stage", "utilisation", "perplexity"):
        table.add_column(col, justify="right")
    for s, (u, p) in enumerate(zip(m["utilisation"], m["perplexity"])):
        table.add_row(str(s), fmt_stat(u, 2), fmt_stat(p, 1))
    return table


# Long only by its option declarations (one per line); the body builds a config and makes one call.
def train(
    model: str = typer.Option(..., "--model", "-m", help=f"one of: {', '.join(MODEL_NAMES)}"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder, e.g. runs/NAME"),
    data: Path | None = typer.Option(None, "--data", help="NWB session (default: the simulated session)"),
    task: str = typer.Option("maze", "--task", help="simulated default session: maze or rtt"),
    seeds: int = typer.Option(1, "--seeds", help="train seeds 0..N-1 (N > 1: runs/NAME/seed-K each)"),
    epochs: int | None = typer.Option(None, "--epochs", help="maximum epochs (default: per model)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="z-space augmentation (on by default)"),
    threads: int = typer.Option(1, "--threads", help="torch intra-op threads (1 measured fastest on a shared 2-core CPU)"),
    workers: int = typer.Option(1, "--workers", help="seeds trained at once (> 1: on a local Ray instance, "
                                                     "the 'cluster' extra)"),
) -> None:
    """Train a decoder on a chronological split; write the artifact(s), plots and summary.json.

    Held-out metrics are the test block streamed through `step` from `init_state`, the
    number the runtime delivers. Networks also report whether they beat the Wiener and
    Kalman baselines fitted on the same split.
    """
    from training.report import fmt_stat
    from training.runs import Hooks, RunSpec, load_data, train_run

    try:
        spec = RunSpec(model=model, out=out, seeds=seeds, epochs=epochs, device=device, augment=augment,
                       threads=threads)
        with console.status("loading session"):
            session, prov = load_data(data, task)
    except (ValueError, OSError) as e:
        console.print(f"[red]train: {e}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{session.source}: {session.n_bins} bins × {session.n_channels} channels "
                  f"({session.duration / 60:.1f} min), training {model}, {seeds} seed(s)")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
    bars: dict[str, int] = {}

    def seed_start(seed: int, total: int) -> None:
        bars["current"] = progress.add_task(f"{model} seed {seed}", total=total, info="")

    def epoch(record: dict) -> None:
        phase = f" {record['phase']}" if "phase" in record else ""
        progress.update(bars["current"], advance=1,
                        info=f"val R² {record['val_r2']:.3f}  loss {record['train_loss']:.3f}{phase}")

    def seed_end(record: dict) -> None:
        if "current" in bars:  # early stopping ends a seed before its planned epochs
            progress.update(bars["current"], total=record.get("epochs_run"), completed=record.get("epochs_run"))
        console.print(f"seed {record['seed']}: test R² {record['r2']:.4f} (vw {record['r2_vw']:.4f}) "
                      f"in {record['seconds']:.0f} s -> {record['path']}")

    try:
        if workers == 1:
            with progress:
                summary = train_run(spec, session, prov, Hooks(seed_start, epoch, seed_end))
        else:  # seeds in other processes: the executor's bar instead of per-epoch progress
            from benchmarks.executor import Executor, run_in_order

            runner = partial(run_in_order, executor=Executor(workers=workers, console=console), title=f"{model} seeds")
            summary = train_run(spec, session, prov, run_tasks=runner)
            for record in summary["runs"]:
                seed_end(record)
    except (ValueError, FloatingPointError, RuntimeError) as e:
        console.print(f"[red]train failed: {e}[/red]")
        raise typer.Exit(1) from None
    console.print(results_table(summary))
    if model == "rvq":
        console.print(rvq_table(summary))
        gap = summary["metrics"]["r2_gap_to_encoder"]
        console.print(f"pre-trained encoder R² {fmt_stat(summary['metrics']['encoder_r2'])}; "
                      f"quantised minus encoder gap {fmt_stat(gap)} (target ≤ 0.02)")
    console.print(f"summary: {out / 'summary.json'}")
    if summary["collapsed_seeds"]:
        console.print(f"[red bold]RVQ codebook collapse in seed(s) {summary['collapsed_seeds']}: "
                      "this run is a failure, not a result[/red bold]")
        raise typer.Exit(1)
    if not summary["all_seeds_beat_baselines"] and model not in ("wiener", "kalman"):
        console.print("[yellow]not every seed beat both baselines (see the table)[/yellow]")


def evaluate(
    run: Path = typer.Argument(..., help="an artifact folder, or a multi-seed run folder (seed-K inside)"),
    data: Path | None = typer.Option(None, "--data", help="NWB session to score on (default: the training session)"),
    json_out: Path | None = typer.Option(None, "--summary-json", "--json", help="also write the results here"),
) -> None:
    """Re-score an artifact by streaming a WHOLE session through `step` from `init_state`.

    Torch eager on CPU, one bin at a time, no warm-up; R² over every bin with behaviour
    (the exact definition: training.metrics.evaluate_artifact). Without --data the
    artifact's own training session is used, so training bins are included in the score.
    """
    from models.artifact import ArtifactError, read_config
    from training.runs import load_data, session_from_provenance

    folders = [run] if (run / "config.json").is_file() else sorted(run.glob("seed-*"))
    if not folders:
        console.print(f"[red]evaluate: {run} holds neither config.json nor seed-K artifact folders[/red]")
        raise typer.Exit(2)
    try:
        session = load_data(data)[0] if data is not None else session_from_provenance(
            read_config(folders[0])["provenance"])
        results = [_evaluate_one(f, session) for f in folders]
    except (ArtifactError, ValueError, OSError) as e:
        console.print(f"[red]evaluate: {e}[/red]")
        raise typer.Exit(1) from None
    table = Table(title=f"{session.source}: whole session ({session.n_bins} bins) streamed through step")
    for col in ("artifact", "model", "R²", "R² vx", "R² vy", "R² vw", "trial med/p5", "fallback R²"):
        table.add_column(col, justify="left" if col in ("artifact", "model") else "right")
    for r in results:
        m = r["metrics"]
        fb = r.get("fallback", {}).get("metrics", {}).get("r2")
        table.add_row(Path(r["path"]).name, r["model"], _num(m["r2"], 4), _num(m["r2_vx"], 4), _num(m["r2_vy"], 4),
                      _num(m["r2_vw"], 4), f"{_num(m.get('trial_r2_median'), 2)} / {_num(m.get('trial_r2_p5'), 2)}",
                      _num(fb))
    if len(results) > 1:
        from training.report import fmt_stat
        from training.runs import seed_stats

        stats = {k: seed_stats([r["metrics"][k] for r in results]) for k in ("r2", "r2_vx", "r2_vy", "r2_vw")}
        table.add_row("mean±std", "", *(fmt_stat(stats[k], 4) for k in ("r2", "r2_vx", "r2_vy", "r2_vw")), "", "")
    console.print(table)
    if data is None:
        console.print("[dim]scored on the training session: training bins are included; "
                      "the held-out figures are in each config.json's metrics.test[/dim]")
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2))


def _evaluate_one(folder: Path, session) -> dict:
    from training.metrics import evaluate_artifact

    result = evaluate_artifact(folder, session)
    if not result["channel_ids_match"]:
        console.print(f"[yellow]{folder}: the session's unit ids differ from the artifact's channel ids "
                      "(same count); scoring assumes the channel order matches[/yellow]")
    return result

def export(
    run: Annotated[Path, typer.Argument(help="artifact folder, e.g. runs/NAME")],
    format: Annotated[str, typer.Option(help="comma-separated: torchscript,onnx")] = "torchscript,onnx",  # noqa: A002
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 20,
    exporter: Annotated[str, typer.Option(help="ONNX exporter: auto (dynamo, else legacy), dynamo or torchscript")] = "auto",
) -> None:
    """Export an artifact's single-bin step to TorchScript and/or ONNX (state as explicit I/O)."""
    from models.artifact import ArtifactError
    from training.export import ExportError, export_artifact, parse_formats

    try:
        formats = parse_formats(format)
        entry = export_artifact(run, formats, opset=opset, exporter=exporter)
    except (ArtifactError, ExportError, ValueError) as e:
        console.print(f"[red]export failed:[/red] {e}")
        raise typer.Exit(1) from None
    table = Table(title=f"exported {run}")
    for col in ("format", "file", "how", "max |diff| vs eager (data / normalised)", "size"):
        table.add_column(col)
    for fmt in formats:
        e = entry[fmt]
        how = e.get("method") or f"{e['exporter']} exporter, opset {e['opset']}"
        if e.get("fallback_reason"):
            how += f" (dynamo failed: {e['fallback_reason']})"
        size = (Path(run) / e["file"]).stat().st_size
        diff = f"{e['max_abs_diff']:.2e} / {e['max_diff_normalised']:.2e}"
        table.add_row(fmt, e["file"], how, diff, f"{size / 1024:.0f} KiB")
    console.print(table)
    io = ", ".join(i["name"] for i in entry["inputs"]) + " -> " + ", ".join(o["name"] for o in entry["outputs"])
    console.print(f"graph: {io}")
