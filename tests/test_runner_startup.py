"""A runner starts light (issue 14: its start-up is what bounds a burst of new sessions): the mock-model runner's
imports hold no pydantic, MCP, Anthropic SDK or HTTP client (not even the standard library's, which xml.sax.saxutils
brought with email); tools load them with their first call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("pydantic", "mcp", "anthropic", "httpx", "httpx2", "docker", "yaml", "schemas.messages",
         "agent_runner.tool_specs", "agent_runner.mcp_server", "agent_runner.anthropic_provider", "http.client",
         "urllib.request", "email.parser")


def loaded(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.split()


def test_a_runner_process_imports_nothing_heavy() -> None:
    assert loaded("import agent_runner.__main__") == []


def test_the_first_tool_call_loads_what_tools_need() -> None:
    # The counter-check: the probe sees a heavy import when there is one.
    assert "pydantic" in loaded("import agent_runner.__main__, agent_runner.tool_specs")
