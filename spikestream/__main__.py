"""`python -m spikestream ARGS` == `spikestream ARGS` (what tests and subprocesses use)."""
from spikestream.cli import main

main()
