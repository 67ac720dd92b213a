"""The `spikestream` command line: one typer app, commands defined beside what they drive.

Each area keeps its commands in its own module; this file only gathers them. It is the one
place that reaches into `training` and `benchmarks`, so the runtime's data path never does.
"""
from __future__ import annotations

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


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
