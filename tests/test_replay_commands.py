"""`spikestream simulate` and `spikestream info` through typer, on real files."""
from __future__ import annotations

import typer
from typer.testing import CliRunner

from replay import read_nwb
from spikestream.commands.data import info, simulate

app = typer.Typer()
app.command("simulate")(simulate)
app.command("info")(info)
runner = CliRunner()


def test_simulate_then_info(tmp_path):
    out = tmp_path / "s.nwb"
    r = runner.invoke(app, ["simulate", "--out", str(out), "--minutes", "0.2", "--units", "12",
                            "--seed", "3", "--dead-fraction", "0.25", "--dead-onset", "6"])
    assert r.exit_code == 0, r.output
    assert "dead_units" in r.output
    s = read_nwb(out)
    assert s.n_channels == 12 and s.n_bins == 480
    r = runner.invoke(app, ["info", str(out), "--bin-width", "0.05"])
    assert r.exit_code == 0, r.output
    for needle in ("units", "12", "240 x 50 ms", "hand_vel", "mean rate", "trials", "behaviour gaps"):
        assert needle in r.output


def test_rtt_task_and_bad_options(tmp_path):
    out = tmp_path / "r.nwb"
    r = runner.invoke(app, ["simulate", "--out", str(out), "--task", "rtt", "--minutes", "0.1", "--units", "5"])
    assert r.exit_code == 0, r.output
    assert "finger_vel" in runner.invoke(app, ["info", str(out)]).output
    bad = runner.invoke(app, ["simulate", "--out", str(out), "--task", "juggle"])
    assert bad.exit_code != 0
    bad = runner.invoke(app, ["simulate", "--out", str(out), "--dead-fraction", "0.7", "--noisy-fraction", "0.7"])
    assert bad.exit_code != 0 and "dead_fraction + noisy_fraction" in bad.output


def test_info_on_a_bad_file_is_a_clean_error(tmp_path):
    junk = tmp_path / "junk.nwb"
    junk.write_text("no")
    r = runner.invoke(app, ["info", str(junk)])
    assert r.exit_code == 1 and "error" in r.output and "Traceback" not in r.output
