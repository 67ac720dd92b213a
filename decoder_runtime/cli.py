"""The `spikestream` command line: one typer app, commands defined beside what they drive.

Each area keeps its commands in its own module; this file only gathers them. It is the one
place that reaches into `training` and `benchmarks`, so the runtime's data path never does.
"""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="spikestream: train, export, run and measure real-time BCI velocity decoders.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _register() -> None:
    from replay import commands as replay_commands

    app.command("simulate")(replay_commands.simulate)
    app.command("info")(replay_commands.info)

    from training import commands as training_commands

    app.command("train")(training_commands.train)
    app.command("evaluate")(training_commands.evaluate)

    from decoder_runtime import backends_command
    from training import export as export_command

    app.command("export")(export_command.export)
    app.command("backends")(backends_command.backends)

    from benchmarks import commands as bench_commands

    app.command("bench")(bench_commands.bench)

    from decoder_runtime import commands as runtime_commands

    app.command("serve")(runtime_commands.serve)
    app.command("replay")(runtime_commands.replay)
    app.command("listen")(runtime_commands.listen)
    app.command("stream-nwb")(runtime_commands.stream_nwb)

    from decoder_runtime.adaptation import commands as adapt_commands

    app.command("adapt-fit")(adapt_commands.adapt_fit)

    from benchmarks import drift as drift_benchmark

    app.command("evaluate-drift")(drift_benchmark.evaluate_drift)

    from benchmarks import closed_loop_cli

    app.command("closed-loop")(closed_loop_cli.closed_loop)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="where the demo's artifact and session record go"),
    model: str = typer.Option("lstm", "--model", help="which decoder to train for the demo"),
    retrain: bool = typer.Option(False, "--retrain", help="train again even if OUT already holds an artifact"),
) -> None:
    """The main job on the built-in default: train, export, then replay through the runtime.

    Runs the same commands a user would type (`train`, `export`, `replay --speed max`), on
    the simulated MC_Maze-like session, so the demo cannot drift from the real paths. The
    replay publishes on ZeroMQ and records the session to OUT/session.nwb.
    """
    steps: list[list[str]] = []
    if retrain or not (out / "config.json").is_file():
        steps.append(["train", "--model", model, "--out", str(out)])
    steps.append(["export", str(out)])
    steps.append(["replay", str(out), "--speed", "max", "--record", str(out / "session.nwb")])
    for args in steps:
        typer.secho(f"$ spikestream {' '.join(args)}", bold=True)
        code = app(args, standalone_mode=False)  # click returns a failing step's exit code
        if code:
            raise typer.Exit(code)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
