"""One training run end to end: data, split, baselines, seeds, artifacts, summary.

Layout of `--out runs/NAME` (the artifact folder is what `evaluate`, `export` and the
runtime take):

- one seed: `runs/NAME/` IS the artifact (config.json, weights, fallback, plots), plus
  `summary.json`;
- N > 1 seeds: `runs/NAME/seed-K/` is one full artifact per seed K = 0..N-1, and
  `runs/NAME/summary.json` holds mean ± std and the 95% t-interval of every metric.

Every seed shares one chronological split, one set of training-only normalisation
statistics and one pair of baselines (Wiener with validation-chosen ridge, Kalman), so the
seeds differ only in the network's initialisation and sampling. Each network artifact
carries that Wiener filter as its fallback decoder. Held-out metrics are always the test
block streamed through `step` from `init_state` (training/metrics.py).
"""
from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from models.artifact import save_artifact, sha256
from models.base import StreamingDecoder
from models.registry import MODEL_NAMES, NETWORK_NAMES, build_model
from replay.defaults import load_session
from replay.session import BinnedSession
from training import plots
from training.augment import AugmentConfig
from training.baselines import BASELINES, fit_kalman, fit_wiener
from training.data import Split, fit_normalization, make_split
from training.metrics import stream_metrics
from training.rvq_progressive import RVQSchedule, quantisation_gap, train_rvq
from training.train import EpochCallback, TrainConfig, TrainResult, seed_everything, train_network

SUMMARY = "summary.json"
SUMMARY_KEYS = ("r2", "r2_vx", "r2_vy", "r2_vw", "trial_r2_median", "trial_r2_p5")
TASKS = ("maze", "rtt")

# Per-network training defaults, sized so each trains in a few minutes on one core of the
# 2-core CI-class CPU (the LSTM in well under its 3-minute target), chosen by measurement on
# the default maze session's validation block (benchmarks/results/training.md). Mamba
# learns more slowly per epoch and gained ~0.03 R² from a higher LR and 40 epochs.
NETWORK_DEFAULTS: dict[str, dict] = {
    "lstm": {"epochs": 30},
    "transformer": {"epochs": 30},
    "mamba": {"epochs": 40, "lr": 4e-3, "patience": 12},
    "rvq": {"epochs": 30},  # pre-training; fine-tuning epochs are in RVQSchedule
}


@dataclass
class RunSpec:
    model: str
    out: Path
    seeds: int = 1
    epochs: int | None = None  # None: the model's default
    device: str = "cpu"
    augment: bool = True
    threads: int = 1  # measured: 2 intra-op threads made training 3-20x slower on the shared 2-core VM
    hparams: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)  # TrainConfig fields
    rvq: RVQSchedule = field(default_factory=RVQSchedule)

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")

    def train_config(self, seed: int) -> TrainConfig:
        values = {**NETWORK_DEFAULTS.get(self.model, {}), **self.train_overrides}
        if self.epochs is not None:
            values["epochs"] = self.epochs
        return TrainConfig(seed=seed, device=self.device, augment=AugmentConfig(enabled=self.augment), **values)


@dataclass
class Hooks:
    """Progress callbacks for a user interface; all optional."""

    on_seed_start: Callable[[int, int], None] | None = None  # seed, epochs planned
    on_epoch: EpochCallback | None = None
    on_seed_end: Callable[[dict], None] | None = None


