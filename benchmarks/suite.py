"""The whole bench, in order: machine, artifacts, step latency, scaling, runtime, end to end.

Kept apart from the CLI so a test (or a notebook) can run the same bench and get the same
`results` dict and raw arrays that the command writes out.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from benchmarks import artifacts as arts
from benchmarks import BenchError, e2e, realpace, runtime, scaling
from benchmarks.machine import load_warning, machine_info
from benchmarks.stats import DEFAULT_DEADLINES_US, ratio, summarize
from benchmarks.step_latency import (Runner, Timing, Variant, build_runner, pin_threads, run_interleaved, run_paced,
                                     warm_up)
from decoder_runtime.backends.base import BackendUnavailable
from decoder_runtime.backends import BACKENDS
from decoder_runtime.timing import latencies
from models.artifact import ArtifactError, read_config
from replay.pacing import pacing_stats, parse_speed

Log = Callable[[str], None]
REFERENCE_BACKEND = "torch"
E2E_SETTLE_BINS = 40  # 1 s of bins streamed end to end before measuring (connections settle)


@dataclass
class BenchConfig:
    models: list[str] | None = None  # None: every model that imports here
    backends: list[str] | None = None  # None: every backend, unavailable ones reported as skipped
    devices: list[str] | None = None  # None: cpu, plus cuda when present
    bins: int = 20_000
    warmup: int = 500
    round_size: int = 500
    pace_hz: float | None = None  # None: step bins back to back; else each variant once per 1/pace_hz s
    deadlines_us: list[float] = field(default_factory=lambda: list(DEFAULT_DEADLINES_US))
    threads: int = 1
    seed: int = 0
    artifacts: list[Path] = field(default_factory=list)
    untrained: bool = True  # also build the default-size untrained models
    scaling: bool = True
    scaling_model: str = "lstm"
    scaling_backend: str | None = None  # None: the fastest step backend for that model
    scaling_device: str | None = None  # None: the last device (the GPU when there is one)
    scaling_bins: int = 5_000
    channels: list[int] = field(default_factory=lambda: list(scaling.DEFAULT_CHANNELS))
    widths: list[int] = field(default_factory=lambda: list(scaling.DEFAULT_WIDTHS))
    e2e: bool = True
    e2e_bins: int = 2_000
    runtime: bool = True  # replay --speed max: throughput and the runtime's per-stage work
    runtime_model: str = "lstm"  # which benchmarked model the runtime and e2e runs serve
    runtime_backend: str | None = None  # None: that model's fastest step backend on each device
    replay_speeds: list[str] = field(default_factory=lambda: ["max"])  # `replay --speed` values to run
    runtime_bins: int | None = None  # bins per replay run (None: --bins, at most the session's)
    replay_seconds: float = 60.0  # a replay at a finite speed is cut to the bins that fit in this long
    reference_backend: str = REFERENCE_BACKEND
    realpace: bool = True  # the runtime at 40 Hz beside max speed, and serve beside a bare relay
    realpace_bins: int = 2_000  # measured bins per real-pace variant (all rounds together)
    realpace_rounds: int = 2  # variants alternate this many times
    command: str = "spikestream bench"

    def resolved_devices(self) -> list[str]:
        if self.devices:
            return list(self.devices)
        import torch

        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@dataclass
class Measured:
    """What one section produced: table rows and their raw per-bin latencies."""

    rows: list[dict] = field(default_factory=list)
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)


def _rows(section: str, timings: list[Timing], models: dict[str, str], deadlines, extra: dict[str, dict]) -> Measured:
    m = Measured()
    for t in timings:
        v = t.variant
        name = f"{section}/{v.key}"
        row = {"name": name, "model": v.label, "model_kind": models[v.label], "backend": v.backend, "device": v.device,
               **extra.get(v.label, {}), "summary": summarize(t.host_ns, deadlines)}
        m.raw[name] = t.host_ns
        if t.gpu_ns is not None:
            row["cuda_event_summary"] = summarize(t.gpu_ns, deadlines)
            m.raw[name + "/cuda_events"] = t.gpu_ns
        m.rows.append(row)
    return m


def measure_variants(
    section: str, plan: list[tuple[Variant, arts.BenchArtifact]], counts: dict[str, np.ndarray], cfg: BenchConfig,
    n_bins: int, log: Log, extra: dict[str, dict] | None = None, pace_hz: float | None = None,
) -> Measured:
    """Build every variant that can run here, warm each up, time them interleaved (or paced)."""
    runners: list[Runner] = []
    skipped = []
    for variant, art in plan:
        try:
            runners.append(build_runner(variant, art.path, counts[art.label], cfg.threads))
        except (BackendUnavailable, ArtifactError) as e:
            why = str(e) if not art.export_error else f"{e} (export: {art.export_error})"
            skipped.append({"name": f"{section}/{variant.key}", "reason": why})
    for r in runners:
        warm_up(r, cfg.warmup)
    how = f"at {pace_hz:g} Hz each (≈ {n_bins / pace_hz:,.0f} s)" if pace_hz else f"in rounds of {cfg.round_size}"
    log(f"{section}: timing {len(runners)} variants × {n_bins:,} bins {how}"
        + (f" ({len(skipped)} not available here)" if skipped else ""))
    if not runners:
        return Measured(skipped=skipped)
    late: list[np.ndarray] = []
    if pace_hz:
        timings, late = run_paced(runners, n_bins, pace_hz)
    else:
        timings = run_interleaved(runners, n_bins, cfg.round_size)
    m = _rows(section, timings, {a.label: a.model for _, a in plan}, cfg.deadlines_us, extra or {})
    for row, ns in zip(m.rows, late):  # rows are in runner order; how late each release was
        row.update(pace_hz=pace_hz, release_late=pacing_stats(ns))
    m.skipped = skipped
    return m


def add_ratios(rows: list[dict], reference: str = REFERENCE_BACKEND) -> None:
    """Each row's speed-up over the reference backend of the same model on the same device."""
    refs = {(r["model"], r["device"]): r["summary"] for r in rows if r["backend"] == reference}
    for r in rows:
        ref = refs.get((r["model"], r["device"]))
        if ref is not None:
            r["ratio_p50"] = ratio(r["summary"], ref, "p50")
            r["ratio_p99"] = ratio(r["summary"], ref, "p99")


