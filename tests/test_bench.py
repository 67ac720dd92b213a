"""The bench produces well-formed numbers and files. No timing is asserted: timings belong
in benchmark runs on a quiet machine, not in a test on a shared 2-core CI box."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from benchmarks.artifacts import build_untrained, widen
from benchmarks.report import load_raw
from benchmarks.stats import summarize, to_uint32_ns
from benchmarks.step_latency import Variant, build_runner, run_interleaved, run_paced
from spikestream.cli import _register, app
from replay import default_session

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def session():
    return default_session()


def test_summarize_hand_built() -> None:
    ns = np.arange(1, 1001, dtype=np.int64) * 1000  # 1 µs .. 1000 µs
    s = summarize(ns, deadlines_us=[900.0, 25_000.0])
    assert (s["n"], s["p50"], s["p90"], s["p99"], s["p99.9"], s["max"]) == (1000, 500.0, 900.0, 990.0, 999.0, 1000.0)
    assert s["over_900us"] == 100 and s["over_25000us"] == 0
    assert math.isclose(s["mean"], 500.5) and math.isclose(s["bins_per_s"], 1e6 / 500.5)
    with pytest.raises(ValueError, match="non-empty"):
        summarize(np.array([], dtype=np.int64))


def test_uint32_storage_clips_instead_of_wrapping() -> None:
    out = to_uint32_ns(np.array([5, 2**33], dtype=np.int64))
    assert out.dtype == np.uint32 and out.tolist() == [5, 2**32 - 1]
    with pytest.raises(ValueError, match="negative"):
        to_uint32_ns(np.array([-1]))


def test_widen_reuses_recorded_channels(session) -> None:
    wide = widen(session.counts, 3 * session.n_channels)
    assert wide.shape == (session.n_bins, 3 * session.n_channels)
    cols = {c.tobytes() for c in session.counts.T}
    assert all(c.tobytes() in cols for c in wide.T[:50])


def test_interleaving_keeps_each_stream_continuous(tmp_path, session) -> None:
    """Rounds of one variant interleaved with another give the exact outputs of one uninterrupted stream."""
    torch.set_num_threads(1)
    small = build_untrained(tmp_path, "lstm", session, hparams={"hidden": 32}, backends=["torch"])
    other = build_untrained(tmp_path, "lstm", session, hparams={"hidden": 16}, backends=["torch"])
    runners = [build_runner(Variant(a.label, "torch", "cpu"), a.path, session.counts, 1) for a in (small, other)]
    timed = run_interleaved(runners, n_bins=230, round_size=70)
    backend = runners[0].backend
    backend.reset()
    straight = np.stack([backend.step(session.counts[i]) for i in range(230)])
    np.testing.assert_array_equal(timed[0].velocity, straight)
    assert all(t.host_ns.shape == (230,) and (t.host_ns > 0).all() for t in timed)


def test_paced_runners_keep_the_schedule_and_their_streams(tmp_path, session) -> None:
    """At a pace, each runner steps once per period in its own slot; its outputs are one uninterrupted stream."""
    torch.set_num_threads(1)
    arts = [build_untrained(tmp_path, "lstm", session, hparams={"hidden": h}, backends=["torch"]) for h in (16, 8)]
    runners = [build_runner(Variant(a.label, "torch", "cpu"), a.path, session.counts, 1) for a in arts]
    n, hz = 20, 100.0
    t0 = time.perf_counter()
    timed, late = run_paced(runners, n_bins=n, hz=hz)
    elapsed = time.perf_counter() - t0
    # The last release (runner 1's bin n-1) is due (n - 1 + 1/2) periods after the first: never earlier.
    assert elapsed >= (n - 0.5) / hz
    assert [t.host_ns.shape for t in timed] == [(n,), (n,)] and all((t.host_ns > 0).all() for t in timed)
    assert [x.shape for x in late] == [(n,), (n,)] and all((x >= 0).all() for x in late)
    backend = runners[1].backend
    backend.reset()
    np.testing.assert_array_equal(timed[1].velocity, np.stack([backend.step(session.counts[i]) for i in range(n)]))
    with pytest.raises(ValueError, match="positive"):
        run_paced(runners, n_bins=5, hz=0.0)


def test_bench_cli_paced(tmp_path) -> None:
    """--pace-hz puts the step rows in their own section, with the pace and the schedule's lateness."""
    out = tmp_path / "bench"
    _register()
    res = CliRunner().invoke(app, [
        "bench", "--model", "lstm", "--backend", "torch,torchscript", "--device", "cpu", "--bins", "16",
        "--warmup", "5", "--pace-hz", "80", "--no-e2e", "--no-runtime", "--no-scaling", "--no-realpace", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert "step" not in results
    rows = results["step_paced"]
    assert [(r["backend"], r["pace_hz"], r["summary"]["n"]) for r in rows] == [("torch", 80.0, 16),
                                                                                ("torchscript", 80.0, 16)]
    assert all(0 <= r["release_late"]["p50_us"] <= r["release_late"]["max_us"] for r in rows)
    assert any("timed at 80 Hz" in note for note in results["notes"])
    report = (out / "report.md").read_text()
    assert "## Per-bin step latency at real pace (µs)" in report and "| lstm | torch | cpu | 80 |" in report
    assert sorted(p.name for p in out.glob("*.png")) == ["step_paced_cdf_cpu.png", "step_paced_over_time_cpu.png"]
    bad = CliRunner().invoke(app, ["bench", "--replay-speed", "max,fast,-1", "--no-e2e"])
    assert bad.exit_code != 0 and "speed must be a positive number" in bad.output
def _bench(out, backend: str, bins: int, *options: str) -> dict:
    """`spikestream bench` on the lstm, one backend, the CPU, small sizes; its results.json."""
    _register()
    res = CliRunner().invoke(app, ["bench", "--model", "lstm", "--backend", backend, "--device", "cpu",
                                   "--bins", str(bins), "--warmup", "20", "--round", "100", *options, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "results.json").read_text())


def test_bench_cli_smoke(tmp_path) -> None:
    out = tmp_path / "bench"
    results = _bench(out, "torch", 300, "--no-e2e", "--no-runtime", "--no-realpace", "--scaling-bins", "100",
                     "--channels", "96,300", "--widths", "32,64")
    raw = load_raw(out / "latencies.npz")
    assert {"config", "machine", "notes", "warnings", "step", "scaling_channels", "scaling_width"} <= results.keys()
    assert results["machine"]["cpu"] and "torch" in results["machine"]["libraries"]
    [row] = results["step"]
    assert (row["model"], row["backend"], row["device"]) == ("lstm", "torch", "cpu")
    assert row["ratio_p50"] == 1.0
    rows = results["step"] + results["scaling_channels"] + results["scaling_width"]
    assert [r["channels"] for r in results["scaling_channels"]] == [96, 300]
    assert [r["width"] for r in results["scaling_width"]] == [32, 64]
    for r in rows:
        s = r["summary"]
        assert s["n"] == (300 if r in results["step"] else 100)
        assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["p99.9"] <= s["max"]
        assert all(isinstance(s[k], int) and s[k] >= 0 for k in ("over_1000us", "over_25000us"))
        lat = raw[r["name"]]
        assert lat.dtype == np.uint32 and lat.size == s["n"]
        assert summarize(lat.astype(np.int64), results["config"]["deadlines_us"]) == s
    report = (out / "report.md").read_text()
    assert "## Machine" in report and "| lstm | torch | cpu |" in report and "untrained" in report
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["scaling.png", "step_cdf_cpu.png", "step_over_time_cpu.png"]
    assert all((out / p).read_bytes()[:8] == PNG_MAGIC for p in pngs)


@pytest.mark.slow
def test_bench_cli_runtime_and_end_to_end(tmp_path) -> None:
    """replay --speed max and LSL outlet -> serve -> ZeroMQ, as separate processes, give well-formed rows."""
    out = tmp_path / "bench"
    results = _bench(out, "torch", 200, "--no-scaling", "--e2e-bins", "100", "--no-realpace", "--replay-speed", "max,1",
                     "--replay-seconds", "2")
    raw = load_raw(out / "latencies.npz")
    assert not results["skipped"], results["skipped"]
    assert {r["run"] for r in results["replay"]} == {r["run"] for r in results["runtime_overhead"]} - {
        "serve, LSL at real pace"}
    # --speed max replays --bins; --speed 1 only the 80 bins (2 s at 25 ms) that fit in --replay-seconds
    assert sorted((r["run"].split(",")[0], r["bins"]) for r in results["replay"]) == [
        ("replay 1", 80), ("replay 1", 80), ("replay max", 200), ("replay max", 200)]
    assert all(r["bins_per_s"] > 0 for r in results["replay"])
    paced = {r["real_pace"] for r in results["runtime_overhead"] if r["run"].startswith("replay 1")}
    assert paced == {True} and "runtime's own work p99 ≤ 50 µs (replay 1" in (out / "report.md").read_text()
    [run] = results["e2e_runs"]
    assert run["lost"] == 0 and run["received"] == run["expected"] == 100 + run["settle_bins"]
    measures = {r["measure"]: r for r in results["e2e"]}
    assert set(measures) == {"push → receive", "push → runtime arrival", "runtime (lat_us)", "runtime send → receive"}
    for r in results["e2e"] + results["runtime_overhead"]:
        assert raw[r["name"]].size == r["summary"]["n"] > 0
    assert measures["push → receive"]["summary"]["n"] == 100
    assert (out / "e2e.png").is_file() and (out / "runtime_overhead.png").is_file()


def test_cuda_event_timings_get_their_own_table() -> None:
    """Rows timed on a GPU carry a second summary (CUDA events); the report shows it beside the host clock's."""
    from benchmarks.report import table_data

    host = summarize(np.arange(1, 101, dtype=np.int64) * 1000)
    events = summarize(np.arange(1, 101, dtype=np.int64) * 900)
    row = {"name": "step/lstm/cudagraph/cuda", "model": "lstm", "backend": "cudagraph", "device": "cuda",
           "summary": host, "cuda_event_summary": events}
    results = {"config": {"deadlines_us": [1000.0]}, "step": [row, {**row, "name": "x", "backend": "torch",
                                                                    "cuda_event_summary": host}]}
    tables = {title: rows for title, _, rows, _ in table_data(results)}
    assert set(tables) == {"Per-bin step latency (µs)", "Per-bin step latency, by CUDA events around the same window (µs)"}
    [by_events, _] = tables["Per-bin step latency, by CUDA events around the same window (µs)"]
    assert by_events[:4] == ["lstm", "cudagraph", "cuda", "45.0"]  # p50 of 0.9..90 µs
    assert tables["Per-bin step latency (µs)"][0][3] == "50.0"


def test_real_pace_ratios_are_pooled_and_given_round_by_round() -> None:
    """Round 2 ran twice as slow as round 1 on both sides: its ratio stays 2, and the row shows each round's."""
    from benchmarks.realpace import RATIO, _ratio_rows

    us = lambda v: np.full(100, v * 1000, dtype=np.int64)  # noqa: E731 - ns per bin, every bin alike
    measured = {("max", "lat"): {0: us(30), 1: us(60)}, ("40 Hz", "lat"): {0: us(45), 1: us(180)},
                ("other", "lat"): {1: us(120)}}  # a run that ran in round 1 only
    rows, raw = _ratio_rows("realpace", measured, {"40 Hz": "max", "other": "max"}, {}, [25_000])
    by_run = {r["run"]: r for r in rows}
    assert by_run["max"][RATIO] == "ref" and "x_ref_p50" not in by_run["max"]
    paced = by_run["40 Hz"]
    assert paced["x_ref_p50_rounds"] == pytest.approx([1.5, 3.0]) and paced["x_ref_p99_rounds"] == pytest.approx([1.5, 3.0])
    assert paced["x_ref_p50"] == pytest.approx(paced["summary"]["p50"] / by_run["max"]["summary"]["p50"])
    assert "(rounds 1.50-3.00× / 1.50-3.00×)" in paced[RATIO]
    assert by_run["other"]["x_ref_p50_rounds"] == pytest.approx([2.0]) and "rounds" not in by_run["other"][RATIO]
    assert raw["realpace/40 Hz/lat"].size == 200  # both rounds pooled


def test_own_work_at_the_usual_speed_leaves_out_the_bins_whose_step_ran_slow() -> None:
    """Bins whose model step took over 1.5x the median are the machine's, not the runtime's: the extra
    measure keeps the own work of the other bins only (a bin that did not step has none)."""
    from benchmarks.realpace import OWN_AT_USUAL, _replay_latencies
    from decoder_runtime.timing import ARRIVAL, SENT, STAGES, STEP_BEGIN, STEP_END

    step_us = [25, 25, 26, 24, 25, 80, 25, 60]  # bins 5 and 7: the whole machine slow
    own_us = [10, 11, 12, 10, 11, 40, 13, 30]
    st = np.zeros((len(step_us) + 1, len(STAGES)), dtype=np.int64)
    for i, (step, own) in enumerate(zip(step_us + [0], own_us + [5])):
        t0 = 1_000_000 * (i + 1)
        st[i, ARRIVAL], st[i, SENT] = t0, t0 + (step + own) * 1000
        if step:  # the last bin: no model step (the fallback answered)
            st[i, STEP_BEGIN], st[i, STEP_END] = t0 + 3000, t0 + 3000 + step * 1000
    got = _replay_latencies(st)
    assert got["own work"].tolist() == [u * 1000 for u in own_us]
    assert got[OWN_AT_USUAL].tolist() == [u * 1000 for i, u in enumerate(own_us) if i not in (5, 7)]


@pytest.mark.slow
def test_bench_cli_real_pace_section(tmp_path) -> None:
    """40 Hz replays beside max speed, and serve beside the bare relay, each with a ratio to its reference."""
    out = tmp_path / "bench"
    results = _bench(out, "numba", 100, "--no-scaling", "--no-e2e", "--no-runtime", "--realpace-bins", "40",
                     "--realpace-rounds", "1")
    assert not results["skipped"], results["skipped"]
    from benchmarks.realpace import E2E_RUNS, OWN_AT_USUAL, REPLAY_RUNS

    assert {r["run"] for r in results["realpace"]} == {r.label for r in REPLAY_RUNS}
    assert {r["run"] for r in results["realpace_e2e"]} == {r.label for r in E2E_RUNS}
    for r in results["realpace"] + results["realpace_e2e"]:
        assert r["summary"]["n"] == 40 or r["measure"] == OWN_AT_USUAL and 0 < r["summary"]["n"] <= 40
        is_ref = r["× ref p50 / p99"] == "ref"
        assert is_ref != ("x_ref_p50" in r)
        if not is_ref:
            assert r["x_ref_p50"] > 0 and r["x_ref_p99"] > 0
            assert len(r["x_ref_p50_rounds"]) == len(r["x_ref_p99_rounds"]) == 1  # one round, its own ratio
    runs = results["realpace_runs"]
    assert all(info["lost"] == 0 for label, info in runs.items() if "lost" in info)
    assert runs["40 Hz, inline step, keep-warm on"]["warm"][0]["keep_warm"] is True
    assert "Real pace" in (out / "report.md").read_text()


@pytest.mark.parametrize("dry_steps_only", [False, True], ids=["warm passes", "dry steps"])
def test_cooling_work_before_each_bin_runs_k_times_per_bin_and_changes_no_output(tmp_path_factory,
                                                                               dry_steps_only) -> None:
    """benchmarks.cooling's waiter: k passes (or dry steps) in front of every bin, and every bin decoded
    exactly as without them, so its own-work figures are of the same session."""
    import runtime_helpers as h
    from benchmarks import cooling

    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    art, s = h.artifact(base), h.session(base)
    plain = cooling.run_variant(cooling.Variant("plain", "max"), art, s, 60)
    worked = cooling.run_variant(cooling.Variant("k=3", "max", 3, dry_steps_only), art, s, 60)
    assert plain.n_bins == worked.n_bins == 60
    assert worked.warm["warm_passes"] == (0 if dry_steps_only else 3 * 60) and plain.warm["warm_passes"] == 0
    np.testing.assert_array_equal(worked.velocity, plain.velocity)
    np.testing.assert_array_equal(worked.model_vel, plain.model_vel)
    np.testing.assert_array_equal(worked.flags, plain.flags)
