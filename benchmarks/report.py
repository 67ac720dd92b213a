"""Everything a bench run writes: the screen table, results.json, raw latencies, report.md, plots.

`results` is one JSON-able dict (config, machine, warnings and one list of rows per
section); each row has a `name`, its descriptive fields and a `summary` from stats.py.
Raw per-bin latencies go beside it as uint32 nanoseconds in one compressed .npz (one array
per row, with the row names), so any statistic can be recomputed later without re-running.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.table import Table

from benchmarks.e2e import PUSH_TO_RECEIVE
from benchmarks.runtime import OWN_WORK
from benchmarks.stats import PERCENTILES, deadline_key, pct_key, to_uint32_ns

RAW_FILE = "latencies.npz"
SECTION_TITLES = {
    "step": "Per-bin step latency (µs)",
    "step_paced": "Per-bin step latency at real pace (µs)",
    "scaling_channels": "Scaling: step latency vs channel count (µs)",
    "scaling_width": "Scaling: step latency vs model width (µs)",
    "runtime_overhead": "The runtime per bin, stage by stage, from the engine's stamps (µs; own work = arrival → sent − model step, as decoder_runtime.timing defines it)",
    "e2e": "End to end: LSL push → ZeroMQ receive (µs)",
    "realpace": "Real pace: the runtime at 40 Hz beside max speed, alternated in one run (µs; × ref = this / the "
                "max-speed run with the same step mode)",
    "realpace_e2e": "Real pace end to end: LSL push → ZeroMQ receive at 40 Hz, serve beside a bare relay with no model "
                    "(µs; × ref = this / the relay)",
}
# Each section's descriptive columns, in the order tables show them.
SECTION_FIELDS = {
    "step": ("model", "backend", "device"),
    "step_paced": ("model", "backend", "device", "pace_hz"),
    "scaling_channels": ("model", "backend", "device", "channels"),
    "scaling_width": ("model", "backend", "device", "width"),
    "runtime_overhead": ("run", "model", "backend", "device", "stage"),
    "e2e": ("model", "backend", "device", "measure"),
    "realpace": ("run", "measure", "× ref p50 / p99"),
    "realpace_e2e": ("run", "measure", "× ref p50 / p99"),
}
# Sections where 1 / mean latency (bins per second, back to back) means something.
THROUGHPUT_SECTIONS = ("step", "scaling_channels", "scaling_width")
REPLAY_FIELDS = ("run", "model", "backend", "device", "bins", "seconds", "bins_per_s")


def fmt_us(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def _stat_columns(deadlines_us) -> list[tuple[str, str]]:
    cols = [(pct_key(p), pct_key(p)) for p in PERCENTILES]
    cols += [("max", "max"), ("mean", "mean"), ("std", "std")]
    cols += [(deadline_key(d), f">{d / 1e3:g} ms" if d >= 1000 else f">{d:g} µs") for d in deadlines_us]
    return cols


def _has_ratio(rows: list[dict]) -> bool:
    return any("ratio_p50" in r for r in rows)


def _cells(section: str, row: dict, deadlines_us, ratio_col: bool) -> list[str]:
    s = row["summary"]
    out = [f"{v:g}" if isinstance(v := row.get(f, ""), float) else str(v) for f in SECTION_FIELDS[section]]
    for key, _ in _stat_columns(deadlines_us):
        out.append(str(s[key]) if key.startswith("over_") else fmt_us(s[key]))
    if section in THROUGHPUT_SECTIONS:
        out.append(f"{s['bins_per_s']:,.0f}")
    if ratio_col:
        out.append(f"{row['ratio_p50']:.2f}× / {row['ratio_p99']:.2f}×" if "ratio_p50" in row else "–")
    return out


def _headers(section: str, deadlines_us, ratio_col: bool) -> list[str]:
    heads = list(SECTION_FIELDS[section]) + [h for _, h in _stat_columns(deadlines_us)]
    if section in THROUGHPUT_SECTIONS:
        heads.append("bins/s")
    if ratio_col:
        heads.append("vs ref p50 / p99")
    return heads


def table_data(results: dict) -> list[tuple[str, list[str], list[list[str]], int]]:
    """(title, headers, rows of cells, number of left-aligned label columns) for every table.

    The one place tables are laid out, so the screen and report.md always agree.
    """
    deadlines = results["config"]["deadlines_us"]
    out = []
    for section, title in SECTION_TITLES.items():
        rows = results.get(section) or []
        if rows:
            ratio_col = _has_ratio(rows)
            out.append((title, _headers(section, deadlines, ratio_col),
                        [_cells(section, r, deadlines, ratio_col) for r in rows], len(SECTION_FIELDS[section])))
        events = [{**r, "summary": r["cuda_event_summary"]} for r in rows if "cuda_event_summary" in r]
        if events:  # the device's own clock over the same window: a cross-check of the host clock
            out.append((f"{title.removesuffix(' (µs)')}, by CUDA events around the same window (µs)",
                        _headers(section, deadlines, False), [_cells(section, r, deadlines, False) for r in events],
                        len(SECTION_FIELDS[section])))
    replay = results.get("replay") or []
    if replay:
        cells = [[str(r[f]) if f not in ("seconds", "bins_per_s") else f"{r[f]:,.{2 if f == 'seconds' else 0}f}"
                  for f in REPLAY_FIELDS] for r in replay]
        out.append(("Runtime throughput: `replay` runs (first arrival → last recorded)",
                    [f.replace("bins_per_s", "bins/s") for f in REPLAY_FIELDS], cells, 4))
    return out


def rich_tables(results: dict) -> list[Table]:
    tables = []
    for title, heads, rows, n_labels in table_data(results):
        table = Table(title=title, title_justify="left")
        for i, h in enumerate(heads):
            table.add_column(h, justify="left" if i < n_labels else "right")
        for cells in rows:
            table.add_row(*cells)
        tables.append(table)
    return tables


def markdown_table(heads: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(" --- " for _ in heads) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


# --- where we stand against the project's targets -----------------------------------------

def _best(rows: list[dict], device_prefix: str, stat: str) -> dict | None:
    """The row with the lowest `stat` among those on a device kind (the backend a user would pick)."""
    cands = [r for r in rows if r["device"].startswith(device_prefix)]
    return min(cands, key=lambda r: r["summary"][stat]) if cands else None


def target_rows(results: dict) -> list[dict]:
    """Each target of DESIGN.md / issue 6 with the measured value that decides it (best backend)."""
    out = []
    step = results.get("step") or []

    def add(target: str, row: dict | None, stat: str, limit: float) -> None:
        if row is None:
            return
        v = row["summary"][stat]
        shown = (str(v) if stat.startswith("over_") or stat == "count" else f"{v:.2f}×" if stat == "ratio"
                 else f"{fmt_us(v)} µs")
        out.append({"target": target, "variant": row["name"], "measured": shown, "met": v <= limit})

    for model in dict.fromkeys(r["model"] for r in step):
        rows = [r for r in step if r["model"] == model]
        add(f"{model} GPU step p50 ≤ 50 µs", _best(rows, "cuda", "p50"), "p50", 50.0)
        add(f"{model} GPU step p99 ≤ 100 µs", _best(rows, "cuda", "p99"), "p99", 100.0)
        if rows[0]["model_kind"] == "lstm":
            add(f"{model} CPU step p50 ≤ 100 µs", _best(rows, "cpu", "p50"), "p50", 100.0)
        add(f"{model} CPU step p99 ≤ 1 ms", _best(rows, "cpu", "p99"), "p99", 1000.0)
    bin_us = results["bin_width_s"] * 1e6
    miss = deadline_key(bin_us)
    for rows, how in ((step, ""), (results.get("step_paced") or [], " at real pace")):
        if rows:
            worst = max(rows, key=lambda r: r["summary"][miss])
            add(f"zero {bin_us / 1e3:g} ms misses{how} ({worst['summary']['n']:,} bins per variant, worst variant "
                "shown)", worst, miss, 0)
    out += _pace_targets(step, results.get("step_paced") or [])
    for r in results.get("runtime_overhead") or []:
        if r["stage"] == OWN_WORK:
            limit = 50.0 if r.get("real_pace") else 20.0
            add(f"runtime's own work p99 ≤ {limit:g} µs ({r['run']})", r, "p99", limit)
    realpace_targets(results, add)
    for r in results.get("e2e") or []:
        if r["measure"] == PUSH_TO_RECEIVE:
            add("end to end LSL → ZeroMQ p99 ≤ 2 ms", r, "p99", 2000.0)
            add("end to end p99 ≤ 1.2 ms (DESIGN, LSTM on CPU)", r, "p99", 1200.0)
            add(f"zero {bin_us / 1e3:g} ms misses end to end", r, miss, 0)
    return out


PACED_SLOWDOWN = 1.5  # DESIGN.md: a bin at 40 Hz decoded within 1.5x of a bin back to back


def _pace_targets(step: list[dict], paced: list[dict]) -> list[dict]:
    """Per variant measured both ways: paced p50 within PACED_SLOWDOWN x its back-to-back p50."""
    back = {(r["model"], r["backend"], r["device"]): r for r in step}
    out = []
    for r in paced:
        b = back.get((r["model"], r["backend"], r["device"]))
        if b is None:
            continue
        slow = r["summary"]["p50"] / b["summary"]["p50"]
        out.append({"target": f"{r['model']}/{r['backend']}/{r['device']} p50 at {r['pace_hz']:g} Hz ≤ "
                              f"{PACED_SLOWDOWN:g}× back to back", "variant": r["name"],
                    "measured": f"{fmt_us(r['summary']['p50'])} vs {fmt_us(b['summary']['p50'])} µs ({slow:.2f}×)",
                    "met": slow <= PACED_SLOWDOWN})
    return out


def realpace_targets(results: dict, add) -> None:
    """Issue 17's targets: 40 Hz p50 ≤ 1.5× max speed, own work p99 ≤ 50 µs, serve p99 ≤ 1.15× the bare relay."""
    for r in results.get("realpace") or []:
        if "keep-warm on" not in r["run"]:
            continue
        if r["measure"] == "arrival → sent":
            add(f"{r['run']}: arrival → sent p50 ≤ 1.5× max speed", {**r, "summary": {"ratio": r["x_ref_p50"]}},
                "ratio", 1.5)
        elif r["measure"] == OWN_WORK:
            add(f"{r['run']}: runtime's own work p99 ≤ 50 µs", r, "p99", 50.0)
    for r in results.get("realpace_e2e") or []:
        if r["measure"] == PUSH_TO_RECEIVE and "x_ref_p99" in r:
            add(f"{r['run']}: end to end p99 ≤ 1.15× bare relay", {**r, "summary": {"ratio": r["x_ref_p99"]}},
                "ratio", 1.15)
    runs = results.get("realpace_runs") or {}
    for label, info in runs.items():
        if info.get("cold"):  # a keep-warm run: no more misses than the same run with keep-warm off
            off = runs.get(info["cold"], {})
            add(f"{label}: no more deadline misses than keep-warm off ({off.get('deadline_misses', '?')})",
                {"name": f"realpace/{label}", "summary": {"count": info["deadline_misses"]}}, "count",
                off.get("deadline_misses", 0))


