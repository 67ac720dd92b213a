"""Real pace: the runtime at 40 Hz beside the same runtime back to back, in one bench run.

Back to back every stage runs warm; at one bin every 25 ms the caches (and, on a VM, the
vCPU) go cold between bins, and a user pays for it (decoder_runtime.warm). This section
measures both, alternated in rounds so that load from other work falls on every variant:

- `replay` at `--speed max` and at `--speed 1` (40 Hz), with the model's step inline
  (`--deadline-ms 0`) and inline under the guard thread (the default 10 ms deadline:
  decoder_runtime.stepping.GuardedStepper), at 40 Hz with keep-warm off (`--no-keep-warm
  --no-freeze-gc --handoff-spin-us 0`, the loop as it was), on (the default), and on with
  `--busy-wait` (the wait for each bin polls, never sleeps: a core at 100%);
- end to end, LSL outlet → runtime → ZeroMQ subscriber (benchmarks.e2e): the bare relay with
  no model (benchmarks.bare_relay, the floor on this machine), then `serve` with keep-warm
  off, on, and on with `--busy-wait`.

Every figure is reported beside its reference from the same run as a ratio ("× ref": this
variant's p50 / p99 over the reference's): a 40 Hz replay over the max-speed replay of the
same step mode, a `serve` over the bare relay.

Each replay also gets the runtime's own work over only the bins whose model step took at most
`USUAL_SPEED` times its median in that round: the machine at its usual speed. Why: on a
shared VM the own-work tail at 40 Hz is mostly bins in which everything ran slow at once --
the model step too, the same kernel with its weights warmed by the same dry step before every
bin (2-core VM, 1,200 bins at 40 Hz, inline: own work and step correlated 0.65-0.79; in 22 of
the 24 bins with the most own work the step took 1.8-3.2 times its median; own work p99 56 µs
over all bins, 37 µs over the 92% whose step was within 1.5 times its median). A reader can then tell the runtime's tail
from the machine's. It is a diagnostic, not a target: the targets take every bin.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import e2e, runtime
from decoder_runtime.timing import latencies
from benchmarks.stats import summarize

Log = Callable[[str], None]
COLD = ("--no-keep-warm", "--no-freeze-gc", "--handoff-spin-us", "0")  # the loop before keep-warm
ARRIVAL_TO_SENT = "arrival → sent"
SETTLE_BINS = 40  # first bins of each round not measured (start-up, connections settling)
RATIO = "× ref p50 / p99"
USUAL_SPEED = 1.5  # a bin whose model step took at most this many times the round's median (module doc)
OWN_AT_USUAL = f"own work, step ≤ {USUAL_SPEED:g}× its median"


@dataclass(frozen=True)
class ReplayRun:
    label: str
    speed: str
    deadline_ms: float
    extra: tuple[str, ...] = ()
    reference: str = ""  # label of the run this one is compared with ("" for a reference itself)
    cold: str = ""  # label of the keep-warm-off run whose deadline misses this one may not exceed ("": none)


@dataclass(frozen=True)
class E2ERun:
    label: str
    extra: tuple[str, ...] = ()
    relay: bool = False


INLINE_MAX, GUARDED_MAX = "max speed, inline step", "max speed, guarded step (10 ms deadline)"
INLINE_COLD, GUARDED_COLD = "40 Hz, inline step, keep-warm off", "40 Hz, guarded step, keep-warm off"
REPLAY_RUNS = (
    ReplayRun(INLINE_MAX, "max", 0.0),
    ReplayRun(INLINE_COLD, "1", 0.0, COLD, INLINE_MAX),
    ReplayRun("40 Hz, inline step, keep-warm on", "1", 0.0, (), INLINE_MAX, INLINE_COLD),
    ReplayRun(GUARDED_MAX, "max", 10.0),
    ReplayRun(GUARDED_COLD, "1", 10.0, COLD, GUARDED_MAX),
    ReplayRun("40 Hz, guarded step, keep-warm on", "1", 10.0, (), GUARDED_MAX, GUARDED_COLD),
    ReplayRun("40 Hz, guarded step, keep-warm on + busy-wait", "1", 10.0, ("--busy-wait",), GUARDED_MAX, GUARDED_COLD),
)
RELAY = "bare LSL → ZeroMQ relay, no model (floor)"
E2E_RUNS = (
    E2ERun(RELAY, relay=True),
    E2ERun("serve, keep-warm off", COLD),
    E2ERun("serve, keep-warm on"),
    E2ERun("serve, keep-warm on + busy-wait", ("--busy-wait",)),
    E2ERun("serve --deadline-ms 0, keep-warm on", ("--deadline-ms", "0")),
)


def _replay_latencies(stamps: np.ndarray) -> dict[str, np.ndarray]:
    """arrival → sent, the runtime's own work, the model step (decoder_runtime.timing), and the own work of
    the bins whose step ran at the machine's usual speed (module doc), ns per bin."""
    lat = latencies(stamps)
    own, step = lat[runtime.OWN_WORK], lat[runtime.MODEL_STEP]  # the bins the model stepped, both
    usual = step <= USUAL_SPEED * np.median(step) if step.size else np.zeros(0, dtype=bool)
    return {ARRIVAL_TO_SENT: lat["latency"], runtime.OWN_WORK: own, runtime.MODEL_STEP: step,
            OWN_AT_USUAL: own[usual]}


