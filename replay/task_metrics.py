"""Per-trial and per-run cursor-control metrics, as BCI labs report them.

Definitions (times from target onset, the trial's `t_start`):

- success rate: acquired trials / all trials (grid: correct selections / all trials);
- time to target: target onset -> the entry that led to acquisition (the hold excluded, as
  Gilja et al. 2012 report it); median and mean over successful trials;
- dial-in time: first entry -> last entry (0 when the first entry was held), successful trials;
- re-entries: entries after the first, successful trials;
- path efficiency: straight-line distance from the cursor at target onset to the point of
  the last entry / the path the cursor actually took between them (1 = a straight line);
- Fitts throughput: log2((D + W) / W) / time to target per successful trial, D the distance
  from the cursor at target onset to the target centre, W the target's width (its diameter);
  the mean over successful trials (bits/s);
- achieved bit rate (grid, Nuyujukian et al. 2015): log2(N - 1) * max(Sc - Si, 0) / t with N
  the number of selectable cells, Sc / Si correct / incorrect selections and t the time the
  trials took.
"""
from __future__ import annotations

import math

import numpy as np

from replay.cursor_task import TaskSettings, TrialRecord

TRIAL_COLUMNS = ("index", "kind", "outcome", "t_start", "t_end", "target_x", "target_y", "start_x", "start_y",
                 "time_to_target_s", "dial_in_s", "re_entries", "path_efficiency", "fitts_bps")


def trial_row(tr: TrialRecord, settings: TaskSettings) -> dict:
    """One trial's metrics (NaN where a metric is undefined for it, e.g. a timeout's time to target)."""
    ok = tr.outcome == "success"
    ttt = tr.t_last_entry - tr.t_start if ok else math.nan
    straight = float(np.hypot(*(tr.entry_pos - tr.start_pos))) if ok else math.nan
    eff = straight / tr.path_length if ok and tr.path_length > 0 else math.nan
    width = settings.cell if settings.task == "grid" else 2 * settings.target_radius
    dist = float(np.hypot(*(tr.target - tr.start_pos)))
    fitts = math.log2((dist + width) / width) / ttt if ok and ttt > 0 else math.nan
    return {"index": tr.index, "kind": tr.kind, "outcome": tr.outcome, "t_start": tr.t_start, "t_end": tr.t_end,
            "target_x": float(tr.target[0]), "target_y": float(tr.target[1]),
            "start_x": float(tr.start_pos[0]), "start_y": float(tr.start_pos[1]),
            "time_to_target_s": ttt, "dial_in_s": tr.t_last_entry - tr.t_first_entry if ok else math.nan,
            "re_entries": tr.n_entries - 1 if ok else -1, "path_efficiency": eff, "fitts_bps": fitts}


def _stat(values: list[float], fn) -> float | None:
    v = [x for x in values if x == x]
    return float(fn(v)) if v else None


def summarize_trials(trials: list[TrialRecord], settings: TaskSettings) -> dict:
    """The run's metrics over its finished trials."""
    rows = [trial_row(tr, settings) for tr in trials if tr.outcome is not None]
    n = len(rows)
    ok = [r for r in rows if r["outcome"] == "success"]
    out = {
        "task": settings.task,
        "n_trials": n,
        "n_success": len(ok),
        "n_timeout": sum(r["outcome"] == "timeout" for r in rows),
        "success_rate": len(ok) / n if n else None,
        "time_to_target_s": _stat([r["time_to_target_s"] for r in ok], np.median),
        "time_to_target_mean_s": _stat([r["time_to_target_s"] for r in ok], np.mean),
        "dial_in_s": _stat([r["dial_in_s"] for r in ok], np.median),
        "re_entries_mean": _stat([r["re_entries"] for r in ok], np.mean),
        "path_efficiency": _stat([r["path_efficiency"] for r in ok], np.median),
        "fitts_bps": _stat([r["fitts_bps"] for r in ok], np.mean),
    }
    if settings.task == "grid":
        n_cells = settings.grid_size**2
        wrong = sum(r["outcome"] == "wrong" for r in rows)
        elapsed = sum(r["t_end"] - r["t_start"] for r in rows)
        out["n_wrong"] = wrong
        out["bitrate_bps"] = (math.log2(n_cells - 1) * max(len(ok) - wrong, 0) / elapsed) if elapsed > 0 else None
    return out
