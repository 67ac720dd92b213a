"""The command line's conventions: fast help, one run description, clear one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

import runtime_helpers as h
from decoder_runtime.config import ConfigError, RuntimeConfig


def test_help_defaults_written_out_equal_the_library():
    """The CLI spells some defaults out so `--help` imports nothing heavy; they must not drift."""
    from decoder_runtime.adaptation import METHODS
    from models.registry import MODEL_NAMES
    from replay.defaults import DEFAULT_MINUTES, DEFAULT_UNITS
    from replay.session import DEFAULT_BIN_WIDTH
    from spikestream.commands import adaptation, data, training

    assert (data.DEFAULT_MINUTES, data.DEFAULT_UNITS, data.DEFAULT_BIN_WIDTH) == (DEFAULT_MINUTES, DEFAULT_UNITS,
                                                                                  DEFAULT_BIN_WIDTH)
    assert tuple(training.MODEL_NAMES) == tuple(MODEL_NAMES)
    assert tuple(adaptation.METHODS) == tuple(METHODS)


def test_help_imports_no_heavy_library():
    code = ("import sys; sys.argv = ['spikestream', '--help']\nfrom spikestream.cli import main\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nheavy = [m for m in ('torch', 'onnxruntime', 'pynwb', 'numba', 'zmq', 'pylsl', "
            "'matplotlib', 'numpy') if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=h.REPO, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_config_round_trips_through_toml(tmp_path):
    toml = tmp_path / "session.toml"
    toml.write_text('max_bins = 100\n[model]\nartifact = "runs/x"\nbackend = "onnx"\n'
                    '[source]\nkind = "lsl"\nlsl_name = "M1"\n[deadline]\ndeadline_ms = 5\n'
                    '[output]\nzmq = "tcp://127.0.0.1:6000"\nrecord = "rec.nwb"\n')
    cfg = RuntimeConfig.from_toml(toml)
    assert (cfg.model.backend, cfg.source.lsl_name, cfg.deadline.deadline_ms, cfg.max_bins) == ("onnx", "M1", 5, 100)
    assert RuntimeConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.override({"model.device": "cuda", "max_bins": 5}).model.device == "cuda"


@pytest.mark.parametrize("data,match", [
    ({"model": {"artifact": "x"}, "deadline": {"deadline_ms": -5}}, "deadline_ms must be a finite number >= 0"),
    ({"model": {"artifact": "x"}, "deadline": {"deadline_ms": float("nan")}}, "deadline_ms must be a finite"),
    ({"model": {"artifact": "x"}, "deadline": {"deadline_ms": float("inf")}}, "deadline_ms must be a finite"),
    ({"model": {"artifact": "x"}, "max_bins": -5}, "max_bins must be an integer >= 1"),
    ({"model": {"artifact": "x"}, "validation": {"late_ms": -1}}, "late_ms must be a finite number > 0"),
    ({"model": {"artifact": "x", "threads": 0}}, "threads must be an integer >= 1"),
    ({"model": {"artifact": "x"}, "output": {"zmq": "tcp://127.0.0.1:99999"}}, "port must be 1..65535"),
    ({"model": {"artifact": "x"}, "source": {"kind": "lsl"}}, "LSL source needs"),
    ({"model": {"artifact": "x"}, "sourse": {}}, "unknown keys"),
    ({"model": {"artifact": "x", "backnd": "onnx"}}, r"unknown keys in \[model\]"),
    ({}, "model.artifact is required"),
    ({"model": {"artifact": "x"}, "output": {"allow_remote": "false"}}, "output.allow_remote must be true or false"),
    ({"model": {"artifact": "x"}, "warm": {"busy_wait": 1}}, "warm.busy_wait must be true or false"),
])
def test_bad_run_descriptions_are_one_clear_error(data, match):
    with pytest.raises(ConfigError, match=match):
        RuntimeConfig.from_dict(data)


@pytest.mark.parametrize("args,match", [
    (["--deadline-ms", "-5"], "deadline_ms must be a finite number >= 0"),
    (["--deadline-ms", "nan"], "deadline_ms must be a finite number"),
    (["--max-bins", "-5"], "max_bins must be an integer >= 1"),
    (["--late-ms", "-1"], "late_ms must be a finite number > 0"),
    (["--threads", "0"], "threads must be an integer >= 1"),
    (["--zmq", "tcp://127.0.0.1:99999"], "port must be 1..65535"),
])
def test_bad_options_exit_2_with_one_line_and_no_traceback(tmp_path, args, match):
    import re

    p = h.cli("replay", str(tmp_path / "no-artifact"), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert "Traceback" not in err and re.search(match, err), err
    assert len([line for line in err.strip().splitlines() if line.strip()]) <= 2, err


def test_replay_from_a_config_file_equals_the_options(tmp_path):
    """`--config` and the equivalent options build the same run; options override the file."""
    from spikestream.commands.runtime import build_config

    toml = tmp_path / "s.toml"
    toml.write_text('[model]\nartifact = "a"\nbackend = "torch"\n[source]\nkind = "replay"\nspeed = "max"\n'
                    '[output]\nzmq = "none"\n')
    from_file = build_config(toml, {"max_bins": 7})
    from_options = build_config(None, {"model.artifact": "a", "model.backend": "torch", "source.kind": "replay",
                                       "source.speed": "max", "output.zmq": "none", "max_bins": 7})
    assert from_file == from_options
    assert build_config(toml, {"source.speed": "1"}).source.speed == "1"
    partial = tmp_path / "warm.toml"  # a file may leave out what the command line gives
    partial.write_text("[warm]\nrepeat = false\n")
    cfg = build_config(partial, {"model.artifact": "a", "source.kind": "replay"})
    assert cfg.model.artifact == "a" and cfg.warm.repeat is False
