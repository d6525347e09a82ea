"""The package's floors, as folders (docs/layout.md): each folder imports only the folders below it, a stage never
imports another stage, nothing below stages/ imports a stage, and no two modules import each other, directly or
through others. Imports inside functions count (they are read from the source, not from what happens to be
loaded); imports under `if TYPE_CHECKING:` are type hints, which never run, and do not."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from cotdistill.stages import STAGES
from tests.conftest import REPO

PACKAGE = REPO / "cotdistill"
# From the ground up: a folder may import its own modules and the folders before it.
FLOORS = ("core", "verify", "questions", "models", "teachers", "config", "trainers", "stages")
TOP = ("cli", "__main__", "reference")  # the command and the generated docs: may import anything


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_blocks(tree: ast.AST) -> set[int]:
    """The ids of import nodes under `if TYPE_CHECKING:`."""
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            hidden |= {id(n) for n in ast.walk(node)}
    return hidden


def imports() -> dict[str, set[str]]:
    """Each module (dotted, below cotdistill) -> the cotdistill modules it imports, anywhere in its code."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        owner = module_name(path)
        tree = ast.parse(path.read_text())
        hidden = type_checking_blocks(tree)
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cotdistill."):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                name = name.removeprefix("cotdistill.")
                if name in modules and name != owner:
                    edges[owner].add(name)
    return edges


def folder(module: str) -> str:
    return module.split(".")[0]


def stage_of(module: str) -> str | None:
    """The stage a module belongs to (stages.filter.phases -> filter); None for stages.base and the list itself."""
    parts = module.split(".")
    if parts[0] != "stages" or len(parts) < 2 or parts[1] == "base":
        return None
    return parts[1]


def test_the_map_is_read_from_every_module():
    edges = imports()
    assert "stages.filter.phases" in edges["stages.filter"]
    assert "verify.sandbox" in edges["verify.code"]  # read inside functions too
    assert "config.run" not in edges["verify.judging"]  # a type hint under TYPE_CHECKING is not an import


def test_every_module_lives_on_a_floor():
    assert {folder(m) for m in imports()} | {folder(m) for targets in imports().values() for m in targets} <= {
        *FLOORS, *TOP, ""}


def test_each_folder_imports_only_the_floors_below_it():
    edges = imports()
    up = {(a, b) for a in edges for b in edges[a] if folder(a) in FLOORS and folder(b) in FLOORS
          and FLOORS.index(folder(b)) > FLOORS.index(folder(a))}
    assert up == set()


def test_no_stage_imports_another_stage():
    edges = imports()
    crossing = {(a, b) for a in edges for b in edges[a]
                if stage_of(a) and stage_of(b) and stage_of(a) != stage_of(b)}
    assert crossing == set()
    assert {s.name for s in STAGES} == {stage_of(m) for m in edges if stage_of(m)}  # every stage is in the list


def test_nothing_below_stages_imports_a_stage():
    edges = imports()
    assert {(a, b) for a in edges for b in edges[a] if folder(a) != "stages" and folder(a) not in TOP
            and folder(b) == "stages"} == set()


def test_no_cycles():
    edges = imports()
    seen: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        seen[module] = 1
        for target in sorted(edges.get(module, ())):
            if seen.get(target) == 1:
                return path + [module, target]
            if target not in seen:
                found = visit(target, path + [module])
                if found:
                    return found
        seen[module] = 2
        return None

    for module in sorted(edges):
        if module not in seen:
            assert visit(module, []) is None


def test_the_command_line_names_no_stage():
    import re

    text = (PACKAGE / "cli.py").read_text()
    assert not [s.name for s in STAGES if re.search(rf"\b{s.name}\b", text)]


def test_no_capability_is_asked_by_a_backend_name():
    offenders = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if "backend == " in p.read_text()]
    assert offenders == []
