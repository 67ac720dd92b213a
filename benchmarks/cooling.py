"""Why keep-warm leaves 40 Hz above back to back: a bin's own objects cool with the work done since the last bin.

At real pace with keep-warm on (decoder_runtime.warm), the runtime's own work per bin stays
2-3x its back-to-back cost, although a warm pass ran the very same code tens of µs before the
bin. This diagnostic takes idling out of the question: the replay runs back to back
(`--speed max`), and before each bin the loop runs `k` keep-warm passes (`BinWaiter.warm_pass`,
the pass a 40 Hz session runs, on its scratch lane) and nothing else, `k` swept up to about a
40 Hz period's worth. Controls: the same number of the model's dry steps alone (its weights
streamed through the cache, none of the bin's Python), and the runtime at 40 Hz as it runs. All
variants run in this one process (the same memory layout for all), alternated round by round,
with the default 10 ms deadline (the step inline under the guard thread).

If own work grows with `k` though nothing ever sleeps, what a pass cannot keep warm is what only
the live bin touches: its own objects (validator, adapter, fallback ring, log rows, live socket)
and the loop code only it runs -- evicted, after enough other work, from this VM's 1 MiB L2
(the LSTM's weights alone are 1.1 MB) and from an L3 shared with other tenants.

On the 2-core VM (3 alternated rounds × 600 bins): own work p50 7.5 µs back to back, 1.10× that
after 8 passes, 1.78× after 100, 2.64× after 800, 12.8× after 800 dry steps alone; 40 Hz 2.76×.

    python3 -m benchmarks.cooling --out benchmarks/results/realpace-cpu-2core [--bins 600] [--rounds 3]
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import typer

from benchmarks import procs
from decoder_runtime.engine import Engine, RunResult
from decoder_runtime.sources import Pulled
from decoder_runtime.timing import latencies
from decoder_runtime.warm import BinWaiter, WarmSettings

SETTLE_BINS = 40  # first bins of each run not measured (start-up)
PERIOD_PASSES = 800  # ~25 ms of warm passes (30-40 µs each on the 2-core VM): one 40 Hz period's worth


@dataclass(frozen=True)
class Variant:
    label: str
    speed: str  # "max" or "1"
    before_each_bin: int = 0  # warm passes (or dry steps) run before each bin is pulled
    dry_steps_only: bool = False


VARIANTS = (
    Variant("back to back", "max"),
    Variant("back to back, 8 warm passes before each bin", "max", 8),
    Variant("back to back, 100 warm passes before each bin", "max", 100),
    Variant(f"back to back, {PERIOD_PASSES} warm passes before each bin (~25 ms)", "max", PERIOD_PASSES),
    Variant(f"back to back, {PERIOD_PASSES} dry steps of the model alone before each bin", "max", PERIOD_PASSES, True),
    Variant("40 Hz, keep-warm on (the runtime as it runs)", "1"),
)


class WorkBeforeEachBin(BinWaiter):
    """The engine's wait for a bin, with `k` warm passes (or model dry steps) in front of every pull."""

    def __init__(self, settings: WarmSettings, k: int, dry_steps_only: bool) -> None:
        super().__init__(settings)
        self.k, self.dry_steps_only = k, dry_steps_only

    def start(self, engine: Engine) -> None:
        super().start(engine)
        self.prepare_passes(engine)

    def pull(self, timeout_s: float) -> Pulled | None:
        work = self._engine.core.stepper.warm if self.dry_steps_only else self.warm_pass
        for _ in range(self.k):
            work()
        return self._engine.source.pull(timeout_s)


def run_variant(v: Variant, artifact: Path, session, bins: int) -> RunResult:
    """One replay of `session`'s first `bins` bins through the assembled runtime, as `v` says."""
    from decoder_runtime.assemble import open_runtime
    from decoder_runtime.config import RuntimeConfig

    cfg = RuntimeConfig.from_dict({"model": {"artifact": str(artifact), "backend": "numba"}, "max_bins": bins,
                                   "source": {"kind": "replay", "speed": v.speed}, "deadline": {"deadline_ms": 10},
                                   "output": {"zmq": f"tcp://127.0.0.1:{procs.free_port()}"}})
    with open_runtime(cfg, command="bench-cooling", session=session.slice(0, bins), say=lambda m: None) as rt:
        if v.before_each_bin:
            rt.engine.waiter = WorkBeforeEachBin(replace(cfg.warm, keep_warm=False), v.before_each_bin,
                                                 v.dry_steps_only)
        return rt.run()


def _measures(stamps: np.ndarray) -> dict[str, np.ndarray]:
    """µs per bin: own work, arrival → sent, model step, and the stages around the step (decoder_runtime.timing)."""
    lat = latencies(stamps)
    names = {"own work": "own work", "arrival → sent": "latency", "model step": "model step", "validate": "validate",
             "adapted → step begins": "hand-off to step", "publish": "publish"}
    return {label: lat[key] / 1e3 for label, key in names.items()}


def main(
    out: Path = typer.Option(Path("benchmarks/results/realpace-cpu-2core"), "--out", help="Folder for cooling.json / .md."),
    bins: int = typer.Option(600, "--bins", help="Bins per run (the first 40 are not measured)."),
    rounds: int = typer.Option(3, "--rounds", help="Alternated rounds of every variant."),
    artifact: Path | None = typer.Option(None, "--artifact", help="An LSTM artifact (default: the bench's untrained one)."),
) -> None:
    """Own work per bin back to back with k warm passes before each bin, beside 40 Hz (module doc)."""
    from benchmarks.artifacts import build_untrained
    from replay import default_session

    session = default_session()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = artifact or build_untrained(Path(tmp), "lstm", session, backends=[]).path
        per: dict[str, dict[str, list[np.ndarray]]] = {v.label: {} for v in VARIANTS}
        for r in range(rounds):
            for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                for k, us in _measures(run_variant(v, path, session, bins).stamps[SETTLE_BINS:]).items():
                    per[v.label].setdefault(k, []).append(us)
                typer.echo(f"round {r + 1}/{rounds}: {v.label}: own work p50 {np.median(per[v.label]['own work'][-1]):.1f} µs")
    rows = []
    for v in VARIANTS:
        m = {k: np.concatenate(a) for k, a in per[v.label].items()}
        rows.append({"variant": v.label, "speed": v.speed, "before_each_bin": v.before_each_bin,
                     "dry_steps_only": v.dry_steps_only, "bins": int(m["own work"].size),
                     "own_p50_rounds": [float(np.median(a)) for a in per[v.label]["own work"]],
                     **{f"{k} p50": float(np.median(a)) for k, a in m.items()},
                     "own work p99": float(np.percentile(m["own work"], 99))})
    base = rows[0]["own work p50"]
    (out / "cooling.json").write_text(json.dumps(rows, indent=2))
    cols = ("own work p50", "own work p99", "arrival → sent p50", "model step p50", "validate p50",
            "adapted → step begins p50", "publish p50")
    lines = [f"# Own work per bin back to back with k warm passes before each bin, beside 40 Hz "
             f"(µs; LSTM numba, 10 ms deadline; {rounds} alternated rounds × {bins - SETTLE_BINS} bins, pooled)\n",
             "| variant | own p50 × back to back (rounds) | " + " | ".join(cols) + " |",
             "| --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for row in rows:
        rr = ", ".join(f"{x / base:.2f}" for x in row["own_p50_rounds"])
        lines.append(f"| {row['variant']} | {row['own work p50'] / base:.2f}× ({rr}) | "
                     + " | ".join(f"{row[c]:.1f}" for c in cols) + " |")
    (out / "cooling.md").write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
