"""The runtime packages never import the harness: ``bench`` (benchmarks, their synthetic world) and the
tests' helpers stay outside what the services and the trainer ship (docs/architecture.md, "Rooms")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ("services", "protos", "contract", "gkc", "ranker", "trainer")
HARNESS = {"bench", "tests", "loadtests"}


def imported_roots(path: Path) -> set[str]:
    """The top-level package of every import in ``path``, at any depth (function-level imports too)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", RUNTIME)
def test_runtime_packages_never_import_the_harness(package: str) -> None:
    found = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & HARNESS)
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_the_check_sees_a_function_level_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from bench import ranker_world\n    import tests.support\n")
    assert imported_roots(module) == {"bench", "tests"}