def _round_ratios(rounds: dict[int, np.ndarray], ref_rounds: dict[int, np.ndarray]) -> dict[str, list[float]]:
    """p50 and p99 over the reference's, round by round (rounds both ran): how far one round is from the next."""
    both = [r for r in sorted(rounds) if r in ref_rounds and rounds[r].size and ref_rounds[r].size]
    return {f"x_ref_{q}_rounds": [float(np.percentile(rounds[r], pct) / np.percentile(ref_rounds[r], pct))
                                  for r in both] for q, pct in (("p50", 50), ("p99", 99))}


def _ratio_text(s: dict, ref: dict, per_round: dict[str, list[float]]) -> str:
    text = f"{s['p50'] / ref['p50']:.2f}× / {s['p99'] / ref['p99']:.2f}×"
    p50, p99 = per_round["x_ref_p50_rounds"], per_round["x_ref_p99_rounds"]
    if len(p50) > 1:
        text += f" (rounds {min(p50):.2f}-{max(p50):.2f}× / {min(p99):.2f}-{max(p99):.2f}×)"
    return text


def _ratio_rows(section: str, measured: dict[tuple[str, str], dict[int, np.ndarray]], refs: dict[str, str],
                base: dict, deadlines) -> tuple[list[dict], dict[str, np.ndarray]]:
    """One row per (run, measure) with its summary (all rounds pooled) and, where it has a reference, the
    ratio to it: pooled, and its range over the rounds (the spread between rounds is often larger than the
    effect a change has; a reader sees both)."""
    rows, raw = [], {}
    pooled = {key: np.concatenate(list(rounds.values())) for key, rounds in measured.items() if rounds}
    summaries = {key: summarize(ns, deadlines) for key, ns in pooled.items() if ns.size}
    for (run, measure), s in summaries.items():
        ref_key = (refs.get(run, ""), measure)
        ref = summaries.get(ref_key)
        name = f"{section}/{run}/{measure}"
        row = {"name": name, "run": run, "measure": measure, **base, "summary": s}
        if ref:
            per_round = _round_ratios(measured[(run, measure)], measured[ref_key])
            row |= {RATIO: _ratio_text(s, ref, per_round), "x_ref_p50": s["p50"] / ref["p50"],
                    "x_ref_p99": s["p99"] / ref["p99"], **per_round}
        else:
            row[RATIO] = "ref" if run in refs.values() else "–"
        rows.append(row)
        raw[name] = pooled[(run, measure)]
    return rows, raw


def realpace_section(art, counts: np.ndarray, bin_width: float, work_dir: Path, *, backend: str, device: str,
                     threads: int, bins: int, rounds: int, deadlines, log: Log) -> dict:
    """Every run of REPLAY_RUNS and E2E_RUNS, `rounds` times alternated, `bins` measured bins each in all."""
    per_round = max(bins // rounds, 1) + SETTLE_BINS
    replay: dict[tuple[str, str], dict[int, np.ndarray]] = {}  # (run, measure) -> round -> ns per bin
    ends: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    runs: dict[str, dict] = {}
    skipped = []
    base = {"model": art.label, "model_kind": art.model, "backend": backend, "device": device}
    idx = np.arange(per_round) % counts.shape[0]
    for r in range(rounds):
        for run in REPLAY_RUNS:
            log(f"real pace, round {r + 1}/{rounds}: replay {run.label}, {per_round:,} bins")
            try:
                got = runtime.replay_run(art.path, work_dir, backend=backend, device=device, threads=threads,
                                         max_bins=per_round, deadline_ms=run.deadline_ms, speed=run.speed,
                                         extra=run.extra, tag=f"-rp{REPLAY_RUNS.index(run)}")
            except RuntimeError as e:
                skipped.append({"name": f"realpace/{run.label}", "reason": str(e)})
                continue
            for measure, ns in _replay_latencies(got["stamps"][SETTLE_BINS:]).items():
                replay.setdefault((run.label, measure), {})[r] = ns
            runs.setdefault(run.label, {"deadline_misses": 0, "cold": run.cold, "warm": [], "pacing_p99_us": []})
            runs[run.label]["deadline_misses"] += got["summary"]["deadline_misses"]
            runs[run.label]["warm"].append(got["summary"].get("warm", {}))
            runs[run.label]["pacing_p99_us"].append((got["summary"].get("pacing") or {}).get("p99_us"))
        for run in E2E_RUNS:
            log(f"real pace, round {r + 1}/{rounds}: end to end, {run.label}, {per_round:,} bins at 40 Hz")
            try:
                res = e2e.run_e2e(art.path, counts[idx], bin_width, work_dir, backend=backend, device=device,
                                  threads=threads, settle_bins=SETTLE_BINS, extra=run.extra, relay=run.relay,
                                  tag=f"-rp{E2E_RUNS.index(run)}")
            except RuntimeError as e:
                skipped.append({"name": f"realpace_e2e/{run.label}", "reason": str(e)})
                continue
            for measure in (e2e.PUSH_TO_RECEIVE, "runtime (lat_us)"):
                ends.setdefault((run.label, measure), {})[r] = res.latency_ns[measure]
            runs.setdefault(run.label, {"lost": 0, "flagged": {}})
            runs[run.label]["lost"] += res.lost
            for k, v in res.flagged.items():
                runs[run.label]["flagged"][k] = runs[run.label]["flagged"].get(k, 0) + v
    rows, raw = _ratio_rows("realpace", replay, {r.label: r.reference for r in REPLAY_RUNS if r.reference}, base,
                            deadlines)
    e2e_rows, e2e_raw = _ratio_rows("realpace_e2e", ends, {r.label: RELAY for r in E2E_RUNS if not r.relay}, base,
                                    deadlines)
    return {"realpace": rows, "realpace_e2e": e2e_rows, "realpace_runs": runs, "raw": {**raw, **e2e_raw},
            "skipped": skipped}
