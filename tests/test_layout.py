"""The package's floors (README, Layout): a stage never imports another stage, a lower module never imports a
stage, and no two top-level modules import each other. Imports inside functions count: they are read from the
source, not from what happens to be loaded."""

from __future__ import annotations

import ast
from collections import defaultdict

from cotdistill.cli import STAGES
from tests.conftest import REPO

PACKAGE = REPO / "cotdistill"
TOP = {"cli", "__main__"}  # may import anything


def imports_between_modules() -> dict[str, set[str]]:
    """Top-level module (or package) -> the other top-level modules it imports, anywhere in its code."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        owner = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "cotdistill" and len(parts) > 1 and parts[1] != owner:
                    edges[owner].add(parts[1])
    return edges


def test_the_map_is_read_from_every_module():
    edges = imports_between_modules()
    assert "generate" in edges["cli"] and "judging" in edges["generate"]  # the reader sees imports in functions


def test_no_stage_imports_another_stage():
    edges = imports_between_modules()
    assert {(a, b) for a in STAGES for b in edges[a] if b in STAGES} == set()


def test_no_lower_module_imports_a_stage():
    edges = imports_between_modules()
    lower = set(edges) - set(STAGES) - TOP
    assert {(a, b) for a in lower for b in edges[a] if b in STAGES} == set()


def test_no_two_modules_import_each_other():
    edges = imports_between_modules()
    assert {tuple(sorted((a, b))) for a in list(edges) for b in edges[a] if a in edges.get(b, ())} == set()
