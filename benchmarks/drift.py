"""Drift evaluation: how much streaming accuracy each adaptation method keeps on later days.

Day 0 is the simulated session the artifacts were trained on. A "later day" is the same
array (same `population_seed`: the same neurons) on another day (a new `seed`: new
behaviour, latents and spikes), recorded clean (the control) or with one kind of drift.
Every later-day session is streamed WHOLE, bin by bin, through the adaptation chain and the
model's `step` from `init_state`, with the guard fed each output: the runtime's path. The
R² is `replay.scoring.r2_scores` over every bin with behaviour, adaptation warm-up included.

Streams of one seed (every drift kind x every method) share one batched `step` call per
bin, which is the same arithmetic as batch 1; `backend_parity` checks one stream against
`make_backend(artifact, "torch", "cpu")` at batch 1 and the report states the difference.
Latent fits run inline (`threaded=False`): the parameters swap in at exactly the bin a
real-time worker thread would deliver them (1 s after the block closes; a fit takes a few
ms), so results are deterministic. The per-bin cost is measured separately, threaded, as
the runtime runs it.

Lost R² = R²(clean day, no adaptation) - R²(drifted day, no adaptation); recovered fraction
of a method = (R²(drifted, method) - R²(drifted, none)) / lost.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Optional

import numpy as np
import torch
import typer

from decoder_runtime.adaptation import METHODS, AdaptationChain, AdaptSettings, build_chain
from decoder_runtime.adaptation.commands import fit_reference
from decoder_runtime.adaptation.latent_align import load_latent
from decoder_runtime.adaptation.reference import TrainingReference
from models.artifact import Artifact, ArtifactError, load_artifact
from replay import DriftSpec, read_nwb, simulate_nwb
from replay.defaults import cache_dir
from replay.drift import spec_dict
from replay.scoring import r2_scores
from replay.session import BinnedSession
from replay.simulator import SIMULATOR_VERSION

# Each later day's drift, present from the start of the session (the array changed
# overnight) unless the spec says otherwise. Rates in Hz; see replay/drift.py.
DRIFTS: dict[str, DriftSpec | None] = {
    "none": None,
    "baseline": DriftSpec(baseline_drift=3.0),  # random walk: 3 Hz s.d. across units after 1 min, ~8 Hz after 8
    "gain": DriftSpec(gain_change=0.7, gain_spread=0.3),  # every rate x 0.7 x lognormal(0.3)
    "dead10": DriftSpec(dead_fraction=0.1),
    "dead30": DriftSpec(dead_fraction=0.3),
    "noisy": DriftSpec(noisy_fraction=0.15, noisy_rate=40.0),  # 15% of channels + 40 Hz untuned spikes
    "combined": DriftSpec(shift_at=0.0, shift_size=0.4, baseline_drift=1.5, gain_spread=0.2,
                          dead_fraction=0.1, noisy_fraction=0.05),  # a day-to-day change of everything
}
DRIFT_NOTES = {
    "none": "clean later day (control)",
    "baseline": "additive baseline random walk, 3 Hz s.d. after 1 min (grows as sqrt(t))",
    "gain": "gain x0.7, per-unit spread lognormal s.d. 0.3",
    "dead10": "10% of channels silent",
    "dead30": "30% of channels silent",
    "noisy": "15% of channels + 40 Hz untuned Poisson spikes",
    "combined": "per-unit rate step lognormal s.d. 0.4, baseline walk 1.5 Hz, gain spread 0.2, 10% dead, 5% noisy",
}
DAY_SEED_BASE = 1000  # later day of evaluation seed s: simulator seed DAY_SEED_BASE + s


class DriftEvalError(RuntimeError):
    """The evaluation cannot run as asked; the message says why."""


@dataclass
class DriftConfig:
    runs: dict[str, list[Path]]  # model label -> artifact folders (seed s uses folder s % len)
    seeds: int = 3
    minutes: float = 8.0
    kinds: tuple[str, ...] = tuple(DRIFTS)
    methods: tuple[str, ...] = tuple(METHODS)
    tau_s: float = 60.0
    latent_k: int = 12
    latency_bins: int = 8000
    threads: int = 1
    command: str = ""

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in DRIFTS] + [m for m in self.methods if m not in METHODS]
        if bad:
            raise DriftEvalError(f"unknown drift kinds / methods {bad}; kinds: {list(DRIFTS)}, methods: {list(METHODS)}")
        if "none" not in self.kinds or "none" not in self.methods:
            raise DriftEvalError("the 'none' drift kind and the 'none' method are the references; keep both")
        if self.seeds < 1 or self.minutes <= 0:
            raise DriftEvalError(f"need seeds >= 1 and minutes > 0, got {self.seeds}, {self.minutes}")


# --- sessions --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Day0:
    """Where an artifact's training data came from, enough to simulate the same array again."""

    task: str
    population_seed: int
    n_units: int

    @classmethod
    def of(cls, artifact: Artifact) -> "Day0":
        """From the simulator settings the training session's NWB notes recorded."""
        prov = artifact.config.get("provenance", {})
        if prov.get("kind") != "simulated":
            raise DriftEvalError(f"{artifact.path}: trained on {prov.get('kind')!r} data; the drift evaluation "
                                 "needs an artifact trained on a simulated session (its array is re-simulated)")
        try:
            sim = json.loads(prov["meta"]["notes"])
        except (KeyError, TypeError, json.JSONDecodeError):
            raise DriftEvalError(f"{artifact.path}: provenance lacks the simulator settings (meta.notes)") from None
        if sim.get("simulator_version") != SIMULATOR_VERSION:
            raise DriftEvalError(f"{artifact.path}: trained on simulator v{sim.get('simulator_version')} data, the "
                                 f"simulator is now v{SIMULATOR_VERSION}: later days would be another array; retrain")
        return cls(task=sim["task"], population_seed=int(sim["population_seed"]), n_units=int(sim["n_units"]))


