"""spikestream: benchmarks."""
