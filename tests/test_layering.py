"""Arrows point down: costmodel <- profiler <- reports <- reports.cli, and no cycle between modules.

Every import of every module counts, at module level or inside a function (a lazy import is still
an arrow). ``from pkg import name`` is an arrow to ``pkg.name`` when that is a module, else to
``pkg`` itself: a package's ``__init__`` that re-exports from its modules counts as the package, so
a module importing a name back from its own package's ``__init__`` closes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("costmodel", "profiler", "reports")
LAYERS = ("costmodel", "profiler", "reports", "reports.cli")  # bottom to top

# Entry points run the CLI and sit above every layer: `python -m costmodel` (costmodel/__main__.py)
# hands over to reports.cli. Nothing may import them (that would be an arrow up to the top).
ENTRY_POINTS = ("costmodel.__main__",)

# No cycle is allowed (reports.latency <-> reports.sweep was the last one; reports/grid.py broke it).
KNOWN_CYCLES: list[list[str]] = []


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (a package is its __init__)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules) -> set[str]:
    """The project modules that module ``name`` (file ``path``) imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:  # import a.b.c: the deepest project module named
                parts = alias.name.split(".")
                found |= {next((".".join(parts[:i]) for i in range(len(parts), 0, -1)
                                if ".".join(parts[:i]) in modules), None)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..y import z
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base if base in modules else None)
    found.discard(None)
    found.discard(name)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    if module in ENTRY_POINTS:
        return len(LAYERS)
    return max(i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + "."))


def upward_imports(graph) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits in a higher layer."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_runs_up_a_layer():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    found = cycles(import_graph())
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"{gone} no longer a cycle: delete it from KNOWN_CYCLES"
    assert [c for c in found if c not in KNOWN_CYCLES] == []


def test_the_walk_sees_lazy_imports_and_the_cli_on_top():
    graph = import_graph()
    # lazy, inside command functions: the CLI runs the reference model and draws plots
    assert {"profiler.runner", "reports.plots", "reports.sweep"} <= set().union(*(
        graph[m] for m in graph if m.startswith("reports.cli")))
    assert "reports.cli.report" in graph["reports.cli"]  # from . import report
    assert layer_of("reports.cli.common") == 3 and layer_of("reports.text") == 2 and layer_of("costmodel") == 0


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_an_upward_lazy_import_and_a_cycle_through_a_reexport_are_caught(tmp_path):
    root = _tree(tmp_path, {
        "costmodel/__init__.py": "from .a import f\n",  # re-exports a's f
        "costmodel/a.py": "def f():\n    from reports.x import g  # upward, inside a function\n",
        "costmodel/b.py": "from costmodel import f\n",  # through the package: b -> costmodel -> a
        "profiler/__init__.py": "",
        "reports/__init__.py": "",
        "reports/x.py": "import costmodel.b\n\ndef g():\n    from . import y\n",
        "reports/y.py": "from .x import g\n",
        "reports/cli/__init__.py": "from ..x import g\n",
    })
    graph = import_graph(root)
    assert graph["costmodel.a"] == {"reports.x"}
    assert graph["costmodel.b"] == {"costmodel"}
    assert graph["reports.cli"] == {"reports.x"}
    assert upward_imports(graph) == [("costmodel.a", "reports.x")]
    # costmodel -> a -> reports.x -> costmodel.b -> costmodel; reports.x <-> reports.y
    assert cycles(graph) == [["costmodel", "costmodel.a", "costmodel.b", "reports.x", "reports.y"]]


def test_python_dash_m_costmodel_is_the_cli_and_an_entry_point_only():
    import subprocess
    import sys

    graph = import_graph()
    assert graph["costmodel.__main__"] == {"reports.cli"}
    assert not [a for a, targets in graph.items() if "costmodel.__main__" in targets]
    r = subprocess.run([sys.executable, "-m", "costmodel", "report", "gpt2", "--format", "json"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert '"num_params": 124439808' in r.stdout  # GPT-2 small, the published 124,439,808
    r = subprocess.run([sys.executable, "-m", "costmodel", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("Usage: costmodel "), r.stdout[:80]
