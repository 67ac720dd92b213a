"""Sweeps: sessions x models (x hyperparameter grids) x seeds, one task each, then one table.

A sweep file (TOML) names what to train and what to run on every artifact:

    seeds = 3                 # or a list: [0, 1, 2]; seed s trains with seed s and scores later day s
    threads = 1               # torch threads per task = the CPUs Ray reserves for it
    gpus = 0                  # GPUs Ray reserves per task (device = "cuda" to train on them)

    [[sessions]]              # a simulated day: task, seed, minutes, population_seed, units ...
    name = "maze0"
    task = "maze"
    seed = 0
    [[sessions]]              # ... or a recorded one
    name = "day3"
    nwb = "data/day3.nwb"

    [models.lstm]             # the key is the label; `model` defaults to it
    [models.lstm-small]
    model = "lstm"
    hidden = [64, 128]        # a list is a grid axis: one task per value (and per seed, session)
    epochs = 20               # TrainConfig fields go to training, the rest to the model

    [evaluate]                # held-out R² is always recorded (the training record)
    drift = { minutes = 8 }   # the drift table (benchmarks/drift.py settings), per session

Each (session, model point, seed) is one task (`run_task`): it trains the artifact into
`SWEEP/artifacts/KEY/` and runs every evaluation named in `[evaluate]` on it; its result is
`SWEEP/tasks/KEY.json` (benchmarks.executor). The final table (`SWEEP/summary.md`) has the
statistics of training/report.py (mean ± s.d. and the Student-t 95% CI over seeds), one
row per session and model point; each session's drift table is `SWEEP/drift-SESSION.md`,
rendered by benchmarks/drift.py exactly as `evaluate-drift` renders it.

A `[search]` table is a hyperparameter search run by Ray Tune after the tasks
(benchmarks/sweep_tune.py). New evaluations (closed-loop metrics) plug in through
`EVALUATIONS` (run in each task) and `AGGREGATIONS` (run once over all results).
"""
from __future__ import annotations

import itertools
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.executor import Executor, Outcome, Task, write_atomic

if TYPE_CHECKING:  # imported where used: torch and Ray stay out of `--help`
    from benchmarks.drift import DriftConfig
    from benchmarks.sweep_tune import SearchSpec


class SweepError(ValueError):
    """The sweep file cannot be run as written; the message says why."""


@dataclass(frozen=True)
class SessionSpec:
    """A recorded session (`nwb`) or a simulated day (task, seed, minutes, population, units)."""

    name: str
    nwb: str | None = None
    task: str = "maze"
    seed: int = 0
    minutes: float | None = None  # None: the built-in default session's 10 minutes
    population_seed: int | None = None  # None: the simulator's default array for this seed
    units: int | None = None

    @property
    def is_default(self) -> bool:
        """The built-in default session (`spikestream train` without --data) of this task and seed."""
        return self.nwb is None and self.minutes is None and self.population_seed is None and self.units is None


@dataclass(frozen=True)
class ModelPoint:
    """One model at one point of its grid."""

    label: str  # the table row: the model's key, plus the grid values when there is a grid
    model: str
    hparams: tuple[tuple[str, object], ...] = ()  # model constructor keywords
    train: tuple[tuple[str, object], ...] = ()  # TrainConfig fields (epochs, lr, ...)


@dataclass(frozen=True)
class SweepSpec:
    sessions: tuple[SessionSpec, ...]
    models: tuple[ModelPoint, ...]
    seeds: tuple[int, ...]
    evaluate: dict = field(default_factory=dict)  # evaluation name -> its settings
    threads: int = 1
    gpus: float = 0.0
    device: str = "cpu"
    search: SearchSpec | None = None

    def tasks(self, folder: Path) -> list[Task]:
        return [Task(task_key(s, m, seed), partial(run_task, s, m, seed, str(folder / "artifacts"),
                                                   self.evaluate, self.threads, self.device),
                     num_cpus=self.threads, num_gpus=self.gpus)
                for s in self.sessions for m in self.models for seed in self.seeds]


def task_key(session: SessionSpec, point: ModelPoint, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9._=,-]+", "_", f"{session.name}--{point.label}--seed{seed}")


