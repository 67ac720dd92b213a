"""`spikestream backends`: what this machine can run, and what it would pick by default."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table



def _environment() -> str:
    import torch

    parts = [f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(f"CUDA {torch.version.cuda} on {torch.cuda.get_device_name(0)}")
    try:
        import onnxruntime as ort

        parts.append(f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})")
    except ImportError:
        parts.append("onnxruntime not installed")
    return "; ".join(parts)


def backends() -> None:
    """List every backend x device, whether this machine can run it (and if not, why)."""
    from decoder_runtime.backends import DEVICES, available_backends, default_backend

    console = Console()
    defaults = {d: default_backend(d) for d in DEVICES}
    table = Table(title="spikestream backends on this machine")
    for col in ("backend", "device", "available", "default", "why not / notes"):
        table.add_column(col)
    for kind, device, ok, reason in available_backends():
        default = defaults[device] == kind and ok
        if kind == "numba" and ok:
            default, note = True, "LSTM artifacts only (their default)"
        else:
            note = reason
        table.add_row(kind, device, "[green]yes[/green]" if ok else "[red]no[/red]",
                      "*" if default else "", note)
    console.print(table)
    console.print(_environment())
    console.print("torchscript/onnx need an exported artifact: `spikestream export runs/NAME`; "
                  "backend 'auto' picks the starred one an artifact can use.")
