"""Which machine made a result: named beside every trained artifact and every benchmark.

Lives at the bottom of the package graph so training reports and benchmark reports share one
definition without either importing the other.
"""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
