"""The Python side of `benchmarks/gpu_check.sh`: versions, the runtime's backend, one merged report.

The shell script runs each phase (GPU tests, bench back to back, bench at 40 Hz, runtime,
end to end) as its own process under a hard time limit, so a phase that hangs or runs long
costs only its own results. This module then
- `versions`: prints GPU, driver, CUDA, cuDNN, torch and library versions and which
  backends can run on CUDA here, and saves them as JSON;
- `fastest`: names the fastest CUDA step backend of a model in a finished bench phase (the
  backend the runtime phases then serve with);
- `merge`: folds whatever phases finished into one results folder (results.json,
  latencies.npz, report.md with the GPU check's own summary on top, PNGs), the same files
  `spikestream bench --out` writes, ready to commit as benchmarks/results/<gpu-name>/.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from benchmarks.report import RAW_FILE, load_raw, markdown_table

# Which results sections each bench phase contributes (the runtime phases also time a
# token step section to start up; those rows are not theirs to report).
PHASE_SECTIONS = {
    "bench": ("step",),
    "paced": ("step_paced",),
    "runtime": ("replay", "runtime_overhead"),
    "e2e": ("e2e", "e2e_runs", "runtime_overhead"),
}
# Prefixes of `skipped` names that belong to each phase.
PHASE_SKIPS = {"bench": ("step",), "paced": ("step_paced",), "runtime": ("replay", "runtime"),
               "e2e": ("e2e", "runtime")}
PARITY_TESTS = {"test_gpu_parity": "small", "test_gpu_parity_default_size": "default"}


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': the results folder's name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def versions() -> dict:
    """What the issue asks to print first, plus whether each backend can run on CUDA and why not."""
    import torch

    from benchmarks.machine import machine_info
    from decoder_runtime.backends import available_backends

    info = machine_info()
    info["torch_cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["backends_cuda"] = [{"backend": k, "available": ok, "reason": why}
                             for k, _, ok, why in available_backends(("cuda",))]
    return info


def version_lines(info: dict) -> list[str]:
    gpu = info.get("gpu") or {}
    lines = [f"GPU: {gpu.get('name', 'none')} ({gpu.get('memory_gib')} GiB, compute {gpu.get('capability')}), "
             f"driver {gpu.get('driver')}, CUDA runtime {info.get('torch_cuda')}, cuDNN {info.get('cudnn')}",
             f"torch {info['libraries'].get('torch')}, Python {info['python']}, {info['cpu']} "
             f"({info['usable_cores']} usable cores)",
             "libraries: " + ", ".join(f"{k} {v}" for k, v in info["libraries"].items())]
    lines += [f"backend {b['backend']} on cuda: " + ("available" if b["available"] else f"no: {b['reason']}")
              for b in info["backends_cuda"]]
    return lines


def fastest(phase_dir: Path, model: str, device: str = "cuda") -> str | None:
    """The backend with the lowest step p50 for `model` on `device` in a finished bench phase."""
    f = phase_dir / "results.json"
    if not f.is_file():
        return None
    rows = [r for r in json.loads(f.read_text()).get("step") or []
            if r["model_kind"] == model and r["device"].startswith(device)]
    return min(rows, key=lambda r: r["summary"]["p50"])["backend"] if rows else None


def merge(work: Path) -> tuple[dict | None, dict[str, np.ndarray]]:
    """One results dict and raw-latency dict from the phase folders under `work` that finished."""
    results: dict | None = None
    raw: dict[str, np.ndarray] = {}
    for phase, sections in PHASE_SECTIONS.items():
        d = work / phase
        if not (d / "results.json").is_file():
            continue
        part = json.loads((d / "results.json").read_text())
        part_raw = load_raw(d / RAW_FILE) if (d / RAW_FILE).is_file() else {}
        if results is None:  # the first phase that finished (the main bench, if it did) gives config and machine
            results = {**{k: part[k] for k in ("started", "config", "machine", "bin_width_s")},
                       "notes": [], "warnings": [], "artifacts": [], "skipped": []}
        for key in ("notes", "warnings"):
            results[key] += [x for x in part[key] if x not in results[key]]
        labels = {a["label"] for a in results["artifacts"]}
        results["artifacts"] += [a for a in part.get("artifacts", []) if a["label"] not in labels]
        results["skipped"] += [s for s in part.get("skipped", []) if s["name"].split("/")[0] in PHASE_SKIPS[phase]]
        for sec in sections:
            rows = part.get(sec) or []
            results.setdefault(sec, []).extend(rows)
            for name in (row["name"] for row in rows if "name" in row):
                raw.update({k: part_raw[k] for k in (name, f"{name}/cuda_events") if k in part_raw})
    return results, raw


def read_test_outcomes(xml_files: list[Path]) -> list[dict]:
    """Each test case in pytest's JUnit XML: id, outcome, seconds, parity error if recorded."""
    out = []
    for f in xml_files:
        try:
            cases = list(ET.parse(f).getroot().iter("testcase"))
        except (OSError, ET.ParseError):  # a group cut short before pytest wrote its XML: its log tells
            continue
        for case in cases:
            outcome, message = "passed", ""
            el = next((e for e in (case.find(t) for t in ("failure", "error", "skipped")) if e is not None), None)
            if el is not None:
                outcome = {"failure": "failed"}.get(el.tag, el.tag)
                message = (el.get("message") or "").partition("\n")[0][:200]
            props = {p.get("name"): p.get("value") for p in case.iter("property")}
            err = props.get("parity_error")
            out.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                        "seconds": float(case.get("time") or 0), "message": message,
                        "parity_error": float(err) if err is not None else None})
    return out


