"""spikestream: benchmarks (`spikestream bench`).

stats (percentiles, summaries) · machine (what ran it) · artifacts (untrained default-size
models, exported) · step_latency (per-bin timing, interleaved rounds) · scaling (channel and
width sweeps) · runtime (replay --speed max, per-stage stamps) · e2e + lsl_outlet (LSL →
serve → ZeroMQ) · procs (running the CLI as processes) · suite (the whole run) · report +
plots (JSON, raw .npz, Markdown, PNG) · commands (the typer command).
"""


class BenchError(ValueError):
    """A request the bench cannot carry out (unknown model or backend, ...); says which."""
