"""spikestream: replay."""