def _counts_for(session, art: arts.BenchArtifact) -> np.ndarray:
    return arts.widen(session.counts, int(read_config(art.path)["n_channels"]))


def validate(cfg: BenchConfig) -> None:
    """Refuse unknown names before anything slow starts."""
    unknown = [b for b in cfg.backends or [] if b not in BACKENDS]
    if unknown:
        raise BenchError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    unknown = [m for m in cfg.models or [] if m not in arts.MODEL_NAMES]
    if unknown:
        raise BenchError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(arts.MODEL_NAMES)}")
    for path in cfg.artifacts:
        try:
            read_config(path)
        except ArtifactError as e:
            raise BenchError(str(e)) from None


def step_key(cfg: BenchConfig) -> str:
    """The results section the step latencies go to: 'step' back to back, 'step_paced' at a pace."""
    return "step_paced" if cfg.pace_hz else "step"


def step_section(session, work_dir: Path, cfg: BenchConfig, log: Log) -> tuple[Measured, list[arts.BenchArtifact], list[str]]:
    notes = []
    built: list[arts.BenchArtifact] = []
    if cfg.untrained:
        names, missing = arts.importable_models(tuple(cfg.models) if cfg.models else arts.MODEL_NAMES)
        if cfg.models and missing:
            raise BenchError("cannot build " + "; ".join(f"{k} ({v})" for k, v in missing.items()))
        if missing:
            notes.append("models not importable here, not measured: " + ", ".join(missing))
        for name in names:
            log(f"building untrained {name} artifact and exporting it")
            built.append(arts.build_untrained(work_dir / "artifacts", name, session, seed=cfg.seed,
                                              backends=cfg.backends))
        if names:
            notes.append(f"models {', '.join(names)}: {arts.UNTRAINED_NOTE}")
    for path in cfg.artifacts:
        a = arts.from_path(path)
        taken = {b.label for b in built}
        label, i = a.label, 1
        while label in taken:  # two artifacts with one id (or a trained "lstm" beside the untrained one)
            i += 1
            label = f"{a.label}#{i}"
        built.append(replace(a, label=label))
    backends = cfg.backends or list(BACKENDS)
    plan = [(Variant(a.label, b, d), a) for a in built for d in cfg.resolved_devices() for b in backends]
    counts = {a.label: _counts_for(session, a) for a in built}
    m = measure_variants(step_key(cfg), plan, counts, cfg, cfg.bins, log, pace_hz=cfg.pace_hz)
    add_ratios(m.rows, cfg.reference_backend)
    return m, built, notes