# --- files -------------------------------------------------------------------------------

def write_json(results: dict, out_dir: Path) -> Path:
    f = out_dir / "results.json"
    f.write_text(json.dumps(results, indent=2, allow_nan=False))
    return f


def write_raw(raw: dict[str, np.ndarray], out_dir: Path) -> Path:
    """Every per-bin latency as uint32 ns: arrays `r0, r1, ...` and `names` (row name of each)."""
    f = out_dir / RAW_FILE
    names = list(raw)
    np.savez_compressed(f, names=np.array(names), **{f"r{i}": to_uint32_ns(raw[k]) for i, k in enumerate(names)})
    return f


def load_raw(path: Path) -> dict[str, np.ndarray]:
    """The raw file back as {row name: uint32 ns array}."""
    with np.load(path, allow_pickle=False) as z:
        return {str(name): z[f"r{i}"] for i, name in enumerate(z["names"])}


def brief(reason: str) -> str:
    """A reason on one line: its first line, and the last line of an attached log if there is one."""
    lines = [ln.strip() for ln in reason.strip().splitlines() if ln.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} … {lines[-1]}"


def skipped_groups(results: dict) -> list[tuple[str, list[str]]]:
    """What was not measured, grouped by reason (one line for 'cudagraph needs CUDA' × 6 models)."""
    groups: dict[str, list[str]] = {}
    for s in results.get("skipped") or []:
        groups.setdefault(brief(s["reason"]), []).append(s["name"])
    return list(groups.items())


