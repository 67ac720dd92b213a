"""Export an artifact's single-bin step to TorchScript (`model.ts`) and ONNX (`model.onnx`).

The exported graph is exactly what the runtime runs per bin: raw counts [1, C] plus every
state tensor in, velocity [1, 2] (data units) plus every new state tensor out. The
normalisation buffers are inside the graph, so no runtime has to know or guess a scaling.
Each file is checked before it is recorded: it is loaded back (torch.jit.load /
onnx.checker + ONNX Runtime) and streamed against eager torch over a sequence of bins with
the state carried, and its SHA-256 goes into config.json so a modified export is refused.

ONNX: the dynamo exporter (torch's default) is tried first; where it fails, or its graph
disagrees with eager torch, the legacy TorchScript-based exporter is used, and the config
records which exporter made the file and why.
"""
from __future__ import annotations

import datetime as _dt
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from models.artifact import ArtifactError, load_artifact, read_config, update_config
from models.base import StreamingDecoder
from training.metrics import stream_predict

FORMATS = ("torchscript", "onnx")
TS_FILE = "model.ts"
ONNX_FILE = "model.onnx"
# 20 is torch's default ONNX opset and the newest both exporters can write, so a fallback
# to the legacy exporter never changes the opset.
DEFAULT_OPSET = 20
# ONNX exporter choices -> (name recorded in config, dynamo?) tried in order.
EXPORTERS = {"auto": (("dynamo", True), ("torchscript", False)),
             "dynamo": (("dynamo", True),), "torchscript": (("torchscript", False),)}
INPUT = "counts"
OUTPUT = "velocity"
# Parity checked at export time (a file that fails it is never recorded); the same bar as
# the backends' parity tests. It applies in the model's normalised output units
# (|diff| / y_std): in data units (e.g. mm/s, |v| ~ 100) float32 rounding alone differs by
# ~1e-6 relative between two correct summation orders, i.e. ~1e-4 absolute.
TOLERANCE = 1e-4
CHECK_BINS = 200

