"""Bad input, property-based (issue 7): group names through ``ncl groups create``. Any name makes exactly one
folder directly inside data/groups, or is exit 1 with one line on stderr and no folder at all.

Derandomized settings and the shared strategies: tests/property_kit.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from property_kit import observe, props

group_names = st.sampled_from(["..", ".", "../evil", "a/b", "/abs", "ok-name", "Ok_Name", "a" * 48, "a" * 49, "-x",
                               "_x", "x\x00y", "demo", "DEMO", "ag-x", "x\n", "x ", "é", "a.b", "~root", "$(id)"]) \
    | st.text(max_size=60) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,50}", fullmatch=True)


@props(150)
@given(name=group_names)
def test_group_names_make_a_folder_inside_data_groups_or_one_clear_line(ncl: Callable[..., Any], cli_env: Any,
                                                                        name: str) -> None:
    groups_dir = cli_env.data_dir / "groups"
    before = sorted(p.name for p in groups_dir.iterdir()) if groups_dir.exists() else []
    result = ncl("groups", "create", "--json", "--", name)
    observe(f"exit {result.code}")
    assert "Traceback" not in result.out + result.err
    if result.code != 0:
        assert result.code == 1 and len(result.err_lines) == 1 and "internal error" not in result.err, result
        assert (sorted(p.name for p in groups_dir.iterdir()) if groups_dir.exists() else []) == before
        return
    folder = groups_dir / result.json()["id"]
    assert folder.is_dir() and folder.resolve().parent == groups_dir.resolve()
    assert sorted(p.name for p in groups_dir.iterdir()) == sorted([*before, folder.name])