def machine_line(m: dict) -> str:
    gpu = m.get("gpu")
    return (f"{m['cpu']}, {m['usable_cores']} usable cores, GPU {gpu['name'] if gpu else 'none'}, "
            f"load {m['loadavg'][0]:.2f}; torch {m['libraries'].get('torch', '?')}, "
            f"onnxruntime {m['libraries'].get('onnxruntime', m['libraries'].get('onnxruntime-gpu', 'none'))}")


def _machine_md(m: dict) -> str:
    gpu = m.get("gpu")
    gpu_txt = "none" if not gpu else (f"{gpu['name']} ({gpu['memory_gib']} GiB, compute {gpu['capability']}), "
                                      f"driver {gpu.get('driver') or 'unknown'}, CUDA runtime {gpu['cuda_runtime']}")
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    load = ", ".join(f"{x:.2f}" for x in m["loadavg"])
    return "\n".join([
        "| | |", "| --- | --- |",
        f"| CPU | {m['cpu']} — {m['cores']} cores ({m['usable_cores']} usable), governor {m.get('cpu_governor') or 'n/a'} |",
        f"| memory | {m.get('memory_gib')} GiB |",
        f"| GPU | {gpu_txt} |",
        f"| OS / Python | {m['os']} / Python {m['python']} |",
        f"| libraries | {libs} |",
        f"| load average (1/5/15 min) at start | {load} |",
        f"| code version | {m['code_version']} |",
    ])


