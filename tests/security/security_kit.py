"""What the security-boundary tests (tests/security/, issues 7 and 11) share: the fixed instant, the secret whose
leak they look for, and the product's own source files (what the static checks read)."""

from __future__ import annotations

from pathlib import Path

from kit import utc

T0 = utc("2026-06-11T13:00:00")
SECRET = "sk-ant-security-probe-never-leaks"
ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("host", "agent_runner", "schemas")


def product_files() -> list[Path]:
    """Every Python file of the product's packages (host, agent_runner, schemas)."""
    return sorted(p for package in PRODUCT for p in (ROOT / package).rglob("*.py"))
