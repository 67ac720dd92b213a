"""spikestream: training."""