def later_day(day0: Day0, kind: str, seed: int, minutes: float, bin_width: float) -> BinnedSession:
    """The same array on day `DAY_SEED_BASE + seed` with drift `kind`, simulated once and cached."""
    spec = DRIFTS[kind]
    tag = hashlib.sha256(json.dumps(spec_dict(spec), sort_keys=True).encode()).hexdigest()[:8]
    day = DAY_SEED_BASE + seed
    path = cache_dir() / "drift" / (f"{day0.task}-pop{day0.population_seed}-day{day}-{minutes:g}min-"
                                    f"{day0.n_units}u-{kind}-{tag}-v{SIMULATOR_VERSION}.nwb")
    if not path.is_file():
        simulate_nwb(path, task=day0.task, minutes=minutes, seed=day, population_seed=day0.population_seed,
                     n_units=day0.n_units, drift=spec)
    session = read_nwb(path, bin_width=bin_width)
    session.meta.update(drift_kind=kind, day_seed=day)
    return session


# --- streaming -------------------------------------------------------------------------------
def make_chain(artifact: Artifact, method: str, cfg: DriftConfig, threaded: bool = False) -> AdaptationChain:
    settings = AdaptSettings(method=method, tau_s=cfg.tau_s, threaded=threaded)
    latent = load_latent(artifact) if "latent" in METHODS[method] else None
    return build_chain(TrainingReference.from_artifact(artifact), settings, latent)


