"""Drift evaluation: how much streaming accuracy each adaptation method keeps on later days.

Day 0 is the simulated session the artifacts were trained on. A "later day" is the same
array (same `population_seed`: the same neurons) on another day (a new `seed`: new
behaviour, latents and spikes), recorded clean (the control) or with one kind of drift.
Every later-day session is streamed WHOLE, bin by bin, through the adaptation chain and the
model's `step` from `init_state`, with the guard fed each output: the runtime's path. The
R² is `replay.scoring.r2_scores` over every bin with behaviour, adaptation warm-up included.

Every stream goes through the runtime's own per-bin core (`decoder_runtime.core.BinCore`:
validate -> adapt -> step -> observe, the code a session runs) on the fastest CPU backend
that runs the artifact (`backend="auto"`; networks are exported first if needed);
`backend_parity` checks one stream against the eager torch backend and the report states
the difference. Latent fits run inline (`threaded=False`): the parameters swap in at exactly the bin a
real-time worker thread would deliver them (1 s after the block closes; a fit takes a few
ms), so results are deterministic. The per-bin cost is measured separately, threaded, as
the runtime runs it.

Lost R² = R²(clean day, no adaptation) - R²(drifted day, no adaptation); recovered fraction
of a method = (R²(drifted, method) - R²(drifted, none)) / lost.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from decoder_runtime.adaptation import METHODS, AdaptationChain, AdaptSettings, build_chain
from decoder_runtime.adaptation.fit import fit_reference
from decoder_runtime.adaptation.latent_align import load_latent
from decoder_runtime.adaptation.reference import TrainingReference
from decoder_runtime.assemble import artifact_fill, offline_core
from decoder_runtime.backends import make_backend
from decoder_runtime.core import decode_offline
from decoder_runtime.timing import ADAPTED, STEP_END, STEPPED, VALIDATED
from models.artifact import Artifact, load_artifact
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
    backend: str = "auto"
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


def decode(artifact: Artifact, backend, counts: np.ndarray, chain: AdaptationChain):
    """One later-day stream through the runtime's per-bin core: (velocity [T, 2], stamps [T, 8])."""
    core = offline_core(backend, artifact_fill(artifact), artifact.bin_width, chain)
    vel, _, stamps = decode_offline(core, counts)
    return vel, stamps


def backend_parity(artifact: Artifact, counts: np.ndarray, chain: AdaptationChain, fast: np.ndarray) -> float:
    """Max |streamed with the drift's backend - the eager torch reference| over one whole stream."""
    from decoder_runtime.backends import make_backend

    ref, _ = decode(artifact, make_backend(artifact, "torch", "cpu", 1), counts, chain)
    return float(np.abs(ref - fast).max())


def chain_latency(artifact: Artifact, backend, counts: np.ndarray, cfg: DriftConfig) -> list[dict]:
    """Per-bin cost (µs) of each method in the runtime's core, latent fits in their worker thread.

    From the core's own stage stamps: adapt (validated -> adapted, the chain's `process`) plus
    observe (step_end -> stepped), between real model steps as a session runs it (a model step
    evicts caches, which slows whatever code runs right after it). Methods run one after
    another over the same bins.
    """
    from benchmarks.stats import summarize

    n = min(cfg.latency_bins, counts.shape[0])
    rows = []
    for method in cfg.methods:
        _, st = decode(artifact, backend, counts[:n], make_chain(artifact, method, cfg, threaded=True))
        s = summarize((st[:, ADAPTED] - st[:, VALIDATED]) + (st[:, STEPPED] - st[:, STEP_END]))
        rows.append({"method": method, "n": n,
                     "in_loop": {"p50_us": s["p50"], "p99_us": s["p99"], "p99.9_us": s["p99.9"], "max_us": s["max"]}})
    return rows


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


def ensure_exported(artifact: Artifact) -> Artifact:
    """The artifact with an ONNX export when its fastest CPU backend needs one (all but LSTMs: numba)."""
    if artifact.config["model"]["name"] == "lstm" or "onnx" in (artifact.config.get("export") or {}):
        return artifact
    from training.export import export_artifact

    export_artifact(artifact.path, ("onnx",))
    return load_artifact(artifact.path)


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
    backend: object  # the backend every stream ran on (cfg.backend, resolved)

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
    backend = make_backend(artifact, cfg.backend, "cpu", cfg.threads)
    progress(f"{label} seed {seed}: streaming {len(combos)} sessions x methods through the runtime's core "
             f"({backend.name})")
    preds = np.stack([decode(artifact, backend, sessions[k].counts, ch)[0] for (k, _), ch in zip(combos, chains)])
    return SeedRun(artifact, sessions, combos, preds, chains, backend)


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
    """One (model, seed): its later days' rows, and, if asked, the backend's parity with eager torch.
    A self-contained task: it loads what it needs, so it can run in another process."""
    torch.set_num_threads(cfg.threads)
    progress = progress or Progress(lambda _: None)
    artifact = load_artifact(folder)
    run = run_seed(label, artifact, seed, cfg, progress)
    out: dict = {"rows": score_rows(label, seed, run)}
    if parity:
        kind, method = parity_target(cfg)
        progress(f"{label}: {run.backend.name} vs eager torch on {kind}/{method}")
        diff = backend_parity(artifact, run.sessions[kind].counts, make_chain(artifact, method, cfg),
                              run.pred(kind, method))
        y_std = float(np.max(artifact.config["normalization"]["y_std"]))
        out["parity"] = {"kind": kind, "method": method, "backend": run.backend.name, "max_abs_diff": diff,
                         "relative_to_y_std": diff / y_std}
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
    return chain_latency(artifact, make_backend(artifact, cfg.backend, "cpu", cfg.threads), session.counts, cfg)


def evaluate(cfg: DriftConfig, progress: Progress, run_tasks: Callable | None = None) -> dict:
    """Every model x seed x drift kind x method; backend parity per model; latency once.

    Each (model, seed) is one task (`seed_task`); `run_tasks` runs them (benchmarks.executor,
    on Ray or here), by default here, one after another."""
    from functools import partial

    torch.set_num_threads(cfg.threads)
    # fit missing latent references and exports once, before tasks share the folders
    for folder in {f for folders in cfg.runs.values() for f in folders}:
        artifact = load_artifact(folder)
        if "full" in cfg.methods:
            artifact = ensure_latent(artifact, cfg.latent_k)
        if cfg.backend == "auto":
            ensure_exported(artifact)
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
            lines += [f"Streamed through the runtime's per-bin core on the `{p.get('backend', 'torch')}` backend; against "
                      f"eager torch on one whole stream ({p['kind']}/{p['method']}): max |Δvelocity| = "
                      f"{p['max_abs_diff']:.2e} ({p['relative_to_y_std']:.1e} of the training velocity s.d.)", ""]
    if results["latency"]:
        heads = ["method", "p50 µs", "p99 µs", "p99.9 µs", "max µs"]
        rows = [[x["method"], *(f"{x['in_loop'][k]:.1f}" for k in ("p50_us", "p99_us", "p99.9_us", "max_us"))]
                for x in results["latency"]]
        n = results["latency"][0]["n"]
        lines += ["## Per-bin cost of adaptation", "",
                  f"`process` + `observe` per bin in the runtime's core (its stage stamps), over {n} bins of the first "
                  "model's `combined` session, between real model steps, latent fits in their worker thread.", "",
                  markdown_table(heads, rows), ""]
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
