"""Gather closed-loop runs (`spikestream closed-loop ... --out DIR --summary-json DIR/summary.json`)
into the committed table: benchmarks/results/closed_loop.md + .json + one trajectory PNG per model.

Run folders are named `<group>-s<seed>` (e.g. `lstm-s0`, `drift-none-s0`, `live-s1`); each
group becomes one row, mean ± s.d. over its seeds, beside the offline held-out R² its
artifacts report (config.json `metrics.test.r2`, streamed through `step`).

    python3 -m benchmarks.closed_loop_results RUNS_DIR [--out benchmarks/results] [--check CHECK.json]
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

METRICS = ("success_rate", "time_to_target_s", "path_efficiency", "fitts_bps")
MODEL_ORDER = ("lstm", "transformer", "rvq", "mamba", "wiener", "kalman")


def load_runs(runs_dir: Path, name: str = "summary.json") -> dict[str, list[dict]]:
    """{group: [the JSON, ...]} from every `<group>-s<seed>/<name>` under runs_dir."""
    groups: dict[str, list[dict]] = {}
    for f in sorted(runs_dir.glob(f"*/{name}")):
        name = f.parent.name
        m = re.fullmatch(r"(.+)-s(\d+)", name)
        if m is None:
            continue
        s = json.loads(f.read_text())
        s["_dir"] = str(f.parent)
        groups.setdefault(m.group(1), []).append(s)
    return groups


def _ms(values: list) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _fmt(mean: float, sd: float, n: int, digits: int = 2) -> str:
    if n == 0 or mean != mean:
        return "–"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def offline_r2(runs: list[dict]) -> tuple[float, float, int]:
    """Held-out R² of the artifacts behind the runs (each artifact counted once)."""
    seen = {}
    for s in runs:
        art = Path(s["settings"]["artifact"])
        cfg = art / "config.json"
        if cfg.is_file():
            seen[str(art)] = json.loads(cfg.read_text())["metrics"]["test"]["r2"]
    return _ms(list(seen.values()))


def row(group: str, runs: list[dict]) -> dict:
    out = {"group": group, "n_runs": len(runs), "trials_per_run": [s["n_trials"] for s in runs],
           "artifacts": sorted({s["settings"]["artifact"] for s in runs})}
    for k in METRICS:
        out[k] = _ms([s[k] for s in runs])
    out["offline_r2"] = offline_r2(runs)
    lat = [s["latency_us"].get("p50") for s in runs]
    out["latency_p50_us"] = _ms(lat)
    out["latency_p99_us"] = _ms([s["latency_us"].get("p99") for s in runs])
    out["unanswered_bins"] = [s["latency_us"].get("unanswered_bins") for s in runs]
    return out


def table(rows: list[dict], with_r2: bool = True) -> list[str]:
    head = ["run", "runs × trials", *(["offline R² (held-out)"] if with_r2 else []), "success rate",
            "time to target (s, median)", "path efficiency", "Fitts (bits/s)", "latency p50 / p99 (µs)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        trials = sorted(set(r["trials_per_run"]))
        cells = [r["group"], f"{r['n_runs']} × {'/'.join(map(str, trials))}"]
        if with_r2:
            cells.append(_fmt(*r["offline_r2"], digits=3))
        cells += [_fmt(*r["success_rate"]), _fmt(*r["time_to_target_s"]), _fmt(*r["path_efficiency"]),
                  _fmt(*r["fitts_bps"]), f"{_fmt(*r['latency_p50_us'], digits=0)} / {_fmt(*r['latency_p99_us'], digits=0)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write(runs_dir: Path, out: Path, check: Path | None = None) -> dict:
    """Write closed_loop.json, the trajectory PNGs and the table rows; returns the JSON."""
    groups = load_runs(runs_dir)
    rows = {g: row(g, r) for g, r in groups.items()}
    png_dir = out / "closed_loop"
    png_dir.mkdir(parents=True, exist_ok=True)
    for g, runs in groups.items():
        pngs = [Path(s["_dir"]) / "trajectories.png" for s in runs]
        pngs = sorted((p for p in pngs if p.is_file()), key=lambda p: p.stat().st_mtime)
        if pngs:
            png = pngs[-1]
            shutil.copy(png, png_dir / f"{g}.png")
    result = {"rows": rows, "encoder_check": json.loads(check.read_text().strip().splitlines()[-1])
              if check is not None and check.is_file() else None}
    (out / "closed_loop.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def main() -> None:
    args = sys.argv[1:]
    runs_dir = Path(args[0])
    out = Path(args[args.index("--out") + 1]) if "--out" in args else Path("benchmarks/results")
    check = Path(args[args.index("--check") + 1]) if "--check" in args else None
    result = write(runs_dir, out, check)
    rows = result["rows"]
    models = [rows[m] for m in MODEL_ORDER if m in rows]
    print("\n".join(table(models)))
    others = [r for g, r in rows.items() if g not in MODEL_ORDER]
    if others:
        print()
        print("\n".join(table(others)))


if __name__ == "__main__":
    main()