# --- reading a sweep file -------------------------------------------------------------------
def load_spec(path: Path) -> SweepSpec:
    """Parse and check a sweep file; a SweepError names the first problem."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SweepError(f"{path}: {e}") from None
    unknown = set(raw) - {"sessions", "models", "seeds", "evaluate", "threads", "gpus", "device", "search"}
    if unknown:
        raise SweepError(f"{path}: unknown keys {sorted(unknown)}")
    try:
        sessions = tuple(SessionSpec(**s) for s in raw.get("sessions", []))
    except TypeError as e:
        raise SweepError(f"{path}: [[sessions]]: {e}") from None
    if not sessions or len({s.name for s in sessions}) != len(sessions):
        raise SweepError(f"{path}: needs [[sessions]] with unique names")
    seeds = raw.get("seeds", 1)
    seeds = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    models = tuple(p for key, table in raw.get("models", {}).items() for p in model_points(key, table))
    search = None
    if "search" in raw:
        from benchmarks.sweep_tune import SearchSpec

        search = SearchSpec.parse(raw["search"], sessions)
    if not (models or search) or not seeds:
        raise SweepError(f"{path}: needs at least one [models.NAME] table (or a [search]) and one seed")
    evaluate = raw.get("evaluate", {})
    missing = set(evaluate) - set(EVALUATIONS) - {"heldout"}
    if missing:
        raise SweepError(f"{path}: [evaluate] {sorted(missing)} unknown; known: heldout, {', '.join(EVALUATIONS)}")
    if "drift" in evaluate:
        drift_config(evaluate["drift"], {}, 1)  # its settings are checked now, not in every task
    return SweepSpec(sessions, models, seeds, {k: v for k, v in evaluate.items() if k != "heldout"},
                     int(raw.get("threads", 1)), float(raw.get("gpus", 0)), str(raw.get("device", "cpu")), search)


def model_points(key: str, table: dict) -> list[ModelPoint]:
    """A model table expanded over its grid axes (list values), TrainConfig fields apart."""
    table = dict(table)
    model = checked_model(key, table.pop("model", key))
    axes = {k: v for k, v in table.items() if isinstance(v, list)}
    points = []
    for values in itertools.product(*axes.values()):
        grid = ",".join(f"{k}={v}" for k, v in zip(axes, values))
        points.append(model_point(f"{key}[{grid}]" if grid else key, model, {**table, **dict(zip(axes, values))}))
    return points


def checked_model(key: str, model: str) -> str:
    from models.registry import MODEL_NAMES

    if model not in MODEL_NAMES:
        raise SweepError(f"[models.{key}]: unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    return model


def model_point(label: str, model: str, params: dict) -> ModelPoint:
    """TrainConfig fields (epochs, lr, ...) to training, everything else to the model's constructor."""
    from training.train import TrainConfig

    train_fields = {f.name for f in fields(TrainConfig)} - {"seed", "device", "augment"}
    return ModelPoint(label, model, hparams=tuple(sorted((k, v) for k, v in params.items() if k not in train_fields)),
                      train=tuple(sorted((k, v) for k, v in params.items() if k in train_fields)))


# --- one task --------------------------------------------------------------------------------
_PREPARED: dict = {}  # the last session prepared in this process: tasks of one session share it


def prepared(session: SessionSpec):
    """The session's split, statistics and baselines (training.runs.prepare), once per process."""
    from training.runs import prepare

    if session not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[session] = prepare(*load_session(session))
    return _PREPARED[session]


def load_session(session: SessionSpec):
    """(BinnedSession, provenance) as `spikestream train` records them."""
    from replay import simulate_nwb
    from replay.defaults import DEFAULT_UNITS, cache_dir
    from replay.simulator import SIMULATOR_VERSION
    from training.runs import load_data

    if session.nwb is not None:
        return load_data(Path(session.nwb))
    if session.is_default:
        return load_data(None, session.task, session.seed)
    minutes, units = session.minutes or 10.0, session.units or DEFAULT_UNITS
    path = cache_dir() / "sweep" / (f"sim-{session.task}-seed{session.seed}-pop{session.population_seed}-"
                                    f"{minutes:g}min-{units}u-v{SIMULATOR_VERSION}.nwb")
    if not path.is_file():
        simulate_nwb(path, task=session.task, minutes=minutes, seed=session.seed,
                     population_seed=session.population_seed, n_units=units)
    data, prov = load_data(path)
    prov.update(kind="simulated", task=session.task, sim_seed=session.seed,
                settings={"minutes": minutes, "population_seed": session.population_seed, "n_units": units})
    return data, prov


