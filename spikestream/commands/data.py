"""`spikestream simulate` and `spikestream info`: make a session file, and look inside one."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from spikestream.commands.options import with_options

# The library's defaults, written out so `--help` needs no heavy import
# (tests/test_cli.py checks they equal replay.defaults / replay.session).
DEFAULT_MINUTES, DEFAULT_UNITS, DEFAULT_BIN_WIDTH = 10.0, 142, 0.025

console = Console()


class Task(str, Enum):
    maze = "maze"
    rtt = "rtt"


class DriftKind(str, Enum):
    random_walk = "random_walk"
    linear = "linear"


# The drift options, shared by every command that simulates a drifted day (simulate, closed-loop):
# (name, annotation, default), added to a command's signature by `with_drift_options`.
DRIFT_OPTIONS = (
    ("baseline_drift", Annotated[float, typer.Option(min=0, help="Hz: s.d. of additive baseline drift after 1 min")], 0.0),
    ("baseline_kind", Annotated[DriftKind, typer.Option()], DriftKind.random_walk),
    ("baseline_onset", Annotated[float, typer.Option(help="s")], 0.0),
    ("gain_change", Annotated[float, typer.Option(min=0.001, help="factor on every rate (1 = none)")], 1.0),
    ("gain_spread", Annotated[float, typer.Option(min=0, help="per-unit log s.d. around --gain-change")], 0.0),
    ("gain_onset", Annotated[float, typer.Option(help="s")], 0.0),
    ("gain_ramp", Annotated[float, typer.Option(min=0, help="s to reach the full gain")], 0.0),
    ("dead_fraction", Annotated[float, typer.Option(min=0, max=1)], 0.0),
    ("dead_onset", Annotated[float, typer.Option(help="s")], 0.0),
    ("noisy_fraction", Annotated[float, typer.Option(min=0, max=1)], 0.0),
    ("noisy_rate", Annotated[float, typer.Option(min=0, help="Hz of untuned spikes added")], 40.0),
    ("noisy_onset", Annotated[float, typer.Option(help="s")], 0.0),
    ("shift_at", Annotated[Optional[float], typer.Option(help="s: time of a step change of all rates")], None),
    ("shift_size", Annotated[float, typer.Option(min=0, help="log s.d. of the per-unit step")], 0.5),
    ("drift_seed", Annotated[Optional[int], typer.Option(help="which units drift (default: --seed)")], None),
)


def _drift_spec(values: dict):
    """The DriftSpec of the drift options (None when nothing drifts); contradictions are a BadParameter."""
    from replay.drift import DriftSpec

    values = {**values, "baseline_kind": DriftKind(values["baseline_kind"]).value}
    values["seed"] = values.pop("drift_seed")
    try:
        spec = DriftSpec(**values)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    return spec if spec.active else None


# Every command that simulates drift (simulate, closed-loop) gets the same options as one `drift`.
with_drift_options = with_options(DRIFT_OPTIONS, "drift", _drift_spec)


@with_drift_options
def simulate(
    out: Annotated[Path, typer.Option("--out", help="NWB file to write")],
    task: Annotated[Task, typer.Option(help="maze: centre-out reaches (MC_Maze-like); rtt: random-target tracking (MC_RTT-like)")] = Task.maze,
    seed: Annotated[int, typer.Option(help="behaviour, latent and spikes")] = 0,
    population_seed: Annotated[Optional[int], typer.Option(help="the neurons (default: --seed); same value + new --seed = another day")] = None,
    minutes: Annotated[float, typer.Option(min=0.05)] = DEFAULT_MINUTES,
    units: Annotated[int, typer.Option(min=1)] = DEFAULT_UNITS,
    drift: object = None,  # a replay.drift.DriftSpec or None, from the drift options
) -> None:
    """Simulate a motor-cortex session and write it as NWB (NLB MC_Maze / MC_RTT layout)."""
    from replay.simulator import simulate_nwb

    truth = simulate_nwb(out, task=task.value, minutes=minutes, seed=seed, population_seed=population_seed,
                         n_units=units, drift=drift)
    table = Table(title=f"simulated {out}", show_header=False)
    table.add_row("task", truth.task)
    table.add_row("seed / population seed", f"{truth.seed} / {truth.population_seed}")
    table.add_row("duration", f"{truth.duration:.1f} s")
    table.add_row("units", str(truth.population.n_units))
    table.add_row("spikes", f"{int(truth.n_spikes.sum()):,} (mean {truth.n_spikes.mean() / truth.duration:.1f} Hz per unit)")
    table.add_row("trials", str(truth.trials["start_time"].size))
    table.add_row("drift", json.dumps(truth.drift.summary) if drift is not None else "none")
    console.print(table)


def info(
    file: Annotated[Path, typer.Argument(help="NWB file")],
    bin_width: Annotated[float, typer.Option(min=0.0001, help="s")] = DEFAULT_BIN_WIDTH,
    behavior: Annotated[Optional[str], typer.Option(help="behaviour TimeSeries name or path (default: NLB names)")] = None,
) -> None:
    """Summarise an NWB session as spikestream bins it: units, duration, behaviour, trials, rates."""
    import numpy as np

    from replay.nwb_reader import NWBFormatError, read_nwb

    try:
        s = read_nwb(file, bin_width=bin_width, behavior=behavior)
    except NWBFormatError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e
    rates = s.counts.sum(axis=0) / s.duration
    gaps = s.meta["behavior_gaps"]
    speed = np.linalg.norm(s.velocity[s.valid], axis=1)
    table = Table(title=str(file), show_header=False)
    table.add_row("identifier", s.meta["nwb_identifier"])
    table.add_row("units", str(s.n_channels))
    table.add_row("duration", f"{s.duration:.1f} s  ({s.t[0] - s.bin_width:.3f} .. {s.t[-1]:.3f})")
    table.add_row("bins", f"{s.n_bins:,} x {1000 * s.bin_width:g} ms")
    table.add_row("mean rate", f"{rates.mean():.2f} Hz per unit (median {np.median(rates):.2f}, "
                               f"range {rates.min():.2f}-{rates.max():.2f})")
    table.add_row("spikes", f"{int(s.counts.sum()):,}")
    table.add_row("decoded behaviour", f"{s.meta['behavior_series']} ({s.meta['behavior_kind']}, "
                                       f"{s.meta['behavior_unit']})")
    table.add_row("speed", f"median {np.median(speed):.1f}, p99 {np.percentile(speed, 99):.1f}"
                  if speed.size else "-")
    table.add_row("behaviour gaps", f"{gaps['masked_bins']} bins masked ({100 * gaps['fraction']:.2f}%), "
                                    f"{gaps['nan_samples']} NaN samples, {gaps['time_gaps']} time gaps")
    table.add_row("behaviour fields", "\n".join(f"{p} {list(shape)}" for p, shape in s.meta["timeseries"].items()))
    trials = s.trials
    table.add_row("trials", "none" if not trials else
                  f"{trials['start_time'].size} ({', '.join(k for k in trials if k not in ('start_time', 'stop_time'))})")
    console.print(table)
