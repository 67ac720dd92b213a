"""`spikestream recalibrate`: a better decoder from a closed-loop session's own record (ReFIT)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from spikestream.commands.runtime import escape

console = Console()


def recalibrate(
    record: Annotated[Path, typer.Argument(help="A closed-loop session record (spikestream closed-loop --record FILE.nwb).")],
    parent: Annotated[Path, typer.Option("--from", help="The artifact that decoded that session (RUN).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the recalibrated artifact (RUN2).")],
    method: Annotated[str, typer.Option("--method", help="refit: ReFIT labels (rotate toward the target, keep speed, zero on target), then the decoder's speed kept by one output gain; refit-labels-only: without that gain; intention: the simulated participant's true command (a check, simulation only).")] = "refit",
    onset_skip: Annotated[Optional[float], typer.Option("--onset-skip", help="s left out after each target onset (default: the record's visual delay).")] = None,
    successful_only: Annotated[bool, typer.Option("--successful-only", help="Label only the bins of successful trials.")] = False,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Fine-tuning epochs for networks (early stopping on the record's validation block).")] = 15,
    lr: Annotated[float, typer.Option("--lr", help="Fine-tuning learning rate for networks.")] = 5e-4,
    seed: Annotated[int, typer.Option("--seed", help="Fine-tuning seed.")] = 0,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Write the summary here.")] = None,
) -> None:
    """Relabel a closed-loop record with the participant's intention and retrain the decoder on it."""
    from models.artifact import ArtifactError
    from replay.closed_loop_record import RecordError
    from training.recalibrate import RecalibrationSpec
    from training.recalibrate import recalibrate as run

    try:
        spec = RecalibrationSpec(record=record, parent=parent, out=out, method=method, onset_skip_s=onset_skip,
                                 successful_only=successful_only, epochs=epochs, lr=lr, seed=seed)
        summary = run(spec)
    except (ArtifactError, RecordError, ValueError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    labels = summary["labels"]
    table = Table(title=f"recalibrated {summary['model']} -> {out}", show_header=False)
    table.add_row("bins labelled / in record", f"{labels['labelled']} / {labels['bins']}")
    table.add_row("zeroed on target / skipped after onset / unanswered",
                  f"{labels['zeroed_on_target']} / {labels['skipped_after_onset']} / {labels['unanswered']}")
    table.add_row("held-out R² vs intention: recalibrated / parent",
                  f"{summary['test_r2']:.3f} / {summary['parent_test_r2']:.3f}")
    table.add_row("output gain (decoder speed kept)", f"{summary['output_gain']:.3f}")
    table.add_row("seconds", f"{summary['seconds']:.1f}")
    console.print(table)
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2))