StepFn = Callable[[np.ndarray, list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]


class ExportError(RuntimeError):
    """An export that could not be written or did not reproduce eager torch."""


class StepGraph(nn.Module):
    """counts[1, C], *state -> (velocity[1, 2], *new_state): the per-bin graph, flattened.

    Exporters want plain tensor inputs and outputs, so the (y, state-tuple) of
    `StreamingDecoder.step` becomes one flat tuple, in `state_names` order.
    """

    def __init__(self, model: StreamingDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, counts: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        y, new_state = self.model.step(counts, tuple(state))
        return (y, *new_state)


def io_names(model: StreamingDecoder) -> tuple[list[str], list[str]]:
    """Graph input and output names: counts + states in, velocity + `<state>_out` out."""
    states = list(model.state_names)
    return [INPUT, *states], [OUTPUT, *(f"{s}_out" for s in states)]


def check_bins(model: StreamingDecoder, n_bins: int = CHECK_BINS, seed: int = 0) -> np.ndarray:
    """Poisson counts at the model's own training means: realistic inputs for a parity check."""
    rates = np.clip(model.x_mean.detach().cpu().numpy().astype(np.float64), 0.05, None)
    rng = np.random.default_rng(seed)
    return rng.poisson(rates, size=(n_bins, rates.size)).astype(np.float32)


def parity_error(got: np.ndarray, ref: np.ndarray, y_std: np.ndarray) -> float:
    """Max |got - ref| over bins in normalised units (divided by the output's y_std)."""
    err = float(np.max(np.abs(np.asarray(got) - np.asarray(ref)) / np.asarray(y_std)))
    return err if np.isfinite(err) else float("inf")


def stream_diff(model: StreamingDecoder, step: StepFn, bins: np.ndarray) -> dict:
    """How far an exported step is from eager torch over a stream, each carrying its state.

    Returns the max abs difference in data units and in normalised units (the one
    checked against TOLERANCE).
    """
    ref = stream_predict(model, bins)
    state = [s.numpy() for s in model.init_state(1)]
    got = np.empty_like(ref)
    for i, x in enumerate(bins):
        y, state = step(x.reshape(1, -1), state)
        got[i] = np.asarray(y).reshape(-1)
    y_std = model.y_std.detach().cpu().numpy()
    raw = float(np.max(np.abs(got - ref)))
    return {"max_abs_diff": raw if np.isfinite(raw) else float("inf"),
            "max_diff_normalised": parity_error(got, ref, y_std)}


def _example(model: StreamingDecoder) -> tuple[Tensor, ...]:
    counts = torch.from_numpy(check_bins(model, 1, seed=1))
    return (counts, *model.init_state(1))


# --- TorchScript -------------------------------------------------------------------------
def _cpu_device_constants(module: torch.jit.ScriptModule) -> bool:
    """True if tracing baked a CPU device into the graph (it would then not run on CUDA)."""
    for node in module.inlined_graph.nodes():
        if node.kind() == "prim::Constant" and node.output().type().kind() == "DeviceObjType":
            if str(node.output().toIValue()).startswith("cpu"):
                return True
    return False


def export_torchscript(model: StreamingDecoder, path: Path) -> dict:
    """Trace the step, save it, load it back and stream it against eager torch."""
    f = path / TS_FILE
    graph = StepGraph(model).eval()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(graph, _example(model), check_trace=False)
    torch.jit.save(traced, str(f))
    loaded = torch.jit.load(str(f), map_location="cpu")

    def step(x: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        with torch.no_grad():
            out = loaded(torch.from_numpy(x), *(torch.from_numpy(s) for s in state))
        return out[0].numpy(), [o.numpy() for o in out[1:]]

    diff = stream_diff(model, step, check_bins(model))
    if not diff["max_diff_normalised"] <= TOLERANCE:
        f.unlink()
        raise ExportError(f"{f}: traced step differs from eager torch by {diff['max_diff_normalised']:.3g} "
                          f"(normalised units, > {TOLERANCE})")
    return {"file": TS_FILE, "method": "trace", **diff, "device_portable": not _cpu_device_constants(loaded)}


# --- ONNX --------------------------------------------------------------------------------
def _onnx_export(graph: nn.Module, example: tuple[Tensor, ...], f: Path, names: tuple[list, list],
                 opset: int, dynamo: bool) -> None:
    kwargs = dict(input_names=names[0], output_names=names[1], opset_version=opset, dynamo=dynamo)
    if dynamo:
        kwargs.update(external_data=False, verbose=False)  # one self-contained file to hash
    # The exporters are chatty (progress lines, deprecation warnings); a failure still raises.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, example, str(f), **kwargs)
    finally:
        quiet.setLevel(level)


def _ort_step(f: Path, names: tuple[list, list]) -> StepFn:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])

    def step(x: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        out = sess.run(names[1], dict(zip(names[0], [x, *state])))
        return out[0], out[1:]

    return step


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _check_exporter(exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")


def export_onnx(model: StreamingDecoder, path: Path, opset: int = DEFAULT_OPSET, exporter: str = "auto") -> dict:
    """Export with dynamo, else the legacy exporter; check, stream-verify, and describe it.

    `exporter` "dynamo" or "torchscript" forces one path (e.g. to compare them).
    """
    _check_exporter(exporter)
    import onnx

    f = path / ONNX_FILE
    graph = StepGraph(model).eval()
    names = io_names(model)
    bins = check_bins(model)
    problems: dict[str, str] = {}
    for name, dynamo in EXPORTERS[exporter]:
        try:
            with torch.inference_mode(False), torch.no_grad():
                _onnx_export(graph, _example(model), f, names, opset, dynamo)
            onnx.checker.check_model(str(f), full_check=True)
            diff = stream_diff(model, _ort_step(f, names), bins)
        except Exception as e:  # any exporter failure: record it and try the other path
            problems[name] = _first_line(e)
            continue
        if diff["max_diff_normalised"] <= TOLERANCE:
            return {"file": ONNX_FILE, "opset": opset, "exporter": name, **diff,
                    "fallback_reason": problems.get("dynamo")}
        problems[name] = (f"graph differs from eager torch by {diff['max_diff_normalised']:.3g} "
                          f"(normalised units, > {TOLERANCE})")
    f.unlink(missing_ok=True)
    raise ExportError(f"{f}: no exporter produced a correct graph: {problems}")


# --- the artifact-level entry point -------------------------------------------------------
def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _signature(model: StreamingDecoder) -> dict:
    inputs, outputs = io_names(model)
    state = model.init_state(1)
    shapes = [[1, model.n_channels], *(list(s.shape) for s in state)]
    out_shapes = [[1, model.n_outputs], *(list(s.shape) for s in state)]
    return {
        "inputs": [{"name": n, "shape": s, "dtype": "float32"} for n, s in zip(inputs, shapes)],
        "outputs": [{"name": n, "shape": s, "dtype": "float32"} for n, s in zip(outputs, out_shapes)],
        "state": [{"name": n, "input": n, "output": o, "shape": list(s.shape)}
                  for n, o, s in zip(inputs[1:], outputs[1:], state)],
        "normalization": "inside_graph: inputs are raw counts, velocity is in data units",
    }


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """'torchscript,onnx' or a sequence -> validated tuple."""
    items = [s.strip() for s in formats.split(",")] if isinstance(formats, str) else list(formats)
    bad = [s for s in items if s not in FORMATS]
    if bad or not items:
        raise ValueError(f"unknown export format(s) {bad or items}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


def export_artifact(path: str | Path, formats: str | Sequence[str] = FORMATS,
                    opset: int = DEFAULT_OPSET, exporter: str = "auto") -> dict:
    """Write the requested exports into the artifact and record them in config.json.

    Each format is recorded (file hash + description) as soon as it is written and
    verified, so a later failure never leaves a file on disk that config.json describes
    differently. Returns the config's `export` section. Raises ArtifactError for an
    unusable artifact, ValueError for bad options, and ExportError when an export cannot
    be made to match eager torch.
    """
    path = Path(path)
    formats = parse_formats(formats)
    _check_exporter(exporter)
    model = load_artifact(path, device="cpu").model.eval()
    entry = dict(read_config(path).get("export") or {})
    entry.update(_signature(model))
    entry["versions"] = _versions()
    makers = {"torchscript": (TS_FILE, lambda: export_torchscript(model, path)),
              "onnx": (ONNX_FILE, lambda: export_onnx(model, path, opset, exporter))}
    for fmt in formats:
        name, make = makers[fmt]
        entry[fmt] = make()
        entry["exported_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        try:
            update_config(path, files={name: name}, export=entry)
        except OSError as e:
            raise ArtifactError(f"{path}: could not record the export in config.json ({e})") from None
    return entry