# --- data and provenance -------------------------------------------------------------------
def jsonable(obj):
    """Strict-JSON copy: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def load_data(data: Path | None, task: str = "maze", sim_seed: int = 0) -> tuple[BinnedSession, dict]:
    """The session to train on and where it came from (recorded in every artifact)."""
    if data is None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        session = load_session(None, task=task, seed=sim_seed)
        prov = {"kind": "simulated", "task": task, "sim_seed": sim_seed,
                "settings": session.meta.get("default_session"), "file": session.source}
    else:
        data = Path(data)
        session = load_session(data)
        prov = {"kind": "nwb", "path": str(data.resolve()), "sha256": sha256(data)}
    if session.velocity is None:
        raise ValueError(f"{session.source}: session has no behaviour to train on")
    prov.update(n_bins=session.n_bins, n_channels=session.n_channels, bin_width=session.bin_width,
                duration_s=session.duration, meta=session.meta)
    return session, jsonable(prov)


def session_from_provenance(prov: dict) -> BinnedSession:
    """Re-open the session an artifact was trained on (the default for `evaluate`)."""
    if prov.get("kind") == "simulated":
        return load_session(None, task=prov["task"], seed=prov["sim_seed"])
    if prov.get("kind") == "nwb":
        path = Path(prov["path"])
        if not path.is_file():
            raise FileNotFoundError(f"the artifact's training data {path} is gone; pass --data FILE.nwb")
        return load_session(path)
    raise ValueError(f"artifact provenance {prov.get('kind')!r} does not say how to reload its data; pass --data")


# --- statistics over seeds ---------------------------------------------------------------
def seed_stats(values: list[float]) -> dict:
    """mean, sample std and the 95% Student-t interval of the mean over seeds."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    out = {"n": int(v.size), "values": [float(x) for x in values if x is not None]}
    if v.size == 0:
        return {**out, "mean": None, "std": None, "ci95": None}
    mean = float(v.mean())
    if v.size == 1:
        return {**out, "mean": mean, "std": None, "ci95": None}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, v.size - 1) * std / math.sqrt(v.size))
    return {**out, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


# --- one seed ----------------------------------------------------------------------------
@dataclass
class Shared:
    """What every seed of a run shares."""

    session: BinnedSession
    provenance: dict
    split: Split
    blocks: dict[str, BinnedSession]
    norm_args: tuple
    wiener: StreamingDecoder
    kalman: StreamingDecoder
    baseline_details: dict
    baseline_metrics: dict


def prepare(session: BinnedSession, provenance: dict) -> Shared:
    """Split, training-only statistics, and both baselines with their streamed test metrics."""
    split = make_split(session)
    blocks = {name: session.slice(*split.block(name)) for name in ("train", "val", "test")}
    norm = fit_normalization(session, split.train)
    t0 = time.perf_counter()
    wiener, details = fit_wiener(blocks["train"], blocks["val"], norm)
    details["fit_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kalman = fit_kalman(blocks["train"], norm)
    baseline_details = {"wiener": details, "kalman": {"fit_seconds": time.perf_counter() - t0}}
    metrics = {name: stream_metrics(m, blocks["test"])[0] for name, m in (("wiener", wiener), ("kalman", kalman))}
    return Shared(session, provenance, split, blocks, norm.as_args(), wiener, kalman, baseline_details, metrics)


def _train_seed(spec: RunSpec, shared: Shared, seed: int, hooks: Hooks) -> tuple[StreamingDecoder, TrainResult | None, dict]:
    """Build and train (or take the fitted baseline); returns model, history and extra report."""
    if spec.model in BASELINES:
        model = shared.wiener if spec.model == "wiener" else shared.kalman
        return model, None, {"fit": shared.baseline_details[spec.model]}
    seed_everything(seed)
    model = build_model(spec.model, shared.session.n_channels, **spec.hparams)
    model.set_normalization(*shared.norm_args)
    cfg = spec.train_config(seed)
    if hooks.on_seed_start is not None:
        total = cfg.epochs + (spec.rvq.finetune_epochs if spec.model == "rvq" else 0)
        hooks.on_seed_start(seed, total)
    b = shared.blocks
    if spec.model == "rvq":
        result, report = train_rvq(model, b["train"], b["val"], b["test"], cfg, spec.rvq, on_epoch=hooks.on_epoch)
        return model, result, {"rvq": report}
    return model, train_network(model, b["train"], b["val"], cfg, on_epoch=hooks.on_epoch), {}


def run_seed(spec: RunSpec, shared: Shared, seed: int, folder: Path, hooks: Hooks) -> dict:
    """Train one seed, stream the test block through `step`, write the artifact and plots."""
    start = time.perf_counter()
    model, result, extra = _train_seed(spec, shared, seed, hooks)
    seconds = time.perf_counter() - start if result is not None else extra["fit"]["fit_seconds"]
    model = model.cpu().eval()
    test, pred = stream_metrics(model, shared.blocks["test"])
    if "rvq" in extra:
        extra["rvq"].update(quantisation_gap(extra["rvq"], test["r2"]))
    n_params = model.n_learned()
    beats = {name: bool(test["r2"] > m["r2"]) for name, m in shared.baseline_metrics.items() if name != spec.model}
    metrics = {"test": test, "baselines_test": shared.baseline_metrics, "beats_baselines": beats, **extra,
               "definition": "test block streamed through step from init_state(1), eager torch, float32; "
                             "R² as replay.scoring.r2_scores (r2 = equal average of vx, vy: the headline)"}
    if result is not None:
        metrics["val_r2_best"] = result.best_val_r2
    cfg = spec.train_config(seed)
    training = {
        "seed": seed, "seconds": seconds, "n_params": n_params, "device": spec.device,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "split": shared.split.to_dict(),
    }
    if result is not None:
        training.update(config=cfg.to_dict(), augment=cfg.augment.to_dict(), epochs_run=result.epochs_run,
                        best_epoch=result.best_epoch, stopped_early=result.stopped_early, history=result.history)
    fallback = None if spec.model == "wiener" else shared.wiener
    save_artifact(folder, model, channel_ids=shared.session.unit_ids, bin_width=shared.session.bin_width,
                  fallback=fallback, provenance={**shared.provenance, "split": shared.split.to_dict()},
                  metrics=jsonable(metrics), training=jsonable(training))
    title = f"{spec.model} seed {seed}: held-out streamed R² {test['r2']:.3f}"
    if result is not None:
        plots.learning_curve(result.history, folder / plots.LEARNING_CURVE, title, result.best_epoch)
    tb = shared.blocks["test"]
    plots.velocity_trace(tb.t, pred, tb.velocity, folder / plots.VELOCITY, title, tb.bin_width)
    record = {"seed": seed, "path": str(folder), "seconds": seconds, "n_params": n_params, **test,
              "beats_baselines": beats}
    if result is not None:
        record.update(epochs_run=result.epochs_run, best_epoch=result.best_epoch, val_r2_best=result.best_val_r2)
    if "rvq" in extra:
        rep = extra["rvq"]
        record.update(encoder_r2=rep["encoder_test_r2"], r2_gap_to_encoder=rep["r2_gap_to_encoder"],
                      utilisation=rep["test_usage"]["utilisation"], perplexity=rep["test_usage"]["perplexity"],
                      collapsed=rep["collapsed"])
    if hooks.on_seed_end is not None:
        hooks.on_seed_end(record)
    return record


# --- the whole run -----------------------------------------------------------------------
def summarize(spec: RunSpec, shared: Shared, records: list[dict]) -> dict:
    keys = [*SUMMARY_KEYS, "seconds", "n_params", "epochs_run", "best_epoch", "encoder_r2", "r2_gap_to_encoder"]
    metrics = {k: seed_stats([r[k] for r in records]) for k in keys if all(k in r for r in records)}
    if spec.model == "rvq":
        stages = len(records[0]["utilisation"])
        for what in ("utilisation", "perplexity"):
            metrics[what] = [seed_stats([r[what][s] for r in records]) for s in range(stages)]
    mean_r2 = metrics["r2"]["mean"]
    return jsonable({
        "model": spec.model,
        "layout": "single artifact in this folder" if spec.seeds == 1 else "one artifact per seed-K folder",
        "n_seeds": spec.seeds,
        "runs": records,
        "metrics": metrics,
        "baselines_test": shared.baseline_metrics,
        "beats_baselines": {name: bool(mean_r2 is not None and mean_r2 > m["r2"])
                            for name, m in shared.baseline_metrics.items() if name != spec.model},
        "all_seeds_beat_baselines": all(all(r["beats_baselines"].values()) for r in records),
        "collapsed_seeds": [r["seed"] for r in records if r.get("collapsed")],
        "augment": spec.augment,
        "provenance": shared.provenance,
        "split": shared.split.to_dict(),
    })


def artifact_folders(out: Path, seeds: int) -> list[Path]:
    return [out] if seeds == 1 else [out / f"seed-{k}" for k in range(seeds)]


TaskRunner = Callable[[list[tuple[str, Callable[[], dict]]]], list[dict]]  # (key, task) -> results in order


def seed_task(spec: RunSpec, shared: Shared, seed: int, folder: Path, hooks: Hooks = Hooks()) -> dict:
    """One seed as a self-contained task (for a task runner that may run it in another process)."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    return run_seed(spec, shared, seed, folder, hooks)


def train_run(spec: RunSpec, session: BinnedSession, provenance: dict, hooks: Hooks = Hooks(),
              run_tasks: TaskRunner | None = None) -> dict:
    """Train `spec.seeds` seeds of `spec.model`; write artifacts and summary.json; return the summary.

    Seeds are independent tasks: `run_tasks` runs them (benchmarks.executor: Ray or this
    process); by default here, one after another."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {spec.device}: CUDA is not available in this torch ({torch.__version__})")
    shared = prepare(session, provenance)
    spec.out.mkdir(parents=True, exist_ok=True)
    tasks = [(f"seed-{seed}", partial(seed_task, spec, shared, seed, folder, hooks))
             for seed, folder in enumerate(artifact_folders(spec.out, spec.seeds))]
    records = run_tasks(tasks) if run_tasks is not None else [task() for _, task in tasks]
    summary = summarize(spec, shared, records)
    (spec.out / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary

