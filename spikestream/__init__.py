"""The `spikestream` command line: the composition root above every library package.

Nothing in `models`, `replay`, `training`, `decoder_runtime` or `benchmarks` imports from
here; commands parse options, build a config, call one library function and print.
"""
