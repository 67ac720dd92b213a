"""The GPU check's CPU side: its dry run, and the merge of bench phases into one report.

The bench phases are real `spikestream bench` runs on the CPU (tiny), so the merge is
tested on the files the GPU machine will write; the test outcomes come from real pytest
JUnit XML written by a real pytest run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from benchmarks import gpu_check
from benchmarks.report import load_raw
from spikestream.cli import _register, app

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
BENCH = ["bench", "--model", "lstm", "--backend", "torch", "--device", "cpu", "--warmup", "10", "--no-scaling",
         "--no-runtime", "--no-e2e", "--no-realpace"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what happens without CUDA")
def test_dry_run_names_what_is_missing_in_one_line(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                         env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                              "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels"), "HOME": str(tmp_path)})
    assert res.returncode == 1, res.stdout + res.stderr
    [line] = res.stdout.splitlines()
    assert line.startswith("gpu_check: no CUDA here, and inputs are missing: wheel pynwb")
    assert "wheel pylsl" in line and "--prepare" in line


def test_slug_names_the_results_folder():
    assert gpu_check.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu_check.slug("  ") == "gpu"


@pytest.fixture(scope="module")
def phases(tmp_path_factory):
    """A work folder as gpu_check.sh leaves it: two bench phases, test XML, the phase log."""
    work = tmp_path_factory.mktemp("gpu_check")
    _register()
    runner = CliRunner()
    for name, extra in (("bench", ["--bins", "120"]), ("paced", ["--bins", "12", "--pace-hz", "100"])):
        res = runner.invoke(app, [*BENCH, *extra, "--out", str(work / name)])
        assert res.exit_code == 0, res.output
    tests = work / "t"
    tests.mkdir()
    (tests / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('kind', ['torch', 'cudagraph'])\n"
        "@pytest.mark.parametrize('name', ['lstm'])\n"
        "def test_gpu_parity(name, kind, record_property):\n"
        "    record_property('parity_error', 2.5e-6)\n"
        "    assert kind == 'torch', 'differs'\n"
        "def test_other():\n"
        "    pytest.skip('needs CUDA')\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", "--junitxml",
                    str(work / "tests_0.xml"), str(tests)], capture_output=True, timeout=120, cwd=tests)
    (work / "phases.tsv").write_text("bench\t0\t50\t130\tspikestream_bench bench ...\n"
                                     "e2e\tnot run\t0\t12\tspikestream_bench e2e ...\n")
    return work


def test_fastest_reads_a_finished_phase(phases):
    assert gpu_check.fastest(phases / "bench", "lstm", "cpu") == "torch"
    assert gpu_check.fastest(phases / "bench", "lstm", "cuda") is None
    assert gpu_check.fastest(phases / "missing", "lstm") is None


def test_merge_writes_one_report_of_the_phases_that_finished(phases, tmp_path):
    folder = gpu_check.write_results(phases, tmp_path)
    assert folder.name == "no-gpu"  # no versions.json: the versions phase did not run
    results = json.loads((folder / "results.json").read_text())
    assert [r["name"] for r in results["step"]] == ["step/lstm/torch/cpu"]
    assert [(r["name"], r["pace_hz"]) for r in results["step_paced"]] == [("step_paced/lstm/torch/cpu", 100.0)]
    assert set(results["step_paced"][0]["release_late"]) == {"mean_us", "std_us", "p50_us", "p99_us", "max_us"}
    raw = load_raw(folder / "latencies.npz")
    assert set(raw) == {"step/lstm/torch/cpu", "step_paced/lstm/torch/cpu"}
    assert raw["step_paced/lstm/torch/cpu"].size == 12
    outcomes = {t["test"].split("::")[-1]: t for t in results["gpu_check"]["tests"]}
    assert outcomes["test_gpu_parity[lstm-torch]"]["outcome"] == "passed"
    assert outcomes["test_gpu_parity[lstm-cudagraph]"]["outcome"] == "failed"
    assert outcomes["test_gpu_parity[lstm-torch]"]["parity_error"] == 2.5e-6
    assert outcomes["test_other"]["outcome"] == "skipped"
    assert [p["rc"] for p in results["gpu_check"]["phases"]] == ["0", "not run"]
    report = (folder / "report.md").read_text()
    assert report.startswith("# spikestream GPU check: no-gpu")
    assert "| lstm | small | passed (2.5e-06) | failed (2.5e-06) |" in report
    assert "1 passed, 1 failed, 0 error, 1 skipped" in report
    assert "## Per-bin step latency at real pace (µs)" in report and "# The bench" in report
    assert "p50 at 100 Hz ≤ 1.5× back to back" in report  # the paced target, per variant run both ways
    assert {p.name for p in folder.glob("*.png")} == {"step_cdf_cpu.png", "step_over_time_cpu.png",
                                                      "step_paced_cdf_cpu.png", "step_paced_over_time_cpu.png"}


def test_merge_with_nothing_finished_still_writes_a_report(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    folder = gpu_check.write_results(work, tmp_path / "out")
    assert "No bench phase finished" in (folder / "report.md").read_text()
    assert json.loads((folder / "results.json").read_text())["gpu_check"]["tests"] == []
