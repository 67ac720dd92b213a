"""Gather `spikestream train` summaries into the Markdown results table.

    python -m training.report RUNS_DIR --out benchmarks/results/training.md

RUNS_DIR holds one run folder per (task, model), named `TASK-MODEL` (e.g. `maze-lstm`),
each with the `summary.json` that `train` writes. The report copies every summary beside
the Markdown file (`training_TASK-MODEL.json`) so the numbers stay auditable.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models.provenance import cpu_model
from models.registry import MODEL_NAMES


def fmt_stat(stat: dict | None, digits: int = 3, spread: bool = True) -> str:
    """'0.812 ± 0.010' from a seed_stats dict (the mean alone for one seed or spread=False)."""
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    if spread and stat.get("std") is not None:
        text += f" ± {stat['std']:.{digits}f}"
    return text


def fmt_ci(stat: dict) -> str:
    """'[0.782, 0.810]' from a seed_stats dict ('–' without an interval)."""
    ci = stat.get("ci95")
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"


def load_summaries(runs: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for f in sorted(runs.glob("*/summary.json")):
        task, _, model = f.parent.name.partition("-")
        if model in MODEL_NAMES:
            out[(task, model)] = json.loads(f.read_text())
    if not out:
        raise SystemExit(f"{runs}: no TASK-MODEL/summary.json run folders found")
    return out


def task_table(summaries: dict[tuple[str, str], dict], task: str) -> list[str]:
    rows = [
        "| model | R² (mean ± std) | 95% CI | R² vw | per-trial R² median | per-trial R² p5 | params | "
        "train time (s) | epochs (best) | beats Wiener | beats Kalman |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in MODEL_NAMES:
        s = summaries.get((task, model))
        if s is None:
            continue
        m = s["metrics"]
        beats = s["beats_baselines"]
        per_seed = {b: sum(r["beats_baselines"].get(b, False) for r in s["runs"]) for b in ("wiener", "kalman")}
        verdict = {b: "–" if b not in beats else
                   f"{'yes' if beats[b] else '**NO**'} ({per_seed[b]}/{s['n_seeds']} seeds)" for b in per_seed}
        epochs = f"{fmt_stat(m.get('epochs_run'), 1)} ({fmt_stat(m.get('best_epoch'), 1)})" if "epochs_run" in m else "closed form"
        rows.append(
            f"| {model} | {fmt_stat(m['r2'])} | {fmt_ci(m['r2'])} | {fmt_stat(m['r2_vw'])} | {fmt_stat(m.get('trial_r2_median'))} | "
            f"{fmt_stat(m.get('trial_r2_p5'))} | {int(m['n_params']['mean']):,} | {fmt_stat(m['seconds'], 0)} | {epochs} | "
            f"{verdict['wiener']} | {verdict['kalman']} |"
        )
    return rows


def rvq_section(s: dict) -> list[str]:
    m = s["metrics"]
    rows = ["| stage | utilisation (held-out) | perplexity (of 128 max) |", "| --- | --- | --- |"]
    for k, (u, p) in enumerate(zip(m["utilisation"], m["perplexity"])):
        rows.append(f"| {k} | {fmt_stat(u, 2)} | {fmt_stat(p, 1)} |")
    met = all(all(x >= 0.5 for x in r["utilisation"]) for r in s["runs"])
    within = all(r["r2_gap_to_encoder"] <= 0.02 for r in s["runs"])
    rows += ["",
             f"Pre-trained encoder (quantiser bypassed) held-out R²: {fmt_stat(m['encoder_r2'])}; quantised: "
             f"{fmt_stat(m['r2'])}; gap (encoder − quantised): {fmt_stat(m['r2_gap_to_encoder'])}.",
             f"Utilisation ≥ 50% in every stage of every seed: {'yes' if met else '**NO**'}. "
             f"Within 0.02 of its own encoder in every seed: {'yes' if within else '**NO**'}. "
             f"Collapsed seeds: {s['collapsed_seeds'] or 'none'}."]
    return rows


def rtt_section(summaries: dict[tuple[str, str], dict]) -> list[str]:
    rows = ["| task | LSTM R² | Mamba R² | Mamba − LSTM | Wiener R² |", "| --- | --- | --- | --- | --- |"]
    for task in ("maze", "rtt"):
        lstm, mamba = summaries.get((task, "lstm")), summaries.get((task, "mamba"))
        if lstm is None or mamba is None:
            continue
        a, b = lstm["metrics"]["r2"]["mean"], mamba["metrics"]["r2"]["mean"]
        rows.append(f"| {task} | {fmt_stat(lstm['metrics']['r2'])} | {fmt_stat(mamba['metrics']['r2'])} | {b - a:+.3f} | "
                    f"{lstm['baselines_test']['wiener']['r2']:.3f} |")
    return rows


def session_line(s: dict) -> str:
    p = s["provenance"]
    split = s["split"]
    what = (f"simulated {p['task']} session, simulator seed {p['sim_seed']}, "
            f"{(p.get('settings') or {}).get('minutes', p['duration_s'] / 60):g} min"
            if p.get("kind") == "simulated" else f"NWB file {p.get('path')}")
    return (f"{what}: {p['n_bins']} bins of {p['bin_width'] * 1000:g} ms × {p['n_channels']} channels; "
            f"chronological split ({split['by']}) train {split['train']}, val {split['val']}, test {split['test']}")


def trained_by(summaries: dict[tuple[str, str], dict]) -> list[str]:
    """The code versions recorded in the runs' artifacts (not the version rendering this report)."""
    versions = set()
    for s in summaries.values():
        for run in s["runs"]:
            config = Path(run["path"]) / "config.json"
            versions.add(json.loads(config.read_text())["code_version"] if config.exists() else "unknown")
    return sorted(versions)