@torch.inference_mode()
def stream(model: torch.nn.Module, counts: list[np.ndarray], chains: list[AdaptationChain]) -> np.ndarray:
    """[N, T, 2]: stream i is counts[i] through chains[i] and the model's step, one bin at a time."""
    n, t_len = len(counts), min(c.shape[0] for c in counts)
    x = np.empty((n, counts[0].shape[1]), dtype=np.float32)
    xt = torch.from_numpy(x)
    out = np.empty((n, t_len, 2), dtype=np.float32)
    state = model.init_state(n)
    for ch in chains:
        ch.reset()
    for t in range(t_len):
        for i in range(n):
            x[i] = chains[i].process(counts[i][t])
        y, state = model.step(xt, state)
        yn = y.numpy()
        out[:, t] = yn
        for i in range(n):
            chains[i].observe(yn[i])
    return out


def backend_parity(artifact: Artifact, counts: np.ndarray, chain: AdaptationChain, batched: np.ndarray) -> float:
    """Max |batched - batch-1 backend| over one whole stream: the batching changes nothing."""
    from decoder_runtime.backends import make_backend

    backend = make_backend(artifact, "torch", "cpu")
    backend.reset()
    chain.reset()
    worst = 0.0
    for t in range(batched.shape[0]):
        y = backend.step(chain.process(counts[t]))
        chain.observe(y)
        worst = max(worst, float(np.abs(y - batched[t]).max()))
    return worst


def chain_latency(artifact: Artifact, counts: np.ndarray, outputs: dict[str, np.ndarray], cfg: DriftConfig) -> list[dict]:
    """Per-bin cost (µs) of each method's process + observe, latent fits in their worker
    thread, measured two ways: alone (the guard fed the method's own streamed outputs), and
    between real model steps (backend step not timed), as the runtime's loop runs it: a
    model step evicts caches, which slows whatever code runs right after it. Methods take
    turns bin by bin, so machine noise falls on all of them alike."""
    from benchmarks.stats import summarize
    from decoder_runtime.backends import make_backend

    n = min(cfg.latency_bins, counts.shape[0])
    out = {m: {} for m in cfg.methods}
    clock = time.perf_counter_ns
    for where in ("alone", "in_loop"):
        runs = [(m, make_chain(artifact, m, cfg, threaded=True), make_backend(artifact, "torch", "cpu"),
                 np.empty(n, dtype=np.int64)) for m in cfg.methods]
        for t in range(n):
            for method, chain, backend, ns in runs:
                t0 = clock()
                x = chain.process(counts[t])
                t1 = clock()
                y = backend.step(x) if where == "in_loop" else outputs[method][t]
                t2 = clock()
                chain.observe(y)
                ns[t] = clock() - t2 + t1 - t0
        for method, _, _, ns in runs:
            s = summarize(ns)
            out[method][where] = {"p50_us": s["p50"], "p99_us": s["p99"], "p99.9_us": s["p99.9"], "max_us": s["max"]}
    return [{"method": m, "n": n, **v} for m, v in out.items()]


def event_summary(chain: AdaptationChain) -> dict:
    kinds: dict[str, int] = {}
    for ev in chain.history:
        kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
    return {"events": kinds, "masked_at_end": int(chain.mask.sum()),
            "guard_disabled": bool(chain.guard is not None and chain.guard.disabled)}


# --- the whole evaluation ---------------------------------------------------------------------
@dataclass
class Progress:
    say: Callable[[str], None] = print
    started: float = field(default_factory=time.perf_counter)

    def __call__(self, text: str) -> None:
        self.say(f"[{time.perf_counter() - self.started:7.0f} s] {text}")


def ensure_latent(artifact: Artifact, k: int) -> Artifact:
    """The artifact with its latent reference (fitted on its own training block if missing)."""
    if "latent" in artifact.config.get("adaptation", {}):
        return artifact
    fit_reference(artifact, None, k)
    return load_artifact(artifact.path)


@dataclass
class SeedRun:
    """One model and seed: every (drift kind, method) stream of its later day."""

    artifact: Artifact
    sessions: dict[str, BinnedSession]
    combos: list[tuple[str, str]]  # (kind, method) of each stream
    preds: np.ndarray  # [len(combos), T, 2]
    chains: list[AdaptationChain]

    def pred(self, kind: str, method: str) -> np.ndarray:
        return self.preds[self.combos.index((kind, method))]


