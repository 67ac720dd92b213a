"""One module of typer commands per area; `spikestream.cli` gathers them."""
