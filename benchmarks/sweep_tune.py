"""The `[search]` of a sweep file: a hyperparameter search run by Ray Tune.

    [search]
    model = "lstm"                 # what to tune; session (default: the first) and seed (0)
    samples = 8                    # trials drawn from the space
    scheduler = "asha"             # optional: stop weak trials early on their validation R²
    epochs = 20                    # plain values are fixed for every trial
    [search.space]
    lr = { loguniform = [1e-4, 1e-2] }
    hidden = { choice = [64, 128, 256] }

Each trial trains one artifact exactly as a sweep task does (`sweep.train_point`) and reports
its validation R² every epoch; trials are ranked on the best validation R² (never on the test
block, which is reported beside it). Tune keeps its state in `SWEEP/search/`, so `--resume`
continues an interrupted search (`Tuner.restore`) instead of starting it again. Grids
(`[models]` lists) need no Ray; a search does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.executor import Executor, write_atomic
from benchmarks.sweep import ModelPoint, SessionSpec, SweepError, checked_model, model_point, train_point

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
METRIC = "val_r2"


@dataclass(frozen=True)
class SearchSpec:
    session: SessionSpec
    model: str
    space: dict  # name -> {distribution: arguments}
    fixed: dict
    samples: int = 8
    seed: int = 0
    scheduler: str | None = None

    @classmethod
    def parse(cls, raw: dict, sessions: tuple[SessionSpec, ...]) -> "SearchSpec":
        raw = dict(raw)
        model = checked_model("search", raw.pop("model", ""))
        space = raw.pop("space", {})
        name = raw.pop("session", sessions[0].name)
        session = next((s for s in sessions if s.name == name), None)
        if session is None:
            raise SweepError(f"[search] session {name!r} is not one of the [[sessions]]")
        for key, dist in space.items():
            if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS):
                raise SweepError(f"[search.space] {key}: one of {{{' | '.join(DISTRIBUTIONS)} = [...]}}")
        scheduler = raw.pop("scheduler", None)
        if scheduler not in (None, "asha"):
            raise SweepError(f"[search] scheduler {scheduler!r}: only 'asha' (or none)")
        samples, seed = int(raw.pop("samples", 8)), int(raw.pop("seed", 0))
        return cls(session, model, space, raw, samples, seed, scheduler)


def tune_space(space: dict) -> dict:
    """The sweep file's distributions as Ray Tune search-space objects."""
    from ray import tune

    out = {}
    for key, dist in space.items():
        (kind, args), = dist.items()
        out[key] = (tune.choice(args) if kind == "choice" else tune.grid_search(args) if kind == "grid"
                    else getattr(tune, kind)(*args))
    return out


def trial(config: dict, session: SessionSpec, model: str, fixed: dict, seed: int, folder: str, threads: int,
          device: str) -> None:
    """One Tune trial: train with the sampled values, report validation R² per epoch, then the result."""
    from ray import tune

    from training.runs import Hooks

    trial_id = tune.get_context().get_trial_id()
    point: ModelPoint = model_point(trial_id, model, {**fixed, **config})
    hooks = Hooks(on_epoch=lambda r: tune.report({METRIC: r["val_r2"], "epoch": r["epoch"]}))
    record = train_point(session, point, seed, Path(folder) / trial_id, threads, device, hooks)
    tune.report({METRIC: record.get("val_r2_best", record["r2"]), "test_r2": record["r2"],
                 "artifact": str(Path(folder) / trial_id)})


def run_search(search: SearchSpec, folder: Path, executor: Executor, threads: int, gpus: float,
               device: str) -> dict:
    """Run (or, with resume, continue) the search; write search.md / search.json; the ranking."""
    try:
        import ray
        from ray import tune
    except ImportError:
        raise SweepError("[search] runs on Ray Tune: install the 'cluster' extra (grids in [models] run without it)")
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_resources(
        tune.with_parameters(trial, session=search.session, model=search.model, fixed=search.fixed,
                             seed=search.seed, folder=str((folder / "artifacts" / "search").resolve()),
                             threads=threads, device=device),
        {"cpu": threads, "gpu": gpus})
    state = (folder / "search").resolve()
    with executor.ray_instance(ray, threads):
        if executor.resume and tune.Tuner.can_restore(str(state)):
            tuner = tune.Tuner.restore(str(state), trainable, resume_errored=True)
        else:
            scheduler = ASHAScheduler(grace_period=2) if search.scheduler == "asha" else None
            tuner = tune.Tuner(
                trainable, param_space=tune_space(search.space),
                tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=search.samples,
                                            scheduler=scheduler,
                                            max_concurrent_trials=executor.workers if executor.address is None else None),
                run_config=tune.RunConfig(storage_path=str(state.parent), name=state.name, verbose=0))
        grid = tuner.fit()
    trials = sorted(({"trial": (r.metrics or {}).get("trial_id"), **{k: r.config.get(k) for k in search.space},
                      METRIC: (r.metrics or {}).get(METRIC), "test_r2": (r.metrics or {}).get("test_r2"),
                      "error": None if r.error is None else str(r.error).strip().splitlines()[-1]}
                     for r in grid), key=lambda t: -(t[METRIC] if t[METRIC] is not None else float("-inf")))
    write_atomic(folder / "search.json", json.dumps({"search": search.__dict__ | {"session": search.session.name},
                                                       "trials": trials}, indent=1, default=str))
    write_atomic(folder / "search.md", search_markdown(search, trials))
    return {"trials": trials, "best": trials[0] if trials else None}


def search_markdown(search: SearchSpec, trials: list[dict]) -> str:
    from benchmarks.report import markdown_table

    heads = ["trial", *search.space, "best val R²", "test R²", "error"]
    rows = [[str(t["trial"]), *(f"{t[k]:.4g}" if isinstance(t[k], float) else str(t[k]) for k in search.space),
             *("–" if t[k] is None else f"{t[k]:.4f}" for k in (METRIC, "test_r2")), t["error"] or ""] for t in trials]
    return "\n".join([f"# Search: {search.model} on {search.session.name}, seed {search.seed}", "",
                      f"{len(trials)} trials (Ray Tune{', ASHA early stopping' if search.scheduler else ''}), "
                      "ranked on the best validation R²; the test R² is reported, never used to choose.", "",
                      markdown_table(heads, rows), ""])