def run_seed(label: str, artifact: Artifact, seed: int, cfg: DriftConfig, progress: Progress) -> SeedRun:
    """Simulate (or load) the seed's later days and stream all kinds x methods in one batch."""
    day0 = Day0.of(artifact)
    sessions = {}
    for kind in cfg.kinds:
        progress(f"{label} seed {seed}: later day {DAY_SEED_BASE + seed}, drift {kind!r}")
        sessions[kind] = later_day(day0, kind, seed, cfg.minutes, artifact.bin_width)
    combos = [(k, m) for k in cfg.kinds for m in cfg.methods]
    chains = [make_chain(artifact, m, cfg) for _, m in combos]
    progress(f"{label} seed {seed}: streaming {len(combos)} sessions x methods through step")
    preds = stream(artifact.model.cpu().eval(), [sessions[k].counts for k, _ in combos], chains)
    return SeedRun(artifact, sessions, combos, preds, chains)


def score_rows(label: str, seed: int, run: SeedRun) -> list[dict]:
    rows = []
    for (kind, method), pred, chain in zip(run.combos, run.preds, run.chains):
        s = run.sessions[kind]
        score = r2_scores(pred, s.velocity[: pred.shape[0]], s.valid[: pred.shape[0]])
        rows.append({"model": label, "seed": seed, "artifact": str(run.artifact.path), "kind": kind,
                     "method": method, "r2": score["r2"], "r2_vw": score["r2_vw"], "n_bins": score["n_bins"],
                     **event_summary(chain)})
    return rows


def seed_task(label: str, folder: Path, seed: int, cfg: DriftConfig, parity: bool = False,
              progress: Progress | None = None) -> dict:
    """One (model, seed): its later days' rows, and, if asked, the batch-1 backend parity.
    A self-contained task: it loads what it needs, so it can run in another process."""
    torch.set_num_threads(cfg.threads)
    progress = progress or Progress(lambda _: None)
    artifact = load_artifact(folder)
    if "full" in cfg.methods:
        artifact = ensure_latent(artifact, cfg.latent_k)
    run = run_seed(label, artifact, seed, cfg, progress)
    out: dict = {"rows": score_rows(label, seed, run)}
    if parity:
        kind, method = parity_target(cfg)
        progress(f"{label}: batch-1 backend parity on {kind}/{method}")
        diff = backend_parity(artifact, run.sessions[kind].counts, make_chain(artifact, method, cfg),
                              run.pred(kind, method))
        y_std = float(np.max(artifact.config["normalization"]["y_std"]))
        out["parity"] = {"kind": kind, "method": method, "max_abs_diff": diff, "relative_to_y_std": diff / y_std}
    return out


def parity_target(cfg: DriftConfig) -> tuple[str, str]:
    """Where parity and latency are measured: the hardest drift kind, the last method."""
    return ("combined" if "combined" in cfg.kinds else cfg.kinds[-1]), cfg.methods[-1]


def latency_task(folder: Path, cfg: DriftConfig) -> list[dict]:
    """Per-bin cost of each method on seed 0's later day; run alone, after the streams, so
    no other task shares the CPU while it is timed."""
    torch.set_num_threads(cfg.threads)
    artifact = load_artifact(folder)
    kind, _ = parity_target(cfg)
    session = later_day(Day0.of(artifact), kind, 0, cfg.minutes, artifact.bin_width)
    chains = [make_chain(artifact, m, cfg) for m in cfg.methods]
    preds = stream(artifact.model.cpu().eval(), [session.counts] * len(chains), chains)
    return chain_latency(artifact, session.counts, dict(zip(cfg.methods, preds)), cfg)