def scaling_section(session, work_dir: Path, cfg: BenchConfig, step: Measured, log: Log) -> tuple[Measured, Measured]:
    device = cfg.scaling_device or cfg.resolved_devices()[-1]  # the GPU when there is one: where arrays grow
    backend = cfg.scaling_backend
    if backend is None:
        cands = [r for r in step.rows if r["model_kind"] == cfg.scaling_model and r["device"] == device]
        backend = min(cands, key=lambda r: r["summary"]["p50"])["backend"] if cands else REFERENCE_BACKEND
    out_dir = work_dir / "artifacts" / "scaling"
    log(f"scaling: {cfg.scaling_model} on {backend}/{device}, channels {cfg.channels}, widths {cfg.widths}")
    ch = scaling.channel_artifacts(out_dir, cfg.scaling_model, session, cfg.channels, cfg.seed, backend)
    param, wd = scaling.width_artifacts(out_dir, cfg.scaling_model, session, cfg.widths, cfg.seed, backend)
    results = []
    for section, built, key, values in (("scaling_channels", ch, "channels", cfg.channels),
                                        ("scaling_width", wd, "width", cfg.widths)):
        plan = [(Variant(a.label, backend, device), a) for a in built]
        counts = {a.label: _counts_for(session, a) for a in built}
        extra = {a.label: {key: v, **({"width_param": param} if key == "width" else {})} for a, v in zip(built, values)}
        results.append(measure_variants(section, plan, counts, cfg, cfg.scaling_bins, log, extra))
    return results[0], results[1]


def _runtime_artifact(built: list[arts.BenchArtifact], session, cfg: BenchConfig) -> arts.BenchArtifact | None:
    """The artifact the runtime runs serve: the requested model, on the session's channels."""
    for a in built:
        if (a.label == cfg.runtime_model or a.model == cfg.runtime_model) and \
                int(read_config(a.path)["n_channels"]) == session.n_channels:
            return a
    return None


def _runtime_backend(step: Measured, art: arts.BenchArtifact, device: str, cfg: BenchConfig) -> str | None:
    if cfg.runtime_backend:
        return cfg.runtime_backend
    rows = [r for r in step.rows if r["model"] == art.label and r["device"] == device]
    return min(rows, key=lambda r: r["summary"]["p50"])["backend"] if rows else None


def _stage_rows(run: str, art: arts.BenchArtifact, backend: str, device: str, stamps, cfg: BenchConfig,
                m: Measured, real_pace: bool) -> None:
    for stage, ns in latencies(stamps).items():  # decoder_runtime.timing: one definition of each
        if ns.size:
            name = f"runtime_overhead/{run}/{art.label}/{backend}/{device}/{stage}"
            m.rows.append({"name": name, "run": run, "model": art.label, "model_kind": art.model, "backend": backend,
                           "device": device, "stage": stage, "real_pace": real_pace,
                           "summary": summarize(ns, cfg.deadlines_us)})
            m.raw[name] = ns


def _replay_bins(cfg: BenchConfig, session, speed: str) -> int:
    """Bins for one replay run: --runtime-bins (or --bins), and at a finite speed no more than fit in replay_seconds."""
    n = min(cfg.runtime_bins or cfg.bins, session.n_bins)
    factor = parse_speed(speed)
    return n if factor is None else max(1, min(n, int(cfg.replay_seconds * factor / session.bin_width)))