def train_point(session: SessionSpec, point: ModelPoint, seed: int, folder: Path, threads: int = 1,
                device: str = "cpu", hooks=None) -> dict:
    """Train one artifact into `folder` as `spikestream train` would; its training record."""
    import torch

    from training.runs import Hooks, RunSpec, run_seed

    torch.set_num_threads(threads)  # before prepare: the baselines are fitted with the same threads
    shared = prepared(session)
    train = dict(point.train)
    spec = RunSpec(model=point.model, out=folder, seeds=1, epochs=train.pop("epochs", None), device=device,
                   threads=threads, hparams=dict(point.hparams), train_overrides=train)
    return run_seed(spec, shared, seed, folder, hooks or Hooks())


def run_task(session: SessionSpec, point: ModelPoint, seed: int, artifacts: str, evaluate: dict,
             threads: int = 1, device: str = "cpu") -> dict:
    """Train one artifact and run every evaluation on it; a JSON-able result."""
    import time

    started = time.perf_counter()
    folder = Path(artifacts) / task_key(session, point, seed)
    record = train_point(session, point, seed, folder, threads, device)
    result = {"session": asdict(session), "label": point.label, "model": point.model, "seed": seed,
              "artifact": str(folder), "heldout": record}
    for name, settings in evaluate.items():
        result[name] = EVALUATIONS[name](point.label, folder, seed, settings, threads)
    result["seconds"] = time.perf_counter() - started
    return result


def drift_config(settings: dict, runs: dict, threads: int, command: str = "") -> DriftConfig:
    from benchmarks.drift import DRIFTS, DriftConfig, DriftEvalError
    from decoder_runtime.adaptation import METHODS

    kinds, methods = tuple(settings.get("kinds", DRIFTS)), tuple(settings.get("methods", METHODS))
    try:
        return DriftConfig(runs=runs, seeds=int(settings.get("seeds", 1)), minutes=float(settings.get("minutes", 8.0)),
                           kinds=kinds, methods=methods, tau_s=float(settings.get("tau_s", 60.0)),
                           latent_k=int(settings.get("latent_k", 12)), latency_bins=int(settings.get("latency_bins", 0)),
                           threads=threads, command=command)
    except DriftEvalError as e:
        raise SweepError(f"[evaluate] drift: {e}") from None


def drift_evaluation(label: str, folder: Path, seed: int, settings: dict, threads: int) -> dict:
    """The artifact's later day `seed` under every drift kind x method (benchmarks/drift.py);
    parity against the batch-1 backend with seed 0, as `evaluate-drift` does."""
    from benchmarks.drift import seed_task
    from models.artifact import read_config

    kind = read_config(folder).get("provenance", {}).get("kind")
    if kind != "simulated":  # a later day of a recorded array cannot be simulated
        return {"skipped": f"trained on {kind!r} data: later days are simulated from a simulated day 0"}
    cfg = drift_config(settings, {label: [folder]}, threads)
    return seed_task(label, folder, seed, cfg, parity=seed == 0)


# name -> fn(label, artifact folder, seed, settings, threads) -> JSON-able dict, run inside each
# task after training. Closed-loop metrics (benchmarks/closed_loop.py) register here.
EVALUATIONS: dict[str, Callable[[str, Path, int, dict, int], dict]] = {"drift": drift_evaluation}


# --- aggregation -------------------------------------------------------------------------------
HELDOUT_KEYS = ("r2", "r2_vw", "trial_r2_median", "trial_r2_p5", "seconds")


def heldout_table(spec: SweepSpec, results: list[dict]) -> tuple[list[str], list[list[str]], dict]:
    """One row per (session, model point): seed statistics as training/report.py gives them."""
    from training.report import fmt_ci, fmt_stat
    from training.runs import seed_stats

    heads = ["session", "model", "seeds", "R² (mean ± sd)", "95% CI", "R² vw", "per-trial R² median",
             "train time (s)"]
    rows, stats = [], {}
    for s in spec.sessions:
        for m in spec.models:
            recs = [r["heldout"] for r in results if r["session"]["name"] == s.name and r["label"] == m.label]
            if not recs:
                continue
            st = {k: seed_stats([r[k] for r in recs]) for k in HELDOUT_KEYS if all(k in r for r in recs)}
            stats[f"{s.name}/{m.label}"] = st
            rows.append([s.name, m.label, str(len(recs)), fmt_stat(st["r2"]), fmt_ci(st["r2"]), fmt_stat(st["r2_vw"]),
                         fmt_stat(st.get("trial_r2_median")), fmt_stat(st["seconds"], 0)])
    return heads, rows, stats


