"""Gather `spikestream closed-loop --recalibrate K --out DIR/<group>-s<seed>` runs into the
recalibration table of benchmarks/results/closed_loop.md (+ recalibration.json).

Each group (e.g. `day-lstm`, `drift-kalman`, `driftadapt-wiener`) gives one row per block:
mean ± s.d. over its seeds of the block's task metrics, and of the recalibration that made
the block's decoder (held-out R² against the labels, new / parent; output gain).

    python3 -m benchmarks.recalibration_results RUNS_DIR [--out benchmarks/results]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.closed_loop_results import METRICS, _fmt, _ms, load_runs


def block_rows(group: str, runs: list[dict]) -> list[dict]:
    n_blocks = min(len(r["blocks"]) for r in runs)
    rows = []
    for b in range(n_blocks):
        blocks = [r["blocks"][b] for r in runs]
        recal = [x["recalibration"] for x in blocks if x["recalibration"]]
        rows.append({"group": group, "block": b, "n_runs": len(blocks),
                     "trials": sorted({x["n_trials"] for x in blocks}),
                     **{k: _ms([x[k] for x in blocks]) for k in METRICS},
                     "test_r2": _ms([x["test_r2"] for x in recal]), "parent_test_r2": _ms([x["parent_test_r2"] for x in recal]),
                     "output_gain": _ms([x.get("output_gain") for x in recal])})
    return rows


def table(rows: list[dict]) -> list[str]:
    head = ["run", "block", "runs × trials", "success rate", "time to target (s, median)", "path efficiency",
            "Fitts (bits/s)", "recal. held-out R² new / parent", "output gain"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        recal = "–" if r["block"] == 0 else f"{_fmt(*r['test_r2'], digits=3)} / {_fmt(*r['parent_test_r2'], digits=3)}"
        lines.append("| " + " | ".join([
            r["group"] if r["block"] == 0 else "", "before" if r["block"] == 0 else f"after {r['block']}",
            f"{r['n_runs']} × {'/'.join(map(str, r['trials']))}", _fmt(*r["success_rate"]), _fmt(*r["time_to_target_s"]),
            _fmt(*r["path_efficiency"]), _fmt(*r["fitts_bps"]), recal,
            "–" if r["block"] == 0 else _fmt(*r["output_gain"])]) + " |")
    return lines


def main() -> None:
    args = sys.argv[1:]
    runs_dir = Path(args[0])
    out = Path(args[args.index("--out") + 1]) if "--out" in args else Path("benchmarks/results")
    groups = load_runs(runs_dir, "blocks.json")
    rows = [r for g in sorted(groups) for r in block_rows(g, groups[g])]
    (out / "recalibration.json").write_text(json.dumps({"rows": rows}, indent=2, default=float))
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
