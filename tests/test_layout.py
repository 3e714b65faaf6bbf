"""The package graph runs one way (docs and README's layout table): sources → tracker →
exporters, the lab and the report beside them. Checked from the source, imports inside
functions included."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator

from tests.conftest import REPO

PACKAGE = REPO / "observer"
# What the measuring core may never import: the composition roots and what stands beside it.
CORE = {"dataplane", "kube", "episodes", "traffic", "values", "clock", "tasks", "config",
        "memory"}
OUTSIDE_CORE = {"lab", "cli", "agent", "export", "report", "commands", "testing"}


def unit(module: str) -> str:
    """observer.dataplane.sources -> dataplane; observer.values -> values."""
    return module.split(".")[1]


def imports() -> Iterator[tuple[str, str]]:
    """(importing unit, imported unit) for every import of one of the package's modules."""
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":
            continue  # the version string
        here = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("observer."):
                    yield unit(here), unit(name)


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for importer, imported in imports():
        if importer != imported:
            graph.setdefault(importer, set()).add(imported)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a, targets in graph.items()
                    for b in targets if reaches(b, a, {b}))
    assert cycles == []


def test_the_measuring_core_imports_nothing_that_stands_beside_it() -> None:
    wrong = sorted({(a, b) for a, b in imports() if a in CORE and b in OUTSIDE_CORE})
    assert wrong == []


def test_the_shared_values_import_nothing_of_the_package() -> None:
    assert {b for a, b in imports() if a == "values"} == set()


def top_level_imports(directory: str) -> Iterator[tuple[str, str]]:
    """(file, imported module) for every import in a top-level directory's Python files."""
    for path in (REPO / directory).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield str(path.relative_to(REPO)), node.module
                yield from ((str(path.relative_to(REPO)), f"{node.module}.{a.name}")
                            for a in node.names)
            elif isinstance(node, ast.Import):
                yield from ((str(path.relative_to(REPO)), a.name) for a in node.names)


def test_tests_and_benchmarks_share_observer_testing_not_each_other_nor_the_clis_insides(
        ) -> None:
    wrong = sorted(
        (path, module) for directory, other in (("tests", "bench"), ("bench", "tests"))
        for path, module in top_level_imports(directory)
        if module.split(".")[0] == other
        or (module.startswith("observer.cli.") and module.split(".")[2].startswith("_")))
    assert wrong == []


def test_the_picture_of_the_imports_is_the_packages_own() -> None:
    """docs/imports.dot is what scripts/imports.py draws from the source now (run it after
    changing imports: it writes the .dot and, with Graphviz, the .svg)."""
    spec = importlib.util.spec_from_file_location("imports", REPO / "scripts" / "imports.py")
    assert spec is not None
    assert spec.loader is not None
    drawing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drawing)
    assert (REPO / "docs" / "imports.dot").read_text() == drawing.dot_source()
