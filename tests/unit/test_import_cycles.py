"""No module of Kumo's packages imports in a circle.

The import graph is built from the source with `ast`: every `import` and `from ... import`
statement counts, at module level and inside functions alike, so a deferred import that only
dodges a cycle at run time is still a cycle here. An edge goes to the module a statement names
(`from pkg import mod` names pkg.mod when that is a module, else pkg itself); the packages a
dotted name passes through are not edges, so a package __init__ re-exporting its submodules is
not a cycle by itself. Imports of anything outside the four packages are ignored.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("controller", "agent", "lab", "images")


def _modules() -> dict[str, Path]:
    """Module name -> source file, for every .py file of the packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The known modules one import statement names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    assert isinstance(node, ast.ImportFrom)
    if node.level:  # relative: resolved against the importing module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        if sub in known:
            out.add(sub)
        elif source in known:
            out.add(source)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= _targets(node, name, is_package, known) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle per strongly connected component with more than one module
    (Tarjan's algorithm, iterative), each as the path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_path_through(graph, set(c), c[0]) for c in components]


def _path_through(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """A shortest cycle from start back to start inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:  # closed: walk the parents back to start
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"{start} is in no cycle")


def test_no_module_imports_in_a_circle():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (one per group of modules in a circle):\n" + "\n".join(
        " -> ".join(c) for c in found)


def test_the_checker_sees_cycles_deferred_imports_included():
    # Control: a graph with a function-level import closing a circle is reported, by name.
    src = {"controller.a": "from controller import b\n",
           "controller.b": "def f():\n    from controller.a import x\n"}
    known = set(src)
    graph = {m: set() for m in src}
    for name, text in src.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= _targets(node, name, False, known)
    assert cycles(graph) == [["controller.a", "controller.b", "controller.a"]]
    assert cycles({"x": {"y"}, "y": set()}) == []
