"""The import structure of src/nsrep: every arrow runs down the layers of docs/architecture.md, none closes a
cycle (function-level imports count: they must not hide one), and no package imports another's private names.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Bottom to top (docs/architecture.md, "Layers"). A module may import its own layer (without a cycle) and any
# layer below; the package root and the old public import paths sit on top: they only re-export.
LAYERS = (
    ("nsrep.validation", "nsrep.fileio", "nsrep.report", "nsrep.plotting", "nsrep.stats"),
    ("nsrep.nn",),
    ("nsrep.reparam", "nsrep.inspection", "nsrep.models", "nsrep.convert", "nsrep.data"),
    ("nsrep.storage",),
    ("nsrep.train", "nsrep.experiments", "nsrep.analysis", "nsrep.probe", "nsrep.deploy", "nsrep.info", "nsrep.tasks"),
    ("nsrep.cli",),
    ("nsrep", "nsrep.export", "nsrep.dense"),
)


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(src: Path = SRC) -> dict[str, set[tuple[str, str]]]:
    """``{module: {(imported nsrep module, imported name or "")}}``, function-level imports included."""
    names = modules(src)
    graph: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for module, path in names.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [(alias.name, "") for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                # "from package import module" names a module; "from module import name" a name in it
                targets = [
                    (f"{base}.{a.name}", "") if f"{base}.{a.name}" in names else (base, a.name) for a in node.names
                ]
            else:
                continue
            for target, name in targets:
                if target == "nsrep" or target.startswith("nsrep."):
                    while target not in names:  # a name imported from a package's __init__
                        target = target.rpartition(".")[0]
                    if target != module:
                        graph[module].add((target, name))
    return graph


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest entry that is ``module`` or a package holding it."""
    matches = [
        (len(entry), index)
        for index, entries in enumerate(LAYERS)
        for entry in entries
        if module == entry or (entry != "nsrep" and module.startswith(entry + "."))
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py LAYERS; add it where it belongs")
    return max(matches)[1]


def upward_arrows(graph: dict[str, set[tuple[str, str]]]) -> list[str]:
    return sorted(
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in graph.items()
        for b, _ in targets
        if layer_of(b) > layer_of(a)
    )


def cycles(graph: dict[str, set[tuple[str, str]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    edges = {a: sorted({b for b, _ in targets}) for a, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def packages(graph: dict[str, set[tuple[str, str]]]) -> dict[str, set[tuple[str, str]]]:
    """The graph between top-level packages (``nsrep.train``, ``nsrep.experiments``, ...)."""
    collapsed: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for a, targets in graph.items():
        for b, _ in targets:
            if _top(a) != _top(b):
                collapsed[_top(a)].add((_top(b), ""))
    return collapsed


def private_imports(graph: dict[str, set[tuple[str, str]]]) -> list[str]:
    """Imports of an underscore name from another top-level package (a package's own modules may share them)."""
    return sorted(
        f"{a} imports {name} from {b}"
        for a, targets in graph.items()
        for b, name in targets
        if name.startswith("_") and not name.startswith("__") and _top(a) != _top(b)
    )


def _top(module: str) -> str:
    return ".".join(module.split(".")[:2])


@pytest.fixture(scope="module")
def src_imports() -> dict[str, set[tuple[str, str]]]:
    return imports()


def test_every_import_runs_down_the_layers(src_imports):
    assert upward_arrows(src_imports) == []


def test_no_import_closes_a_cycle(src_imports):
    assert cycles(src_imports) == []


def test_no_two_packages_import_each_other(src_imports):
    assert cycles(packages(src_imports)) == []


def test_no_package_imports_another_packages_private_names(src_imports):
    assert private_imports(src_imports) == []


def test_the_checks_see_an_upward_arrow_a_cycle_and_a_private_import(tmp_path):
    package = tmp_path / "nsrep"
    (package / "nn").mkdir(parents=True)
    (package / "train").mkdir()
    (package / "__init__.py").write_text("")
    (package / "nn" / "__init__.py").write_text("")
    (package / "train" / "__init__.py").write_text("")
    # nn/a.py reaches up into train/ inside a function (the import that hides a cycle), train/b.py imports it back
    (package / "nn" / "a.py").write_text("def f():\n    from nsrep.train.b import g\n    return g\n")
    (package / "train" / "b.py").write_text("from nsrep.nn.a import f, _private\n\ng = f\n")
    graph = imports(tmp_path)
    assert upward_arrows(graph) == ["nsrep.nn.a (layer 1) imports nsrep.train.b (layer 4)"]
    assert cycles(graph) == [["nsrep.nn.a", "nsrep.train.b"]]
    assert cycles(packages(graph)) == [["nsrep.nn", "nsrep.train"]]
    assert private_imports(graph) == ["nsrep.train.b imports _private from nsrep.nn.a"]
    with pytest.raises(AssertionError, match=r"nsrep\.elsewhere is in no layer"):
        layer_of("nsrep.elsewhere")
