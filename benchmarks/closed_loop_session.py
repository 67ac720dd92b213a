"""One closed-loop session from options to summary and files: what `spikestream closed-loop`
and the results table both run."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from decoder_runtime.config import RuntimeConfig
from benchmarks.closed_loop import (
    DEFAULT_POPULATION_SEED, DEFAULT_TASK_ADDR, ClosedLoopResult, LiveTarget, run_fast, run_live,
    training_population_seed,
)
from replay.closed_loop import ClosedLoopWorld, WorldSettings
from replay.cursor_task import TaskSettings
from replay.drift import DriftSpec, spec_dict
from replay.participant import ParticipantSettings


@dataclass
class SessionOptions:
    """Everything one session needs (the CLI's options)."""

    artifact: Path
    task: str = "center-out"
    trials: int = 100
    seed: int = 0
    population_seed: int | None = None
    live: bool = False
    connect: bool = False
    lsl_name: str = "spikestream-cl"
    zmq: str | None = None
    task_zmq: str | None = None
    backend: str | None = None
    device: str = "cpu"
    threads: int | None = None
    adapt: str | None = None
    adapt_tau: float | None = None
    deadline_ms: float | None = None
    target_radius: float = 20.0
    target_distance: float = 100.0
    cursor_gain: float = 1.0
    hold: float = 0.5
    timeout: float = 10.0
    visual_delay: float = 0.2
    drift: DriftSpec | None = None
    assist: float = 0.0


def world_settings(opts: SessionOptions, config: dict) -> WorldSettings:
    """The world for these options, the neurons being the artifact's training population by default."""
    pop = opts.population_seed
    if pop is None:
        pop = training_population_seed(config)
        pop = DEFAULT_POPULATION_SEED if pop is None else pop
    return WorldSettings(
        task=TaskSettings(task=opts.task, n_trials=opts.trials, target_distance=opts.target_distance,
                          target_radius=opts.target_radius, hold_s=opts.hold, timeout_s=opts.timeout,
                          cursor_gain=opts.cursor_gain),
        participant=ParticipantSettings(visual_delay_s=opts.visual_delay),
        seed=opts.seed, population_seed=pop, n_units=int(config["n_channels"]), bin_width=float(config["bin_width"]),
        drift=opts.drift, assist=opts.assist)


def _serve_args(opts: SessionOptions) -> list[str]:
    args = [str(opts.artifact), "--device", opts.device, "--deadline-ms", str(10.0 if opts.deadline_ms is None else opts.deadline_ms)]
    for flag, value in (("--backend", opts.backend), ("--threads", opts.threads), ("--adapt", opts.adapt),
                        ("--adapt-tau", opts.adapt_tau)):
        if value is not None:
            args += [flag, str(value)]
    return args


def run(opts: SessionOptions, on_bin: Callable[[ClosedLoopWorld], None] | None = None) -> tuple[ClosedLoopResult, dict]:
    """Run the session; returns the result and the artifact's config."""
    from models.artifact import read_config

    config = read_config(opts.artifact)
    ws = world_settings(opts, config)
    if opts.live:
        from decoder_runtime.publish import DEFAULT_ADDR

        target = LiveTarget(opts.lsl_name, opts.zmq or DEFAULT_ADDR, None if opts.connect else _serve_args(opts))
        task_addr = None if opts.task_zmq == "none" else (opts.task_zmq or DEFAULT_TASK_ADDR)
        return run_live(ws, target, task_addr=task_addr, on_bin=on_bin), config
    result = run_fast(ws, runtime_config(opts), task_addr=None if opts.task_zmq in (None, "none") else opts.task_zmq,
                      on_bin=on_bin)
    return result, config


def runtime_config(opts: SessionOptions) -> RuntimeConfig:
    """The run description of the fast mode's runtime (its source is the lock-step one)."""
    return RuntimeConfig.from_dict({
        "model": {"artifact": str(opts.artifact), "backend": opts.backend or "auto", "device": opts.device,
                  "threads": opts.threads},
        "adapt": {"method": opts.adapt, "tau_s": opts.adapt_tau},
        "deadline": {"deadline_ms": opts.deadline_ms or 0.0},
        "output": {"zmq": opts.zmq or "none"}})


def run_session(opts: SessionOptions, *, record: Path | None = None, out: Path | None = None,
                on_bin: Callable[[ClosedLoopWorld], None] | None = None) -> dict:
    """Run one session, write what was asked, return the summary (metrics, latency, settings)."""
    from benchmarks.closed_loop_outputs import (
        inspect_record, plot_trajectories, write_record, write_trials_csv,
    )

    t0 = time.perf_counter()
    result, config = run(opts, on_bin)
    ws = result.world.settings
    model = config.get("model", {}).get("name", "?")
    settings = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "drift"},
                "drift": spec_dict(opts.drift), "population_seed": ws.population_seed,
                "participant": asdict(ws.participant), "task_settings": asdict(ws.task), **result.settings}
    m = result.metrics
    summary = {"model": model, "model_id": config.get("model_id", ""), "mode": result.mode,
               "success_rate": m["success_rate"], "time_to_target_s": m["time_to_target_s"],
               "path_efficiency": m["path_efficiency"], "fitts_bps": m["fitts_bps"],
               "bitrate_bps": m.get("bitrate_bps"), "n_trials": m["n_trials"], "metrics": m,
               "latency_us": result.latency_us, "n_bins": result.world.k,
               "wall_s": time.perf_counter() - t0, "settings": settings}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_trials_csv(out / "trials.csv", result)
        plot_trajectories(out / "trajectories.png", result,
                          f"{model} {result.mode}: success {m['success_rate']:.0%}, "
                          f"median time to target {m['time_to_target_s'] or float('nan'):.2f} s")
    if record is not None:
        write_record(record, result, settings=settings, summary=summary)
        summary["record_critical"] = inspect_record(record)
    return summary
