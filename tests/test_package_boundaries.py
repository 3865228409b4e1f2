"""The package map of DESIGN.md holds: who may import whom, and no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"tufota_core", "signing", "repo_server", "staging", "device_agent", "tufota_cli"}
ALLOWED = {
    "tufota_core": set(),
    "signing": {"tufota_core"},
    "staging": {"tufota_core"},
    "device_agent": {"tufota_core"},
    "repo_server": {"tufota_core", "signing", "staging"},
    "tufota_cli": OURS - {"tufota_cli"},
}
# Third-party imports that are off limits per package (the agent's small dependency set).
FORBIDDEN_THIRD_PARTY = {
    "tufota_core": {"requests", "boto3", "fastapi", "uvicorn", "sqlite3"},
    "device_agent": {"boto3", "fastapi", "uvicorn", "starlette", "prometheus_client"},
    "staging": {"fastapi", "uvicorn"},
}


def imports_of(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_design_allows(package: str) -> None:
    used = imports_of(package) & OURS - {package}
    assert used <= ALLOWED[package], f"{package} imports {sorted(used - ALLOWED[package])}"
    assert not imports_of(package) & FORBIDDEN_THIRD_PARTY.get(package, set())


def test_no_import_cycles_between_packages() -> None:
    graph = {p: imports_of(p) & OURS - {p} for p in OURS}
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        assert node not in visiting, " -> ".join([*trail, node])
        if node in done:
            return
        visiting.add(node)
        for nxt in graph[node]:
            visit(nxt, [*trail, node])
        visiting.discard(node)
        done.add(node)

    for package in sorted(OURS):
        visit(package, [])


def test_nothing_imports_the_cli() -> None:
    for package in OURS - {"tufota_cli"}:
        assert "tufota_cli" not in imports_of(package)