def runtime_section(session, art: arts.BenchArtifact, step: Measured, work_dir: Path, cfg: BenchConfig,
                    log: Log) -> dict:
    """replay --speed max (inline and threaded step) and, if asked, LSL → serve → ZeroMQ, per device."""
    from decoder_runtime.record import read_record

    overhead, e2e_rows = Measured(), Measured()
    replay_rows, e2e_runs = [], []
    for device in cfg.resolved_devices():
        backend = _runtime_backend(step, art, device, cfg)
        if backend is None:
            overhead.skipped.append({"name": f"runtime/{art.label}/{device}", "reason": "no step backend ran"})
            continue
        base = {"model": art.label, "backend": backend, "device": device}
        if cfg.runtime:
            runs = [(speed, deadline, f"replay {speed}, {how}") for speed in cfg.replay_speeds
                    for deadline, how in ((10.0, "10 ms deadline (worker-thread step)"), (0.0, "no deadline (inline step)"))]
            for speed, deadline, run in runs:
                n = _replay_bins(cfg, session, speed)
                log(f"runtime: {run}, {art.label} on {backend}/{device}, {n:,} bins")
                try:
                    r = runtime.replay_run(art.path, work_dir, backend=backend, device=device, threads=cfg.threads,
                                           max_bins=n, deadline_ms=deadline, speed=speed)
                except RuntimeError as e:
                    overhead.skipped.append({"name": f"replay/{run}/{art.label}/{backend}/{device}", "reason": str(e)})
                    continue
                replay_rows.append({"run": run, **base, **runtime.throughput(r["stamps"], r["stages"])})
                _stage_rows(run, art, backend, device, r["stamps"], cfg, overhead,
                            real_pace=parse_speed(speed) is not None)
        if cfg.e2e:
            total = cfg.e2e_bins + E2E_SETTLE_BINS
            log(f"e2e: LSL outlet → serve ({art.label} on {backend}/{device}) → ZeroMQ, {total:,} bins at "
                f"{session.bin_width * 1e3:g} ms ≈ {total * session.bin_width:.0f} s")
            idx = np.arange(total) % session.n_bins
            try:
                res = e2e.run_e2e(art.path, session.counts[idx], session.bin_width, work_dir, backend=backend,
                                  device=device, threads=cfg.threads, settle_bins=E2E_SETTLE_BINS)
            except RuntimeError as e:
                e2e_rows.skipped.append({"name": f"e2e/{art.label}/{backend}/{device}", "reason": str(e)})
                continue
            for measure, ns in res.latency_ns.items():
                name = f"e2e/{art.label}/{backend}/{device}/{measure}"
                e2e_rows.rows.append({"name": name, **base, "model_kind": art.model, "measure": measure,
                                      "summary": summarize(ns, cfg.deadlines_us)})
                e2e_rows.raw[name] = ns
            e2e_runs.append({**base, "received": res.received, "expected": res.expected, "lost": res.lost,
                             "settle_bins": res.settle_bins, "flagged": res.flagged, "outlet_pacing_us": res.outlet})
            if res.record is not None:
                stamps = read_record(res.record)["stamps"][E2E_SETTLE_BINS:]
                _stage_rows("serve, LSL at real pace", art, backend, device, stamps, cfg, overhead,
                            real_pace=True)
    return {"replay": replay_rows, "runtime_overhead": overhead, "e2e": e2e_rows, "e2e_runs": e2e_runs}


def _timing_note(cfg: BenchConfig) -> str:
    if not cfg.pace_hz:
        return f"timed in interleaved rounds of {cfg.round_size} bins with the order rotated every round"
    return (f"timed at {cfg.pace_hz:g} Hz: each variant steps once per {1e3 / cfg.pace_hz:g} ms period in its own "
            "slot, the slots spread evenly through the period (so the others' steps run in between), on a "
            "sleep-then-spin schedule; release_late in results.json is how late each release was")


