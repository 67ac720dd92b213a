"""The `spikestream` command line: one typer app gathering every area's commands.

The composition root: the only code that sees every package (`replay`, `models`,
`training`, `decoder_runtime`, `benchmarks`); none of them imports from here.
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
    """Attach every area's commands; each module imports its heavy libraries inside its commands."""
    from spikestream.commands import (
        adaptation, backends, bench, closed_loop, data, recalibration, runtime, sweep, training, view,
    )

    for name, fn in (("simulate", data.simulate), ("info", data.info),
                     ("train", training.train), ("evaluate", training.evaluate), ("export", training.export),
                     ("backends", backends.backends), ("bench", bench.bench),
                     ("serve", runtime.serve), ("replay", runtime.replay), ("listen", runtime.listen),
                     ("stream-nwb", runtime.stream_nwb), ("adapt-fit", adaptation.adapt_fit),
                     ("evaluate-drift", bench.evaluate_drift), ("view", view.view), ("sweep", sweep.sweep),
                     ("closed-loop", closed_loop.closed_loop), ("recalibrate", recalibration.recalibrate)):
        app.command(name)(fn)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="where the demo's artifact and session record go"),
    model: str = typer.Option("lstm", "--model", help="which decoder to train for the demo"),
    retrain: bool = typer.Option(False, "--retrain", help="train again even if OUT already holds an artifact"),
    zmq: str = typer.Option("tcp://127.0.0.1:5555", "--zmq", help="where the replay publishes its velocities ('none': nowhere)"),
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
    steps.append(["replay", str(out), "--speed", "max", "--record", str(out / "session.nwb"), "--zmq", zmq])
    for args in steps:
        typer.secho(f"$ spikestream {' '.join(args)}", bold=True)
        code = app(args, standalone_mode=False)  # click returns a failing step's exit code
        if code:
            raise typer.Exit(code)
    typer.echo(f"watch a session live: `spikestream view`, open http://127.0.0.1:8050/, then `spikestream replay {out} --speed 1`")


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