def render(summaries: dict[tuple[str, str], dict], notes: str = "") -> str:
    tasks = sorted({t for t, _ in summaries}, key=lambda t: (t != "maze", t))
    lines = ["# Training results: held-out streaming R²", "",
             "Every R² is the held-out **test block streamed through `step` from `init_state(1)`** "
             "(eager torch, float32, one bin at a time) — the number the runtime delivers. Headline R² "
             "is the equal average of vx and vy (as NLB reports it); R² vw is variance-weighted (as "
             "FALCON reports it). Normalisation statistics come from training bins only; the best epoch "
             "is chosen on the validation block, never the test block. Mean ± sample std over seeds; "
             "95% CI is the Student-t interval of the mean.", "",
             f"Machine: {cpu_model()}, 1 torch thread per run (torch {torch.__version__}); trained by code "
             f"{', '.join(trained_by(summaries))}.", ""]
    for task in tasks:
        first = next(s for (t, _), s in summaries.items() if t == task)
        n = max(s["n_seeds"] for (t, _), s in summaries.items() if t == task)
        lines += [f"## {task}", "", session_line(first), f"({n} seeds per network; baselines are deterministic.)", ""]
        lines += task_table(summaries, task) + [""]
        if (task, "rvq") in summaries:
            lines += [f"### RVQ codebooks ({task})", ""] + rvq_section(summaries[(task, "rvq")]) + [""]
    if any(t == "rtt" for t, _ in summaries):
        lines += ["## Mamba vs LSTM: continuous tracking (RTT-like) vs trial-structured (maze)", ""]
        lines += rtt_section(summaries) + [""]
    if notes:
        lines += [notes.strip(), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--notes", type=Path, help="Markdown appended after the tables")
    args = ap.parse_args()
    summaries = load_summaries(args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    notes = args.notes.read_text() if args.notes else ""
    args.out.write_text(render(summaries, notes))
    for (task, model), s in summaries.items():
        (args.out.parent / f"training_{task}-{model}.json").write_text(json.dumps(s, indent=2))
    print(f"wrote {args.out} ({len(summaries)} runs)")


if __name__ == "__main__":
    main()

