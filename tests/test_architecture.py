"""Issue 12's boundaries, checked on the source: SQL and sqlite3 live only in the storage layers (host/store for
the host, agent_runner/store.py for the runner). The package layers are import-linter's contract (pyproject.toml,
run by CI as ``lint-imports``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|WITH|CREATE|DROP|ALTER|PRAGMA|BEGIN|COMMIT|ROLLBACK)\b")
STORAGE = {"host": ["host/store/"], "agent_runner": ["agent_runner/store.py"]}


def storage_leaks(source: str) -> list[str]:
    """What in this module belongs in a storage layer: an ``import sqlite3`` or a string that starts as SQL."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"line {node.lineno}: imports sqlite3" for name in names if name.split(".")[0] == "sqlite3"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
            found.append(f"line {node.lineno}: SQL {node.value.strip()[:40]!r}")
    return found


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py")
                  if not any(p.relative_to(ROOT).as_posix().startswith(s) for s in STORAGE[package]))


@pytest.mark.parametrize("package", sorted(STORAGE))
def test_sql_and_sqlite3_live_only_in_the_storage_layer(package: str) -> None:
    leaks = {p.relative_to(ROOT).as_posix(): found for p in _modules(package)
             if (found := storage_leaks(p.read_text()))}
    assert leaks == {}


def test_the_check_finds_what_it_looks_for() -> None:
    source = 'import sqlite3\nfrom sqlite3 import Row\nQ = "SELECT 1"\nF = f"UPDATE t SET x = {1}"\nOK = "Selected"\n'
    assert storage_leaks(source) == ["line 1: imports sqlite3", "line 2: imports sqlite3",
                                     "line 3: SQL 'SELECT 1'", "line 4: SQL 'UPDATE t SET x ='"]
