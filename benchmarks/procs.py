"""Running the runtime's own commands as separate processes, the way a rig runs them.

The end-to-end and replay benchmarks measure `spikestream serve` / `replay` themselves, not
a re-creation of them in the bench's process, so they start the real CLI with the same
interpreter and this checkout on its path.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free TCP port on loopback (the OS picks; closed again for the runtime to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    out = dict(os.environ, PYTHONUNBUFFERED="1")
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), out.get("PYTHONPATH", "")) if p)
    return out


def cli(*args: str) -> list[str]:
    """argv for `spikestream ARGS...` run through this interpreter."""
    return [sys.executable, "-m", "spikestream", *args]


def start(argv: list[str], log: Path, capture_stdout: bool = False) -> subprocess.Popen:
    """Start a process logging to `log` (stdout too, unless captured as text for the caller)."""
    with open(log, "w") as f:  # the child holds its own copy of the descriptor
        return subprocess.Popen(argv, stdout=subprocess.PIPE if capture_stdout else f,
                                stderr=f if capture_stdout else subprocess.STDOUT,
                                text=capture_stdout or None, env=env(), cwd=REPO_ROOT)


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Ctrl-C first (the runtime closes its record on it), kill only if it will not go."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text()[-chars:]
    except OSError:
        return ""
