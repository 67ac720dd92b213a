"""`spikestream sweep`: a tiny sweep on a local Ray instance and in this process, with the tasks
of one session failing on purpose (its NWB file is not there yet); `--resume` reruns only those."""
from __future__ import annotations

import json
import shutil
from functools import partial

import pytest

from benchmarks.executor import Executor, run_in_order
from benchmarks.sweep import SweepError, load_spec, run_sweep
from training.runs import RunSpec, train_run

TINY = {"hidden": 16, "layers": 1, "epochs": 1, "chunk_len": 40, "burn_in": 8, "batch_size": 8}
SWEEP = """
seeds = 2
[[sessions]]
name = "sim"
task = "maze"
seed = 3
minutes = 2
units = 30
[[sessions]]
name = "recorded"
nwb = "{missing}"
[models.lstm]
hidden = 16
layers = 1
epochs = 1
chunk_len = 40
burn_in = 8
batch_size = 8
[evaluate.drift]
minutes = 0.5
kinds = ["none", "dead30"]
methods = ["none", "norm"]
"""


@pytest.fixture(scope="module")
def local_ray(cache):
    """A local Ray instance with two CPUs, started and stopped here (after `cache` is set, so its
    workers inherit the cache); skipped without Ray."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def executor(where: str, request, folder, resume: bool = False) -> Executor:
    if where == "ray":
        request.getfixturevalue("local_ray")
        return Executor(workers=2, folder=folder, resume=resume, use_ray=True)
    return Executor(workers=1, folder=folder, resume=resume)


@pytest.mark.parametrize("where", ["ray", "here"])
def test_failed_tasks_are_reported_and_resume_reruns_only_them(where, request, cache, sim_nwb, tmp_path):
    missing = tmp_path / "recorded.nwb"
    (tmp_path / "sweep.toml").write_text(SWEEP.format(missing=missing))
    spec = load_spec(tmp_path / "sweep.toml")
    folder = tmp_path / "out"
    summary = run_sweep(spec, folder, executor(where, request, folder))
    assert sorted(summary["failed"]) == ["recorded--lstm--seed0", "recorded--lstm--seed1"]
    assert all("no such file" in e for e in summary["failed"].values())
    done = sorted(p.name for p in (folder / "tasks").iterdir())
    assert done == ["recorded--lstm--seed0.error.txt", "recorded--lstm--seed1.error.txt",
                    "sim--lstm--seed0.json", "sim--lstm--seed1.json"]
    first = json.loads((folder / "tasks" / "sim--lstm--seed1.json").read_text())
    assert first["heldout"]["epochs_run"] == 1 and first["seed"] == 1
    assert "recorded--lstm--seed0" in (folder / "summary.md").read_text()
    drift = (folder / "drift-sim.md").read_text()
    assert "| dead30 |" in drift and "## lstm" in drift and "## recorded" not in drift
    assert len(summary["heldout"]["sim/lstm"]["r2"]["values"]) == 2

    shutil.copy(sim_nwb.path, missing)  # the recording arrives; only its tasks run again
    summary = run_sweep(spec, folder, executor(where, request, folder, resume=True))
    assert summary["failed"] == {} and sorted(summary["resumed"]) == ["sim--lstm--seed0", "sim--lstm--seed1"]
    assert not list((folder / "tasks").glob("*.error.txt"))
    assert json.loads((folder / "tasks" / "sim--lstm--seed1.json").read_text()) == first
    recorded = json.loads((folder / "tasks" / "recorded--lstm--seed0.json").read_text())
    assert "skipped" in recorded["drift"] and recorded["heldout"]["r2"] > -1
    assert set(summary["heldout"]) == {"sim/lstm", "recorded/lstm"}


def test_train_seeds_on_ray_equal_train_seeds_here(local_ray, sim_session, tmp_path):
    """`train --seeds N --workers 2` runs the seeds as Ray tasks; the numbers do not change."""
    hparams = {"hidden": 16, "layers": 1}
    train = {k: v for k, v in TINY.items() if k not in hparams and k != "epochs"}
    specs = [RunSpec(model="lstm", out=tmp_path / name, seeds=2, epochs=1, hparams=hparams, train_overrides=train)
             for name in ("here", "ray")]
    here = train_run(specs[0], sim_session, {"kind": "test"})
    ray = train_run(specs[1], sim_session, {"kind": "test"},
                    run_tasks=partial(run_in_order, executor=Executor(workers=2, use_ray=True)))
    assert [r["r2"] for r in ray["runs"]] == [r["r2"] for r in here["runs"]]
    assert ray["metrics"]["r2"] == here["metrics"]["r2"]


def test_grid_axes_expand_and_training_fields_go_to_training(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('seeds = [4]\n[[sessions]]\nname = "a"\n[models.small]\nmodel = "lstm"\n'
                    'hidden = [8, 16]\nlr = [1e-3, 2e-3]\nepochs = 2\n')
    spec = load_spec(path)
    assert [m.label for m in spec.models] == ["small[hidden=8,lr=0.001]", "small[hidden=8,lr=0.002]",
                                              "small[hidden=16,lr=0.001]", "small[hidden=16,lr=0.002]"]
    assert dict(spec.models[1].hparams) == {"hidden": 8} and dict(spec.models[1].train) == {"epochs": 2, "lr": 2e-3}
    assert [t.key for t in spec.tasks(tmp_path)][0] == "a--small_hidden=8,lr=0.001_--seed4"


@pytest.mark.parametrize("text, message", [
    ('[[sessions]]\nname = "a"\n', "at least one"),
    ('[[sessions]]\nname = "a"\n[models.gru]\n', "unknown model 'gru'"),
    ('[[sessions]]\nname = "a"\n[models.lstm]\n[evaluate.typing]\n', "unknown"),
    ('[[sessions]]\nname = "a"\ncolour = 1\n[models.lstm]\n', "sessions"),
    ('[[sessions]]\nname = "a"\n[models.lstm]\n[evaluate.drift]\nkinds = ["quake"]\n', "quake"),
])
def test_bad_sweep_files_get_one_clear_error(text, message, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(SweepError, match=message):
        load_spec(path)


def test_cli_without_ray_runs_here_and_says_ray_would_spread_the_tasks(monkeypatch, cache, sim_nwb, tmp_path):
    from typer.testing import CliRunner

    from spikestream.cli import _register, app

    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if the cluster extra were absent
    _register()
    (tmp_path / "s.toml").write_text(f'[[sessions]]\nname = "r"\nnwb = "{sim_nwb.path}"\n[models.wiener]\n')
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "Ray is not installed" in res.output and "spread them over 2" in res.output
    assert "wiener" in (tmp_path / "o" / "summary.md").read_text()
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "nope.toml")])
    assert res.exit_code == 1 and "sweep:" in res.output and "Traceback" not in res.output


def test_search_runs_on_ray_tune_and_resume_continues_it(local_ray, cache, tmp_path):
    (tmp_path / "s.toml").write_text(
        '[[sessions]]\nname = "sim"\ntask = "maze"\nseed = 3\nminutes = 2\nunits = 30\n'
        '[search]\nmodel = "lstm"\nsamples = 2\nlayers = 1\nepochs = 2\nchunk_len = 40\nburn_in = 8\nbatch_size = 8\n'
        '[search.space]\nhidden = { choice = [8, 16] }\nlr = { loguniform = [1e-3, 1e-2] }\n')
    spec = load_spec(tmp_path / "s.toml")
    folder = tmp_path / "out"
    summary = run_sweep(spec, folder, Executor(workers=2, folder=folder))
    trials = summary["search"]["trials"]
    assert len(trials) == 2 and all(t["error"] is None and t["val_r2"] is not None for t in trials)
    assert trials[0]["val_r2"] >= trials[1]["val_r2"] and trials[0]["hidden"] in (8, 16)
    table = (folder / "search.md").read_text()
    assert "best val R²" in table and all(f"| {t['trial']} |" in table for t in trials)
    assert len(list((folder / "artifacts" / "search").glob("*/config.json"))) == 2
    again = run_sweep(spec, folder, Executor(workers=2, folder=folder, resume=True))  # finished: nothing reruns
    assert [t["trial"] for t in again["search"]["trials"]] == [t["trial"] for t in trials]