def evaluate(cfg: DriftConfig, progress: Progress, run_tasks: Callable | None = None) -> dict:
    """Every model x seed x drift kind x method; batch-1 parity per model; latency once.

    Each (model, seed) is one task (`seed_task`); `run_tasks` runs them (benchmarks.executor,
    on Ray or here), by default here, one after another."""
    from functools import partial

    torch.set_num_threads(cfg.threads)
    if "full" in cfg.methods:  # fit missing latent references once, before tasks share the folders
        for folder in {f for folders in cfg.runs.values() for f in folders}:
            ensure_latent(load_artifact(folder), cfg.latent_k)
    tasks = [(f"{label}-seed{seed}", partial(seed_task, label, folders[seed % len(folders)], seed, cfg,
                                             seed == 0, None if run_tasks else progress))
             for label, folders in cfg.runs.items() for seed in range(cfg.seeds)]
    results = run_tasks(tasks) if run_tasks is not None else [task() for _, task in tasks]
    rows = [row for r in results for row in r["rows"]]
    parity = {r["rows"][0]["model"]: r["parity"] for r in results if "parity" in r}
    if not cfg.latency_bins:
        return {"rows": rows, "parity": parity, "latency": []}
    progress("per-bin cost of each method, alone")
    return {"rows": rows, "parity": parity, "latency": latency_task(next(iter(cfg.runs.values()))[0], cfg)}


def _mean_std(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None, "values": v.tolist()}


def aggregate(rows: list[dict], cfg: DriftConfig) -> dict:
    """Per model: R² mean ± std over seeds per (kind, method), recovered fractions, the control check."""
    out = {}
    for label in cfg.runs:
        r = {(x["seed"], x["kind"], x["method"]): x["r2"] for x in rows if x["model"] == label}
        seeds = sorted({s for s, _, _ in r})
        table, recovered, control = {}, {}, {}
        for kind in cfg.kinds:
            table[kind] = {m: _mean_std([r[(s, kind, m)] for s in seeds]) for m in cfg.methods}
            if kind == "none":
                continue
            recovered[kind] = {}
            for m in cfg.methods:
                if m == "none":
                    continue
                fr = []
                for s in seeds:
                    lost = r[(s, "none", "none")] - r[(s, kind, "none")]
                    fr.append((r[(s, kind, m)] - r[(s, kind, "none")]) / lost if lost > 1e-6 else float("nan"))
                lost = table["none"]["none"]["mean"] - table[kind]["none"]["mean"]
                recovered[kind][m] = {"of_mean": (table[kind][m]["mean"] - table[kind]["none"]["mean"]) / lost
                                      if lost > 1e-6 else None, "per_seed": fr, "lost_r2": lost}
        for m in cfg.methods:
            delta = [r[(s, "none", m)] - r[(s, "none", "none")] for s in seeds]
            control[m] = {"delta_mean": float(np.mean(delta)), "delta_min": float(np.min(delta)),
                          "ok": bool(np.mean(delta) >= -0.01)}
        out[label] = {"r2": table, "recovered": recovered, "control": control, "seeds": seeds}
    return out


# --- report ------------------------------------------------------------------------------------
def _cell(d: dict) -> str:
    return f"{d['mean']:.3f}" + (f" ± {d['std']:.3f}" if d.get("std") is not None else "")


