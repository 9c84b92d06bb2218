"""The architecture's hard rules: the engine never imports mpi4py; dist/ never imports graph or ops."""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ddp_edf"


def test_engine_import_does_not_import_mpi4py():
    code = ("import sys, ddp_edf, ddp_edf.graph, ddp_edf.ops, ddp_edf.models, ddp_edf.optim, ddp_edf.gradcheck; "
            "print('mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")


def test_dist_never_imports_graph_or_ops():
    files = sorted((PACKAGE / "dist").glob("*.py"))
    assert files, "ddp_edf/dist/ should exist"
    for path in files:
        for module in imported_modules(path):
            assert not any(part in {"graph", "ops", "models", "optim"} for part in module.replace(".", " ").split()), \
                f"{path.name} imports {module}"
