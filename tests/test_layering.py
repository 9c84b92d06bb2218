"""The architecture's hard rules: imports point down the layers only, the engine never imports
mpi4py, the parallel layer knows nothing of graphs or ops, and importing ddp_edf has no side effects."""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ddp_edf"

# Layer of every module (higher layers may import lower ones, never the reverse).
LAYERS = {
    "errors": 0, "engine.graph": 0, "data": 0,
    "engine.ops": 1, "engine.conv": 1, "engine.attention": 1, "engine.dropout": 1, "engine.gradcheck": 1,
    "engine.models": 2, "engine.optim": 2,
    "parallel": 3,
    "training": 4,
    "config": 5, "build": 5,
    "train": 6, "evaluate": 6, "plot": 6, "__init__": 6,
}


def layer_of(module: str) -> int:
    """'engine.ops' -> 1, 'data.idx' -> 0 (the longest prefix listed in LAYERS wins)."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        if ".".join(parts[:length]) in LAYERS:
            return LAYERS[".".join(parts[:length])]
    raise AssertionError(f"module ddp_edf.{module} has no layer in LAYERS")


def package_imports(path: pathlib.Path):
    """The ddp_edf modules that ``path`` imports, as dotted names relative to the package."""
    here = path.relative_to(PACKAGE).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[:len(here) - (node.level - 1)]) if node.level > 1 else list(here)
            target = base + (node.module.split(".") if node.module else [])
            yield from ([".".join(target + [alias.name]) for alias in node.names] if not node.module
                        else [".".join(target)])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddp_edf"):
            yield node.module.removeprefix("ddp_edf").lstrip(".")


def test_imports_point_down_the_layers_only():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        module = module.removesuffix(".__init__") if module != "__init__" else module
        for target in package_imports(path):
            if target:
                assert layer_of(target) <= layer_of(module), f"ddp_edf.{module} imports ddp_edf.{target} (a higher layer)"


def test_parallel_data_and_engine_import_only_themselves():
    """parallel/ knows nothing of graphs or ops, data/ nothing of graphs or MPI, the engine nothing of either
    (ddp_edf.errors, the OptionError every constructor raises, imports nothing)."""
    assert not list(package_imports(PACKAGE / "errors.py"))
    for layer in ("parallel", "data", "engine"):
        for path in sorted((PACKAGE / layer).glob("*.py")):
            for target in package_imports(path):
                assert target.startswith(layer) or target in ("", "errors"), f"{layer}/{path.name} imports ddp_edf.{target}"


def test_importing_ddp_edf_has_no_side_effects():
    """No mpi4py, no change to the environment, no thread started, no file touched."""
    code = ("import os, sys, threading; before = dict(os.environ); threads = threading.active_count(); "
            "import ddp_edf, ddp_edf.engine.graph, ddp_edf.engine.ops, ddp_edf.engine.models, ddp_edf.engine.optim, "
            "ddp_edf.train, ddp_edf.evaluate, ddp_edf.plot; "
            "print('mpi4py' in sys.modules, dict(os.environ) == before, threading.active_count() == threads)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.split() == ["False", "True", "True"], out.stdout + out.stderr


def test_every_module_says_what_it_is_for():
    for path in sorted(PACKAGE.rglob("*.py")):
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(PACKAGE)} has no docstring"