def drift_reports(spec: SweepSpec, results: list[dict], folder: Path, command: str) -> dict[str, Path]:
    """Per session: benchmarks/drift.py's report and Markdown over the sweep's drift rows; the
    per-bin cost (if asked) is measured here, alone, after every task has finished."""
    from benchmarks.drift import latency_task, markdown, report
    from benchmarks.machine import load_warning, machine_info

    written = {}
    for s in spec.sessions:
        mine = [r for r in results if r["session"]["name"] == s.name and "rows" in r["drift"]]
        runs = {m.label: [Path(r["artifact"]) for r in mine if r["label"] == m.label] for m in spec.models}
        runs = {k: v for k, v in runs.items() if v}
        if not runs:
            continue
        cfg = drift_config({**spec.evaluate["drift"], "seeds": len(spec.seeds)}, runs, spec.threads, command)
        raw = {"rows": [row for r in mine for row in r["drift"]["rows"]],
               "parity": {r["label"]: r["drift"]["parity"] for r in mine if "parity" in r["drift"]},
               "latency": latency_task(next(iter(runs.values()))[0], cfg) if cfg.latency_bins else []}
        results_ = report(cfg, raw, machine_info(), load_warning(), sum(r["seconds"] for r in mine))
        write_atomic(folder / f"drift-{s.name}.json", json.dumps(results_, indent=1))
        write_atomic(folder / f"drift-{s.name}.md", markdown(results_))
        written[s.name] = folder / f"drift-{s.name}.md"
    return written


# name -> fn(spec, results, sweep folder, command) -> {session: report path}, run once at the end
AGGREGATIONS: dict[str, Callable[[SweepSpec, list[dict], Path, str], dict[str, Path]]] = {"drift": drift_reports}


def summarize(spec: SweepSpec, outcomes: list[Outcome], folder: Path, command: str, search: dict | None) -> dict:
    """summary.md / summary.json of the sweep folder, plus each evaluation's own reports."""
    from benchmarks.report import markdown_table

    results = [o.result for o in outcomes if o.ok]
    failed = {o.key: o.error.strip().splitlines()[-1] for o in outcomes if not o.ok}
    heads, rows, stats = heldout_table(spec, results)
    reports = {name: {k: str(v) for k, v in AGGREGATIONS[name](spec, results, folder, command).items()}
               for name in spec.evaluate if name in AGGREGATIONS and results}
    lines = ["# Sweep: held-out streamed R²", "", f"Command: `{command}`", "",
             "Held-out test block streamed through `step` from `init_state(1)` (as `spikestream train`); "
             "mean ± sample s.d. over seeds, 95% CI the Student-t interval of the mean.", "",
             markdown_table(heads, rows), ""]
    lines += [f"- {name} report ({session}): `{path}`" for name, per in reports.items() for session, path in per.items()]
    if search and search["best"]:
        lines += [f"- search: {len(search['trials'])} trials, best {search['best']['trial']} (validation R² "
                  f"{search['best']['val_r2']:.4f}): `{folder / 'search.md'}`"]
    if failed:
        lines += ["", f"## Failed tasks ({len(failed)} of {len(outcomes)}; `--resume` reruns them)", "",
                  *(f"- `{k}`: {e}" for k, e in failed.items())]
    summary = {"command": command, "tasks": len(outcomes), "failed": failed, "heldout": stats, "reports": reports,
               "resumed": [o.key for o in outcomes if o.resumed], "search": search}
    write_atomic(folder / "summary.md", "\n".join(lines) + "\n")
    write_atomic(folder / "summary.json", json.dumps(summary, indent=1))
    return {**summary, "table": (heads, rows)}


def run_sweep(spec: SweepSpec, folder: Path, executor: Executor, command: str = "") -> dict:
    """Run every task of the sweep (skipping finished ones with resume), then the search, and summarize."""
    folder.mkdir(parents=True, exist_ok=True)
    outcomes = executor.run(spec.tasks(folder), "sweep tasks") if spec.models else []
    search = None
    if spec.search is not None:
        from benchmarks.sweep_tune import run_search

        search = run_search(spec.search, folder, executor, spec.threads, spec.gpus, spec.device)
    return summarize(spec, outcomes, folder, command, search)