def markdown(results: dict) -> str:
    from benchmarks.report import markdown_table

    cfg, agg = results["config"], results["aggregate"]
    methods = cfg["methods"]
    lines = ["# Drift: streaming R² with and without test-time adaptation", "",
             f"Command: `{cfg['command']}`", "",
             f"Later days: {cfg['seeds']} seeds, each a {cfg['minutes']:g}-minute simulated session of the "
             "day-0 array (same population seed, new day seed) streamed whole through the adaptation chain and "
             "`step`; R² = mean of vx, vy (replay.scoring) over every bin, adaptation warm-up included. "
             f"Running-normalisation tau {cfg['tau_s']:g} s, latent k = {cfg['latent_k']}. "
             "Mean ± s.d. over seeds.", ""]
    for label, a in agg.items():
        runs = ", ".join(sorted({r["artifact"] for r in results["rows"] if r["model"] == label}))
        lines += [f"## {label}", "", f"Artifacts: {runs}", ""]
        heads = ["drift", "no drift (clean day)", *(f"{m}" for m in methods)]
        rows = []
        for kind, per in a["r2"].items():
            rows.append([kind, _cell(a["r2"]["none"]["none"]), *(_cell(per[m]) for m in methods)])
        lines += ["R² by drift kind (columns: adaptation method; `none` = drift without adaptation)", "",
                  markdown_table(heads, rows), ""]
        heads = ["drift", "R² lost", *(m for m in methods if m != "none")]
        rows = []
        for kind, per in a["recovered"].items():
            lost = next(iter(per.values()))["lost_r2"]
            rows.append([kind, f"{lost:.3f}", *(
                "–" if per[m]["of_mean"] is None else f"{100 * per[m]['of_mean']:.0f}%" for m in methods if m != "none")])
        lines += ["Fraction of the lost R² recovered (of the seed means)", "", markdown_table(heads, rows), ""]
        ctrl = ", ".join(f"{m} {c['delta_mean']:+.4f} ({'ok' if c['ok'] else 'FAILS'})"
                         for m, c in a["control"].items() if m != "none")
        lines += [f"No-drift control, R² change from adaptation (must be ≥ -0.01): {ctrl}", ""]
        p = results["parity"].get(label)
        if p:
            lines += [f"Batched streaming vs `make_backend(artifact, 'torch', 'cpu')` at batch 1 "
                      f"({p['kind']}/{p['method']}, whole session): max |Δvelocity| = {p['max_abs_diff']:.2e} "
                      f"({p['relative_to_y_std']:.1e} of the training velocity s.d.)", ""]
    if results["latency"]:
        heads = ["method", "alone p50 µs", "alone p99 µs", "alone max µs",
                 "in loop p50 µs", "in loop p99 µs", "in loop p99.9 µs", "in loop max µs"]
        rows = [[x["method"], *(f"{x['alone'][k]:.1f}" for k in ("p50_us", "p99_us", "max_us")),
                 *(f"{x['in_loop'][k]:.1f}" for k in ("p50_us", "p99_us", "p99.9_us", "max_us"))]
                for x in results["latency"]]
        n = results["latency"][0]["n"]
        lines += ["## Per-bin cost of adaptation", "",
                  f"`process` + `observe` per bin over {n} bins of the first model's `combined` session, latent "
                  "fits in their worker thread. *Alone*: the chain by itself; *in loop*: between real model steps "
                  "(not timed), as the runtime runs it — a model step evicts caches, so the same code runs slower "
                  "right after one.", "", markdown_table(heads, rows), ""]
    lines += ["## Drift kinds", "", *(f"- `{k}`: {DRIFT_NOTES[k]}" for k in cfg["kinds"]), "",
              "## Machine", "", f"{results['machine']['cpu']}, {results['machine']['usable_cores']} usable cores, "
              f"load average at start {results['machine']['loadavg'][0]:.2f}"
              + (f" — {results['load_warning']}" if results.get("load_warning") else ""), ""]
    return "\n".join(lines)


def report(cfg: DriftConfig, raw: dict, machine: dict, warning: str | None, seconds: float) -> dict:
    """What drift.json holds: the settings, the machine, the raw rows and their aggregate."""
    return {"config": {**asdict(cfg), "runs": {k: [str(p) for p in v] for k, v in cfg.runs.items()},
                       "drifts": {k: spec_dict(DRIFTS[k]) for k in cfg.kinds}},
            "machine": machine, "load_warning": warning, "seconds": seconds,
            **raw, "aggregate": aggregate(raw["rows"], cfg)}


