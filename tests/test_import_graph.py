"""The packages' import graph has no cycle (issue 24, item 2).

DESIGN.md: "Arrows point down". A cycle between two modules works today only because one
side imports the other inside a function, and breaks the day someone hoists that import;
it also means neither module can be read or tested without the other. This test builds the
graph of every module of ``rankkit`` and ``rankkit_ext`` from the source (the AST of each
``.py`` file, so imports inside functions count, ``if TYPE_CHECKING:`` blocks do not) and
asserts it is acyclic, naming the modules of any cycle it finds.

Edges go from a module to the module an import names: ``from a.b import c`` is an edge to
``a.b.c`` when that is a module of the packages, else to ``a.b``. Importing ``a.b`` also
runs ``a/__init__.py``, but that implicit edge to the parent package is not counted: every
package that re-exports its submodules would otherwise be a "cycle" with each of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rankkit", "rankkit_ext")


def module_files(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under the given packages."""
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside ``if TYPE_CHECKING:`` bodies
    (their ``else:`` branch does run and is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _owner(name: str, modules) -> str | None:
    """The longest prefix of dotted ``name`` that is one of ``modules``."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module → set of modules (of ``files``) it imports, self-edges dropped."""
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:  # ``from ..x import y``: level 1 is the module's package
                    parts = package.split(".")
                    if node.level - 1 >= len(parts):
                        raise ValueError(f"{path}: relative import beyond the top package")
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module
                # ``from a import b``: b may be a submodule or a name defined in a
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            for t in targets:
                owner = _owner(t, files)
                if owner is not None and owner != mod:
                    graph[mod].add(owner)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative), each
    sorted, plus any node with an edge to itself; an empty list means acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in graph.get(v, ()):
                    out.append(sorted(comp))
    return out


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One closed path ``a → b → … → a`` inside a strongly connected component, for the
    failure message (the component lists the modules; the path shows the arrows to cut)."""
    comp, start = set(component), component[0]
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:  # breadth first from start, inside the component, until an edge back
        v = queue.pop(0)
        succ = sorted(graph[v] & comp)
        if start in succ:
            path = [v]
            while parent[path[-1]] is not None:
                path.append(parent[path[-1]])
            return path[::-1] + [start]
        for w in succ:
            if w not in parent:
                parent[w] = v
                queue.append(w)
    raise ValueError(f"{component} is not a strongly connected component of the graph")


# ---------------------------------------------------------------------------------------
# the cycle finder itself: it must be able to fail
# ---------------------------------------------------------------------------------------
def test_find_cycles_on_synthetic_graphs():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycles(acyclic) == []
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(find_cycles(cyclic)) == [["a", "b", "c"], ["d", "e"]]
    path = one_cycle(cyclic, ["a", "b", "c"])
    assert path[0] == path[-1] == "a" and set(path) == {"a", "b", "c"}
    assert all(path[i + 1] in cyclic[path[i]] for i in range(len(path) - 1))
    assert find_cycles({"a": {"a"}}) == [["a"]]


def test_import_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..top import y\n    return y\nx = 1\n")
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.other import z\n"
        "from pkg.sub import leaf\ny = 2\n")
    (pkg / "other.py").write_text("import pkg.top\n")
    g = import_graph(module_files(tmp_path, ("pkg",)))
    assert g["pkg.sub"] == {"pkg.sub.leaf"}
    assert g["pkg.sub.leaf"] == {"pkg.top"}            # function-level, relative (level 2)
    assert g["pkg.top"] == {"pkg.sub.leaf"}            # TYPE_CHECKING import ignored
    assert g["pkg.other"] == {"pkg.top"}
    assert find_cycles(g) == [["pkg.sub.leaf", "pkg.top"]]


# ---------------------------------------------------------------------------------------
# the packages
# ---------------------------------------------------------------------------------------
def test_package_modules_are_found():
    files = module_files()
    # guard against a silent empty graph (a moved ROOT would make the real test vacuous)
    for m in ("rankkit", "rankkit.trie", "rankkit_ext.guided", "rankkit_ext.tsmc.engine",
              "rankkit_ext.lm", "rankkit_ext.metrics"):
        assert m in files
    g = import_graph(files)
    # the arrows issue 24 fixed: guided decoding uses the SMC engine, both use the candidate
    # step below them; the bundled LM's report uses the metrics, which use the BOS module
    assert "rankkit_ext.tsmc.engine" in g["rankkit_ext.guided"]
    assert "rankkit_ext._candidates" in g["rankkit_ext.tsmc.proposals"]
    assert "rankkit_ext.metrics" in g["rankkit_ext.lm"]
    assert "rankkit_ext._bos" in g["rankkit_ext.metrics"]


@pytest.mark.parametrize("packages", [PACKAGES])
def test_no_import_cycle(packages):
    graph = import_graph(module_files(ROOT, packages))
    cycles = find_cycles(graph)
    msg = "\n".join(f"cycle among {', '.join(c)}: " + " → ".join(one_cycle(graph, c))
                    for c in cycles)
    assert not cycles, "import cycles (cut one arrow of each; DESIGN.md: arrows point down):\n" + msg
