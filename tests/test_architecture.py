"""The layout's rules (docs/ARCHITECTURE.md), read from the source: rooms import only the rooms
below them, no import circles, no import hidden in a function but of optional heavy
dependencies, files and functions short enough to read at once."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "napari_unet"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60
# Imported where they are used: optional extras, the GUI toolkit napari loads itself, and
# modules that cost seconds and are needed by one command only.
LAZY_ALLOWED = ("onnx", "onnxruntime", "openvino", "bioimageio", "tqdm", "napari", "magicgui",
                "zarr", "dask", "ome_zarr", "distributed",  # the [zarr] extra
                "torch.nn.parallel", "torch.optim.swa_utils", "torch.distributed.run",
                # stops a run's process tree; each use keeps working (less thoroughly) without it
                "psutil")
# The GUI process never imports torch at startup (training runs in a child): the Train widget
# asks torch for the CUDA devices only when its form is built.
LAZY_ALLOWED_IN = {("widgets/train_form.py", "torch")}
# engine rooms -> the engine rooms they must not import (data flows one way)
FORBIDDEN = {
    "data": ("training", "prediction", "export", "evaluation", "benchmark"),
    "export": ("training", "prediction", "evaluation", "benchmark"),
    "prediction": ("training", "evaluation", "benchmark"),
    "training": ("evaluation", "benchmark"),
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text())


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, tree: ast.Module, top_level: bool):
    """(imported module, line) of the module-level (or function-level) imports."""
    is_package = path.name == "__init__.py"
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef,
                                                             ast.AsyncFunctionDef))]
    inside = {id(sub) for f in functions for sub in ast.walk(f) if sub is not f}
    for node in ast.walk(tree):
        if (id(node) in inside) == top_level:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node, is_package)
            yield target, node.lineno
            for alias in node.names:  # `from package import submodule`
                yield f"{target}.{alias.name}", node.lineno


def _graph():
    modules = {name: (path, tree) for name, path, tree in _modules()}
    edges = {}
    for name, (path, tree) in modules.items():
        edges[name] = {target for target, _ in _imports(name, path, tree, top_level=True)
                       if target in modules and target != name}
    return edges


def test_no_file_is_too_long():
    long = [f"{path.relative_to(PACKAGE.parent)} ({n})" for _, path, _ in _modules()
            if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_too_long():
    long = []
    for _, path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.name} ({lines})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_imports_inside_functions_are_only_optional_heavy_dependencies():
    hidden = []
    for name, path, tree in _modules():
        for target, line in _imports(name, path, tree, top_level=False):
            where = str(path.relative_to(PACKAGE))
            if not target.startswith(LAZY_ALLOWED) and (where, target) not in LAZY_ALLOWED_IN:
                hidden.append(f"{path.relative_to(PACKAGE.parent)}:{line} {target}")
    hidden = sorted(set(hidden))
    assert not hidden, f"imports inside functions: {hidden}"


def test_no_import_circles():
    edges = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            # a package and the submodules its __init__ names are not a circle of code
            real = [m for m in component if not any(o.startswith(m + ".") for o in component)]
            if len(real) > 1:
                circles.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_engine_rooms_import_only_downwards(room):
    prefix = f"napari_unet.engine.{room}"
    wrong = []
    for name, targets in _graph().items():
        if name == prefix or name.startswith(prefix + "."):
            for target in targets:
                for other in FORBIDDEN[room]:
                    if target == f"napari_unet.engine.{other}" or target.startswith(
                            f"napari_unet.engine.{other}."):
                        wrong.append(f"{name} -> {target}")
    assert not wrong, f"{room} imports a room above it: {wrong}"


# import name -> the distribution pyproject.toml must list (where they differ)
DISTRIBUTIONS = {"skimage": "scikit-image", "yaml": "pyyaml", "PIL": "pillow"}
# installed by the extras or by napari itself, whose plugin this is
NOT_REQUIRED = {"napari", "onnx", "onnxruntime", "openvino", "bioimageio", "zarr", "dask",
                "ome_zarr", "distributed", "napari_unet"}


def test_every_module_the_package_needs_is_a_declared_dependency():
    """A fresh `pip install .` runs the CLI (a missing tqdm once broke every command there)."""
    import re
    import sys

    text = (PACKAGE.parent / "pyproject.toml").read_text()
    block = text.split("\ndependencies = [", 1)[1].split("\n]", 1)[0]
    declared = {re.match(r'\s*"([A-Za-z0-9_.-]+)', line).group(1).lower()
                for line in block.splitlines() if line.strip().startswith('"')}
    needed = set()
    for name, path, tree in _modules():
        for top_level in (True, False):
            for target, _ in _imports(name, path, tree, top_level=top_level):
                root = target.split(".")[0]
                if root and root not in sys.stdlib_module_names and root not in NOT_REQUIRED:
                    needed.add(DISTRIBUTIONS.get(root, root).lower())
    assert needed - declared == set(), f"imported, not in pyproject's dependencies: {needed - declared}"
