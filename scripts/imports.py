"""Draw the package's imports: ``docs/imports.dot`` (Graphviz source; tests/test_layout.py keeps
it true) and, where Graphviz's ``dot`` is installed, ``docs/imports.svg`` from it.

    .venv/bin/python scripts/imports.py

One node per part of the package (a subpackage, or a top-level module), an edge where one
imports the other (imports inside functions included), grouped as docs/layout.md describes
them: the measuring core, the agent around it, and what stands beside it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "observer"
DOT = REPO / "docs" / "imports.dot"
SVG = REPO / "docs" / "imports.svg"
GROUPS = {
    "the measuring core": ("kube", "episodes", "dataplane", "dataplane.cilium", "traffic"),
    "the agent": ("agent", "export", "commands", "cli"),
    "beside it": ("report", "lab", "testing"),
}
# Imported from everywhere and importing nothing of the package: one box, no edges.
SHARED = ("values", "clock", "config", "tasks", "memory", "logs")


def part(module: str) -> str:
    """observer.dataplane.cilium.maps -> dataplane.cilium; observer.episodes.tracker ->
    episodes; observer.values -> values."""
    parts = module.split(".")[1:]
    if parts[:2] == ["dataplane", "cilium"]:
        return "dataplane.cilium"
    return parts[0] if parts else "observer"


def _module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def edges() -> set[tuple[str, str]]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        here = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if here == "observer.__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                     if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if (name.startswith("observer.") and _module(name)
                        and part(name) not in (part(here), *SHARED)):
                    found.add((part(here), part(name)))
    return found


def dot_source() -> str:
    lines = ["// Made by scripts/imports.py: do not edit.", "digraph imports {",
             '  rankdir=LR; node [shape=box, fontname="DejaVu Sans", fontsize=11];']
    for index, (label, members) in enumerate(GROUPS.items()):
        lines.append(f'  subgraph cluster_{index} {{ label="{label}"; '
                     + " ".join(f'"{m}";' for m in members) + " }")
    lines.append('  shared [label="shared by all: ' + ", ".join(SHARED)
                 + '", shape=note];')
    lines += [f'  "{a}" -> "{b}";' for a, b in sorted(edges()) if a not in SHARED]
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    DOT.write_text(dot_source())
    dot = shutil.which("dot")
    if dot is None:
        print(f"wrote {DOT}; Graphviz's dot is not installed: no {SVG.name}", file=sys.stderr)
        return 0
    subprocess.run([dot, "-Tsvg", str(DOT), "-o", str(SVG)], check=True, timeout=60)
    print(f"wrote {DOT} and {SVG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
