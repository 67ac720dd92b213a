"""The package graph runs one way: models, replay < decoder_runtime < training < benchmarks < spikestream.

Checked statically on every `import` in the tree, so an upward import (the runtime reaching
into training, a library reaching into the CLI) fails here, whoever adds it.
"""
from __future__ import annotations

import ast
from pathlib import Path

RANK = {"models": 0, "replay": 0, "decoder_runtime": 1, "training": 2, "benchmarks": 3, "spikestream": 4}
REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno


def test_no_package_imports_upward_or_sideways():
    bad = []
    for pkg, rank in RANK.items():
        for f in (REPO / pkg).rglob("*.py"):
            for name, line in _imports(f):
                dst = name.split(".")[0]
                if dst in RANK and dst != pkg and RANK[dst] >= rank:
                    bad.append(f"{f.relative_to(REPO)}:{line} imports {name}")
    assert not bad, "imports against the package graph:\n" + "\n".join(bad)