def run_bench(cfg: BenchConfig, work_dir: Path, log: Log = lambda s: None) -> tuple[dict, dict[str, np.ndarray]]:
    """Run every requested section; returns (results, raw latencies by row name)."""
    from replay import default_session

    validate(cfg)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()
    warnings = [w for w in (load_warning(),) if w]
    pin_threads(cfg.threads)
    deadlines = sorted(set(cfg.deadlines_us))
    session = default_session()
    bin_us = session.bin_width * 1e6
    cfg.deadlines_us = sorted(set(deadlines) | {bin_us})  # the bin itself is always a deadline
    notes = [f"session: {session.source or 'default simulated session'} — {session.n_bins:,} bins × "
             f"{session.n_channels} channels, {session.bin_width * 1e3:g} ms bins (cycled when more bins are timed)",
             f"threads: torch intra-op {cfg.threads}, inter-op 1; ONNX Runtime intra-op {cfg.threads}",
             f"each variant: {cfg.warmup} untimed warm-up bins (compilation, graph capture, caches), then reset(); "
             + _timing_note(cfg),
             "latency = time.perf_counter_ns() from step(counts) to the velocity as a host NumPy array; "
             "on CUDA, events bracket the same window (cuda_event_summary in results.json)",
             "gc stays enabled; objects from setup are frozen (gc.freeze) before timing",
             "percentiles are nearest-rank (always an observed latency); '> X ms' columns count the bins slower "
             "than X; bins/s = 1 / mean step latency (back-to-back throughput ceiling)"]
    step, built, more = step_section(session, work_dir, cfg, log)
    notes += more
    results: dict = {"started": started, "config": _jsonable(cfg), "machine": machine, "notes": notes,
                     "bin_width_s": session.bin_width,
                     "warnings": warnings, "artifacts": [_jsonable(a) for a in built], step_key(cfg): step.rows,
                     "skipped": list(step.skipped)}
    raw = dict(step.raw)
    if cfg.scaling:
        ch, wd = scaling_section(session, work_dir, cfg, step, log)
        for key, m in (("scaling_channels", ch), ("scaling_width", wd)):
            results[key] = m.rows
            results["skipped"] += m.skipped
            raw.update(m.raw)
    if cfg.runtime or cfg.e2e:
        target = _runtime_artifact(built, session, cfg)
        if target is None:
            results["skipped"].append({"name": "runtime/e2e", "reason": f"no benchmarked artifact of "
                                       f"{cfg.runtime_model!r} with the session's {session.n_channels} channels"})
        else:
            rt = runtime_section(session, target, step, work_dir, cfg, log)
            for key, val in rt.items():
                results.setdefault(key, []).extend(val.rows if isinstance(val, Measured) else val)
                if isinstance(val, Measured):
                    raw.update(val.raw)
                    results["skipped"] += val.skipped
    if cfg.realpace:
        _realpace(results, raw, built, step, session, work_dir, cfg, log)
    end_warning = load_warning()
    if end_warning:
        results["warnings"].append("at the end: " + end_warning)
    return results, raw


def _realpace(results: dict, raw: dict, built: list[arts.BenchArtifact], step: Measured, session, work_dir: Path,
              cfg: BenchConfig, log: Log) -> None:
    """The real-pace section (benchmarks.realpace) on the runtime's artifact and backend, on the CPU."""
    target = _runtime_artifact(built, session, cfg)
    device = "cpu" if "cpu" in cfg.resolved_devices() else cfg.resolved_devices()[0]
    backend = None if target is None else _runtime_backend(step, target, device, cfg)
    if backend is None:
        results["skipped"].append({"name": "realpace", "reason": f"no benchmarked {cfg.runtime_model!r} artifact "
                                   f"with the session's {session.n_channels} channels ran on {device}"})
        return
    rp = realpace.realpace_section(target, session.counts, session.bin_width, work_dir, backend=backend, device=device,
                                   threads=cfg.threads, bins=cfg.realpace_bins, rounds=cfg.realpace_rounds,
                                   deadlines=cfg.deadlines_us, log=log)
    raw.update(rp.pop("raw"))
    results["skipped"] += rp.pop("skipped")
    results.update(rp)


def _jsonable(obj) -> dict:
    d = asdict(obj)
    return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "artifacts" else v) for k, v in d.items()}
