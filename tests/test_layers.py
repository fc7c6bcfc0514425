"""The package's shape, read from its source (ast): no import cycle anywhere in
labkit/ (imports inside functions included), every import goes down the layers
of the README's "Where to start reading", and functions fit a screen."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "labkit"

# Bottom up: a module may import from its own layer and from those before it.
LAYERS = ["settings", "memory", "nic", "graph", "run", "(top)", "bench", "course", "cli", "__main__"]
MAX_LINES = 80            # a function fits a screen


def modules(root=ROOT):
    """{module name: path} of every module under root (a package is its __init__)."""
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports_of(name, path, known):
    """The labkit modules `name` imports, anywhere in its source (lazy imports too)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + is_pkg]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:      # `from labkit.nic import rss` imports the module labkit.nic.rss
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph(root=ROOT):
    known = modules(root)
    return {m: imports_of(m, p, known) for m, p in known.items()}


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                out.append(sorted(comp))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer(module):
    parts = module.split(".")
    return "(top)" if len(parts) == 1 else parts[1]


def test_no_import_cycle_anywhere():
    assert cycles(graph()) == []


def test_imports_go_down_the_layers():
    wrong = [(m, t) for m, ts in graph().items() for t in ts
             if LAYERS.index(layer(t)) > LAYERS.index(layer(m))]
    assert wrong == [], "an import reaches up a layer: " + ", ".join(f"{m} -> {t}" for m, t in wrong)


def test_every_module_has_a_layer():
    assert {layer(m) for m in modules()} <= set(LAYERS)


def test_the_checks_see_a_cycle_and_a_lazy_import(tmp_path):
    """The checks themselves: a cycle through an import inside a function is found."""
    pkg = tmp_path / "labkit"
    (pkg / "run").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "run" / "__init__.py").write_text("")
    (pkg / "run" / "a.py").write_text("from . import b\n")
    (pkg / "run" / "b.py").write_text("def f():\n    from labkit.run.a import x\n")
    (pkg / "memory.py").write_text("from labkit.run import a\n")
    g = graph(pkg)
    assert cycles(g) == [["labkit.run.a", "labkit.run.b"]]
    assert g["labkit.memory"] == {"labkit.run.a"} and layer("labkit.memory") == "memory"


def long_functions(root=ROOT):
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_functions_fit_a_screen():
    assert long_functions() == []


def test_a_long_function_is_seen(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * MAX_LINES)
    assert long_functions(tmp_path) == [f"m.py:1 f ({MAX_LINES + 1} lines)"]
