"""`spikestream sweep SWEEP.toml`: train and evaluate sessions x models x seeds on Ray or here."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer


def sweep(
    file: Annotated[Path, typer.Argument(help="the sweep file (TOML; see benchmarks/sweep.py)")],
    out: Annotated[Optional[Path], typer.Option("--out", help="sweep folder (default: runs/sweeps/FILE-STEM)")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="a running Ray cluster: auto, HOST:6379 or "
                                                                     "ray://HOST:10001 (default: a local Ray)")] = None,
    workers: Annotated[int, typer.Option("--workers", help="tasks at once on a local Ray instance (default: "
                                                           "the usable cores)")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="skip tasks whose result is already in the folder")] = False,
) -> None:
    """Every (session, model, hyperparameters, seed) of the file as one task; then one table.

    Tasks run on Ray when it is installed (the 'cluster' extra), each with its own
    CPUs (the file's `threads`) and GPUs (`gpus`); a failed task is retried once and
    reported without stopping the others. Without Ray they run here, one after another.
    """
    from rich.console import Console
    from rich.table import Table

    from benchmarks.executor import Executor
    from benchmarks.sweep import load_spec, run_sweep

    console = Console()
    try:
        spec = load_spec(file)
        folder = out or Path("runs/sweeps") / file.stem
        executor = Executor(workers=workers or len(os.sched_getaffinity(0)), address=address, folder=folder,
                            resume=resume, console=console)
        console.print(f"{file}: {len(spec.sessions)} session(s) x {len(spec.models)} model point(s) x "
                      f"{len(spec.seeds)} seed(s) -> {folder}")
        summary = run_sweep(spec, folder, executor, "spikestream " + shlex.join(sys.argv[1:]))
    except (ValueError, RuntimeError, OSError) as e:  # a SweepError is a ValueError
        console.print(f"[red]sweep: {e}[/red]")
        raise typer.Exit(1) from None
    heads, rows = summary["table"]
    table = Table(title="held-out streamed R² (mean ± sd over seeds, Student-t 95% CI)")
    for head in heads:
        table.add_column(head)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for name, per in summary["reports"].items():
        for session, path in per.items():
            console.print(f"{name} ({session}): {path}")
    console.print(f"summary: {folder / 'summary.md'}")
    if summary["failed"]:
        console.print(f"[red]{len(summary['failed'])} of {summary['tasks']} tasks failed (see above); "
                      "run again with --resume to retry only those[/red]")
        raise typer.Exit(1)
