"""What machine a benchmark ran on, and whether it was quiet enough to trust.

A latency number without the CPU, GPU, driver and library versions beside it cannot be
compared with anything, so every report carries this block.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from models.provenance import cpu_model

LIBRARIES = ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "numba", "pylsl", "pyzmq", "msgpack")


def usable_cores() -> int:
    """Cores this process may run on (affinity), not merely how many the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else None


def _gpu() -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "cuda_runtime": torch.version.cuda,
        "driver": _nvidia_driver(),
        "capability": f"{props.major}.{props.minor}",
    }


def _governor() -> str | None:
    f = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    try:
        return f.read_text().strip()
    except OSError:
        return None


def machine_info() -> dict:
    """CPU, cores, memory, GPU and driver, library versions, load and code version."""
    from models.artifact import code_version

    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gib": mem_gib,
        "cpu_governor": _governor(),
        "gpu": _gpu(),
        "libraries": _library_versions(),
        "loadavg": list(os.getloadavg()),
        "code_version": code_version(),
    }


def load_warning(threshold: float = 0.5) -> str | None:
    """A sentence when the 1-minute load says other work competes for the cores, else None.

    The threshold is a fraction of the usable cores: with 2 cores, a load of 1.0 already
    means one core's worth of other work runs beside the benchmark.
    """
    load1 = os.getloadavg()[0]
    cores = usable_cores()
    if load1 > threshold * cores:
        return (f"machine is loaded: 1-min load average {load1:.2f} on {cores} usable cores "
                f"(> {threshold:g} per core); tail latencies will include other processes' work")
    return None