def parity_table(tests: list[dict]) -> tuple[list[str], list[list[str]]] | None:
    """Model x CUDA backend, per size: 'passed (error)' / 'failed' / 'skipped', from the parity tests."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    kinds: list[str] = []
    for t in tests:
        m = re.search(r"::(\w+)\[(\w+)-(\w+)\]$", t["test"])
        if not m or m.group(1) not in PARITY_TESTS:
            continue
        size, model, kind = PARITY_TESTS[m.group(1)], m.group(2), m.group(3)
        if kind not in kinds:
            kinds.append(kind)
        shown = t["outcome"] + (f" ({t['parity_error']:.1e})" if t["parity_error"] is not None else "")
        cells.setdefault((model, size), {})[kind] = shown
    if not cells:
        return None
    heads = ["model", "size", *kinds]
    return heads, [[model, size, *(row.get(k, "not run") for k in kinds)] for (model, size), row in cells.items()]


def check_markdown(gpu_name: str, info: dict | None, phases: list[dict], tests: list[dict]) -> str:
    """The GPU check's own part of report.md: versions, phases with their limits, GPU tests."""
    lines = [f"# spikestream GPU check: {gpu_name}", "",
             "Made by `bash benchmarks/gpu_check.sh` in one go; each phase ran as its own process under the time "
             "limit shown, and a phase that ran out of time or failed left its results out (see the log).", ""]
    if info:
        lines += ["## Versions", ""] + [f"- {s}" for s in version_lines(info)] + [""]
    lines += ["## Phases", "", markdown_table(["phase", "exit", "seconds", "limit (s)", "command"],
                                              [[p["phase"], p["rc"], p["seconds"], p["limit"], f"`{p['command']}`"]
                                               for p in phases]), ""]
    if tests:
        counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "error", "skipped")}
        lines += ["## GPU tests", "", ", ".join(f"{v} {k}" for k, v in counts.items()), ""]
        table = parity_table(tests)
        if table:
            lines += ["Parity with eager torch on the CPU over 2,000 bins, before and after `reset()` "
                      "(max normalised error; tolerance 1e-4):", "", markdown_table(*table), ""]
        bad = [t for t in tests if t["outcome"] in ("failed", "error")]
        lines += [f"- `{t['test']}` {t['outcome']}: {t['message']}" for t in bad]
        other = [t for t in tests if t["outcome"] != "skipped" and t["parity_error"] is None]
        lines += [f"- `{t['test']}` {t['outcome']}" for t in other if t not in bad]
    return "\n".join(lines) + "\n"


def read_phases(path: Path) -> list[dict]:
    """The script's phase log: one tab-separated line per phase (name, exit code, seconds, limit, command)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 5:
            rows.append(dict(zip(("phase", "rc", "seconds", "limit", "command"), parts)))
    return rows


def write_results(work: Path, out: Path) -> Path:
    """Merge what finished under `work` into `out`/<gpu-name>/; returns that folder."""
    from benchmarks.report import write_outputs

    info = json.loads((work / "versions.json").read_text()) if (work / "versions.json").is_file() else None
    gpu_name = ((info or {}).get("gpu") or {}).get("name") or "no-gpu"
    folder = out / slug(gpu_name)
    folder.mkdir(parents=True, exist_ok=True)
    phases = read_phases(work / "phases.tsv")
    tests = read_test_outcomes(sorted(work.glob("tests_*.xml")))
    results, raw = merge(work)
    head = check_markdown(gpu_name, info, phases, tests)
    if results is None:
        (folder / "report.md").write_text(head + "\nNo bench phase finished.\n")
        results = {}
    else:
        results["config"]["command"] = "bash benchmarks/gpu_check.sh"
        results["gpu_check"] = {"versions": info, "phases": phases, "tests": tests}
        write_outputs(results, raw, folder)
        report = (folder / "report.md").read_text().replace("# spikestream bench", "# The bench", 1)
        (folder / "report.md").write_text(head + "\n" + report)
    if not (folder / "results.json").is_file():
        (folder / "results.json").write_text(json.dumps({"gpu_check": {"versions": info, "phases": phases,
                                                                        "tests": tests}}, indent=2))
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("versions", help="print versions and CUDA backends; save them as JSON")
    v.add_argument("--json", type=Path, required=True)
    f = sub.add_parser("fastest", help="the fastest CUDA step backend of a model in a bench phase folder")
    f.add_argument("phase_dir", type=Path)
    f.add_argument("model")
    f.add_argument("--device", default="cuda")
    f.add_argument("--default", default="cudagraph")
    m = sub.add_parser("merge", help="merge the finished phases under WORK into OUT/<gpu-name>/")
    m.add_argument("work", type=Path)
    m.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "versions":
        info = versions()
        args.json.write_text(json.dumps(info, indent=2))
        print("\n".join(version_lines(info)))
    elif args.cmd == "fastest":
        print(fastest(args.phase_dir, args.model, args.device) or args.default)
    else:
        print(write_results(args.work, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