def run(cfg: DriftConfig, out: Path, progress: Progress, run_tasks: Callable | None = None) -> dict:
    from benchmarks.machine import load_warning, machine_info

    machine, warning = machine_info(), load_warning()
    started = time.perf_counter()
    raw = evaluate(cfg, progress, run_tasks)
    results = report(cfg, raw, machine, warning, time.perf_counter() - started)
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.json").write_text(json.dumps(results, indent=2))
    (out / "drift.md").write_text(markdown(results))
    return results


# --- training what is missing ---------------------------------------------------------------------
def take_or_train(model: str, folder: Path, seeds: int, epochs: int | None, progress: Progress,
                  run_tasks: Callable | None = None) -> list[Path]:
    """Artifact folders of a run (seed-K inside, or one artifact); trained on the default session if absent."""
    from training.runs import RunSpec, artifact_folders, load_data, train_run

    def found() -> list[Path]:
        if (folder / "config.json").is_file():
            return [folder]
        return sorted(folder.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))

    if not found():
        n = 1 if model in ("wiener", "kalman") else seeds
        progress(f"training {model} ({n} seed(s)) into {folder}")
        session, prov = load_data(None)
        train_run(RunSpec(model=model, out=folder, seeds=n, epochs=epochs), session, prov, run_tasks=run_tasks)
        assert found() == artifact_folders(folder, n)
    return found()


def evaluate_drift(
    model: Annotated[list[str], typer.Option("--model", "-m", help="model to evaluate (repeatable)")] = ["lstm", "wiener"],  # noqa: B006
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="runs/<model> is taken if present, else trained there")] = Path("runs/drift"),
    seeds: Annotated[int, typer.Option("--seeds", help="evaluation seeds (training seeds and later days)")] = 3,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="epochs when a network must be trained")] = None,
    minutes: Annotated[float, typer.Option("--minutes", help="length of each later-day session")] = 8.0,
    kinds: Annotated[Optional[str], typer.Option("--kinds", help=f"comma list of {', '.join(DRIFTS)}")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help=f"comma list of {', '.join(METHODS)}")] = None,
    tau: Annotated[float, typer.Option("--adapt-tau", help="running-normalisation time constant, s")] = 60.0,
    out: Annotated[Path, typer.Option("--out", help="where drift.json and drift.md go")] = Path("benchmarks/results"),
    workers: Annotated[int, typer.Option("--workers", help="(model, seed) tasks at once (> 1: on a local Ray "
                                                           "instance, the 'cluster' extra)")] = 1,
) -> None:
    """Streaming R² on later simulated days with each kind of drift, per adaptation method."""
    from rich.console import Console

    console = Console()
    progress = Progress(console.print)
    argv = sys.argv[1:]
    command = "spikestream " + shlex.join(argv) if argv[:1] == ["evaluate-drift"] else "evaluate-drift (in-process)"
    runner = None
    if workers != 1:  # training and evaluation tasks on a local Ray instance
        from functools import partial

        from benchmarks.executor import Executor, run_in_order

        runner = partial(run_in_order, executor=Executor(workers=workers, console=console), title="drift tasks")
    try:
        cfg = DriftConfig(
            runs={m: take_or_train(m, runs_dir / m, seeds, epochs, progress, runner) for m in model},
            seeds=seeds, minutes=minutes, tau_s=tau, command=command,
            kinds=tuple(kinds.split(",")) if kinds else tuple(DRIFTS),
            methods=tuple(methods.split(",")) if methods else tuple(METHODS),
        )
        results = run(cfg, out, progress, runner)
    except (DriftEvalError, ArtifactError, ValueError, OSError, RuntimeError) as e:
        console.print(f"[red]evaluate-drift: {e}[/red]")
        raise typer.Exit(1) from None
    console.print(markdown(results))
    console.print(f"wrote {out / 'drift.md'} and {out / 'drift.json'}")
