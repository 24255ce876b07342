"""The import graph, read from the source with `ast` (nothing is imported): imports inside functions count too.

- `model/` has no import circles (a lazy import inside a function is still a circle: it only hides it);
- dependencies point one way, `assistant → retrieval → model`: `model` imports neither `retrieval` nor
  `assistant`, and `retrieval` does not import `assistant` (docs/architecture.md).

`IMPORT_GRAPH_ROOT=/path/to/checkout pytest tests/test_import_graph.py` checks another checkout's code.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("IMPORT_GRAPH_ROOT") or Path(__file__).resolve().parents[1])
PACKAGES = ("model", "retrieval", "assistant")


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` (a package's __init__ is the package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(path: Path, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules `module` imports, anywhere in the file (top level, functions, classes, if-blocks).

    `from a.b import c` counts as importing `a.b.c` when that is a module in `known`, else `a.b`.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """module -> every module or package (project or not) it imports."""
    files = {name: path for package in packages for name, path in module_names(root, package).items()}
    return {name: imports_of(path, name, path.name == "__init__.py", set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def within(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """The part of the graph inside `package`: its modules and the imports between them."""
    inside = {m for m in graph if m == package or m.startswith(package + ".")}
    return {m: {t for t in graph[m] if t in inside and t != m} for m in inside}


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports against `assistant → retrieval → model`."""
    forbidden = {"model": ("retrieval", "assistant"), "retrieval": ("assistant",)}
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target.split(".")[0] in forbidden.get(module.split(".")[0], ()):
                out.append(f"{module} imports {target}")
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_the_graph_is_read(graph):
    """Guard against a reader that finds nothing: known imports, module-level and inside a function."""
    assert "model.decoder" in graph["model.weights"]            # module level
    assert "model.encoder" in graph["assistant.pipeline"]       # inside _load_encoder
    assert "model.cpu_kernels" in graph["model.quant"]          # `from model import cpu_kernels`


def test_model_has_no_import_cycles(graph):
    found = cycles(within(graph, "model"))
    assert not found, f"import circles in model/ (function-level imports count): {found}"


def test_dependencies_point_one_way(graph):
    violations = layering_violations(graph)
    assert not violations, violations


def test_the_checks_catch_a_function_level_circle_and_a_layering_breach(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "model" / "a.py").write_text("from model.b import g\n")
    (tmp_path / "model" / "b.py").write_text("def g():\n    from . import a\n    return a\n")
    (tmp_path / "model" / "c.py").write_text("def h():\n    import retrieval.store\n")
    found = import_graph(tmp_path, ("model",))
    assert cycles(within(found, "model")) == [["model.a", "model.b"]]
    assert layering_violations(found) == ["model.c imports retrieval.store"]