def write_markdown(results: dict, plots: list[Path], out_dir: Path) -> Path:
    cfg = results["config"]
    lines = ["# spikestream bench", "", f"Run {results['started']} — `{cfg['command']}`", "", "## Machine", "",
             _machine_md(results["machine"]), "", "## Setup", ""]
    lines += [f"- {s}" for s in results["notes"]]
    if results["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in results["warnings"]]
    targets = target_rows(results)
    if targets:
        lines += ["", "## Targets", "", "| target | decided by | measured | met |", "| --- | --- | --- | --- |"]
        lines += [f"| {t['target']} | `{t['variant']}` | {t['measured']} | {'yes' if t['met'] else '**no**'} |"
                  for t in targets]
    for title, heads, rows, _ in table_data(results):
        lines += ["", f"## {title}", "", markdown_table(heads, rows)]
        if title in (SECTION_TITLES["step"], SECTION_TITLES["step_paced"]):
            lines += ["", f"Ratios: reference p50 (or p99) / this variant's, reference = "
                          f"`{cfg['reference_backend']}` on the same device (> 1 is faster)."]
        if title == SECTION_TITLES["step_paced"]:
            late = max(r["release_late"]["p99_us"] for r in results["step_paced"])
            lines += ["", f"Release lateness (the schedule's own error, before the step): worst p99 {late:.0f} µs."]
    for run in results.get("e2e_runs") or []:
        pacing = run.get("outlet_pacing_us") or {}
        lines += ["", f"End to end, {run['model']} on {run['backend']}/{run['device']}: {run['received']:,} of "
                      f"{run['expected']:,} messages received ({run['lost']} lost), first {run['settle_bins']} bins "
                      f"not measured (connections settling); flags: "
                      + (", ".join(f"{k} {v}" for k, v in run["flagged"].items()) or "none")
                      + (f"; outlet push lateness mean {pacing['mean_us']:.0f} µs, p99 "
                         f"{pacing['p99_us']:.0f} µs" if pacing else "")]
    groups = skipped_groups(results)
    if groups:
        lines += ["", "## Not measured", ""]
        lines += [f"- {reason}: " + ", ".join(f"`{n}`" for n in names) for reason, names in groups]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    f = out_dir / "report.md"
    f.write_text("\n".join(lines) + "\n")
    return f


def write_outputs(results: dict, raw: dict, out: Path) -> list[Path]:
    """results.json, latencies.npz, PNG plots and report.md into `out`."""
    from benchmarks import plots
    from benchmarks.runtime import MODEL_STEP, OWN_WORK

    out.mkdir(parents=True, exist_ok=True)
    deadlines = results["config"]["deadlines_us"]
    figs = plots.step_plots(results.get("step") or [], raw, out, deadlines)
    figs += plots.step_plots(results.get("step_paced") or [], raw, out, deadlines, name="step_paced")
    figs += plots.scaling_plot(results.get("scaling_channels") or [], results.get("scaling_width") or [], out)
    overhead = [r for r in results.get("runtime_overhead") or [] if r["stage"] in (OWN_WORK, MODEL_STEP)]
    figs += plots.distribution_plot(overhead, raw, out, "runtime_overhead", "runtime per bin, by stage",
                                    lambda r: f"{r['run']} · {r['backend']}/{r['device']}: {r['stage']}")
    figs += plots.distribution_plot(results.get("e2e") or [], raw, out, "e2e", "LSL push → ZeroMQ receive",
                                    lambda r: f"{r['measure']} · {r['backend']}/{r['device']}")
    figs += plots.distribution_plot([r for r in results.get("realpace") or [] if r["measure"] != MODEL_STEP], raw, out,
                                    "realpace", "real pace (40 Hz) vs max speed", lambda r: f"{r['run']}: {r['measure']}")
    return [write_json(results, out), write_raw(raw, out), write_markdown(results, figs, out), *figs]
