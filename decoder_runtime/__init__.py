"""spikestream: decoder_runtime."""
