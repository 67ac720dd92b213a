"""What a closed-loop run leaves behind: an NWB record, a per-trial CSV, a trajectory PNG.

The NWB record (written with pynwb after the run; checked with nwbinspector):

- `acquisition/counts`: float32[T, C] the spike counts the runtime received, one row per bin;
- `processing/closed_loop/{intention, decoded_velocity, cursor, target}`: float[T, 2] in mm/s
  and mm (decoded NaN where the runtime did not answer in time, target NaN between trials);
- `trials`: one row per trial with its kind, outcome, target, start position and metrics
  (replay.task_metrics.TRIAL_COLUMNS);
- `scratch/closed_loop_settings` and `scratch/closed_loop_summary`: JSON text.

All times are seconds from the session start (bin k starts at k * bin width).
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import uuid
from pathlib import Path

import numpy as np

from replay.task_metrics import TRIAL_COLUMNS, trial_row


def trial_rows(result) -> list[dict]:
    """The finished trials' rows (replay.task_metrics.trial_row)."""
    settings = result.world.settings.task
    return [trial_row(tr, settings) for tr in result.world.task.trials if tr.outcome is not None]


def write_trials_csv(path: Path, result) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(TRIAL_COLUMNS))
        w.writeheader()
        w.writerows(trial_rows(result))


def write_record(path: Path, result, *, settings: dict, summary: dict) -> None:
    """The session as NWB (see the module docstring)."""
    from hdmf.common import VectorData
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject

    a = result.world.arrays()
    t = a["t"].astype(np.float64)
    stamp = _dt.datetime.now(_dt.timezone.utc)
    nwb = NWBFile(session_description=f"spikestream closed-loop {result.world.settings.task.task} session "
                                      f"({result.mode}), simulated participant",
                  identifier=str(uuid.uuid4()), session_start_time=stamp, file_create_date=stamp,
                  notes="Written by benchmarks/closed_loop_outputs.py; layout in its docstring.",
                  subject=Subject(subject_id="simulated-participant", species="Homo sapiens", sex="U", age="P30Y",
                                  description="a simulated BCI user (replay.participant) and its simulated "
                                              "motor-cortex units (replay.encoder); no real subject"))
    counts = TimeSeries(name="counts", data=a["counts"].astype(np.float32), unit="spikes per bin", timestamps=t,
                        description="spike counts per bin from the streaming encoder, as sent to the runtime")
    nwb.add_acquisition(counts)
    module = nwb.create_processing_module("closed_loop", "participant, decoder and task per bin")
    for name, data, unit, doc in (
        ("intention", a["intention"], "mm/s", "the participant's intended velocity (the encoder's input)"),
        ("decoded_velocity", a["decoded"], "mm/s", "velocity the runtime returned for the bin (NaN: not in time)"),
        ("cursor", a["cursor"], "mm", "cursor position at the start of the bin"),
        ("target", a["target"], "mm", "target centre (NaN: no target)"),
    ):
        module.add(TimeSeries(name=name, data=np.asarray(data, dtype=np.float64), unit=unit, timestamps=counts,
                              description=doc))
    rows = trial_rows(result)
    if rows:
        cols = [VectorData(name="start_time", description="target onset", data=[r["t_start"] for r in rows]),
                VectorData(name="stop_time", description="trial end (acquired or timed out)",
                           data=[r["t_end"] for r in rows])]
        for k in TRIAL_COLUMNS:
            if k in ("t_start", "t_end"):
                continue
            cols.append(VectorData(name=k, description=f"closed-loop trial {k}",
                                   data=[("" if r[k] is None else r[k]) if k in ("kind", "outcome") else r[k]
                                         for r in rows]))
        nwb.trials = TimeIntervals(name="trials", description="closed-loop cursor trials", columns=cols)
    nwb.add_scratch(json.dumps(settings, default=str), name="closed_loop_settings",
                    description="settings of the closed-loop run")
    nwb.add_scratch(json.dumps(summary, default=str), name="closed_loop_summary",
                    description="task metrics and decoder latency of the run")
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def inspect_record(path: Path) -> list[str]:
    """nwbinspector's CRITICAL findings for the file (empty: none)."""
    from nwbinspector import Importance, inspect_nwbfile

    return [f"{m.check_function_name}: {m.message}" for m in inspect_nwbfile(nwbfile_path=str(path))
            if m.importance == Importance.CRITICAL]


def plot_trajectories(path: Path, result, title: str) -> None:
    """The classic center-out picture: each trial's cursor path coloured by its outward target
    (a return to the centre takes the colour of the reach before it, drawn fainter), failures
    dashed black with an x where they timed out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = result.world.arrays()
    s = result.world.settings.task
    rows = trial_rows(result)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    outward = sorted({(r["target_x"], r["target_y"]) for r in rows if r["kind"] != "back"})
    cmap = plt.get_cmap("hsv")
    colour = {tg: cmap(i / max(len(outward), 1)) for i, tg in enumerate(outward)}
    last = "grey"
    for r in rows:
        xy = a["cursor"][a["trial"] == r["index"]]
        ok = r["outcome"] == "success"
        if r["kind"] != "back":
            last = colour[(r["target_x"], r["target_y"])]
        back = r["kind"] == "back"
        ax.plot(xy[:, 0], xy[:, 1], lw=0.5 if back else 0.8, alpha=(0.3 if back else 0.7) if ok else 0.9,
                color=last if ok else "k", ls="-" if ok else "--")
        if not ok and len(xy):
            ax.plot(xy[-1, 0], xy[-1, 1], "kx", ms=6)
    radius = s.cell / 2 if s.task == "grid" else s.target_radius
    for tg in outward:
        ax.add_patch(plt.Circle(tg, radius, fill=False, color=colour[tg], lw=1.2))
    if any(r["kind"] == "back" for r in rows):
        ax.add_patch(plt.Circle((0, 0), radius, fill=False, color="grey", lw=1.2))
    ax.set_xlim(-s.workspace, s.workspace)
    ax.set_ylim(-s.workspace, s.workspace)
    ax.set_aspect("equal")
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
