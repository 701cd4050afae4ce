"""Identifiers (DESIGN §3): ``<prefix>-<epoch_ms>-<6 [0-9a-z]>`` and group ids ``ag-<slug>``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from schemas import ids

NOW = datetime(2026, 6, 11, 9, 0, 0, 123000, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(now: datetime) -> int:
    return (now - EPOCH) // timedelta(milliseconds=1)


@pytest.mark.parametrize("prefix", ["task", "msg", "sys", "sess"])
def test_id_shape_comes_from_the_passed_now(prefix: str) -> None:
    made = ids.new_id(prefix, NOW)
    assert re.fullmatch(rf"{prefix}-\d{{13}}-[0-9a-z]{{6}}", made), made
    assert made.split("-")[1] == "1781168400123" == str(epoch_ms(NOW))
    assert ids.is_id(made, prefix)


def test_ids_made_at_the_same_instant_differ() -> None:
    made = {ids.new_id("task", NOW) for _ in range(50)}
    assert len(made) == 50
    assert {m.rsplit("-", 1)[0] for m in made} == {"task-1781168400123"}


def test_unknown_prefix_is_refused() -> None:
    with pytest.raises(ValueError):
        ids.new_id("job", NOW)


def test_epoch_ms_is_exact_for_every_millisecond() -> None:
    now = datetime(2004, 3, 15, 7, 56, 1, 518000, tzinfo=UTC)
    assert ids.new_id("task", now).split("-")[1] == str(epoch_ms(now)) == "1079337361518"


@pytest.mark.parametrize(
    ("text", "prefix", "expected"),
    [
        ("task-1781168400123-abc123", "task", True),
        ("sess-1781168400123-000000", "sess", True),
        ("task-1781168400123-abc123", "msg", False),  # another kind
        ("task-1781168400123-ABC123", "task", False),  # upper case
        ("task-178116840012-abc123", "task", False),  # 12 digits
        ("task-17811684001234-abc123", "task", False),  # 14 digits
        ("task-1781168400123-abc12", "task", False),  # 5 chars
        ("task-1781168400123-abc1234", "task", False),  # 7 chars
        ("task-1781168400123-abc_12", "task", False),
        ("task-1781168400123-abc123 ", "task", False),
        ("", "task", False),
        ("../../etc/passwd", "task", False),
    ],
)
def test_is_id(text: str, prefix: str, expected: bool) -> None:
    assert ids.is_id(text, prefix) is expected


def test_is_id_refuses_non_strings() -> None:
    assert ids.is_id(None, "task") is False  # type: ignore[arg-type]


def test_is_id_refuses_a_trailing_newline() -> None:
    assert ids.is_id("task-1781168400123-abc123\n", "task") is False


@pytest.mark.parametrize("name", ["demo", "Support_Bot-2", "9lives", "x" * 48, "a"])
def test_good_group_names(name: str) -> None:
    ids.check_group_name(name)
    assert ids.group_id(name) == f"ag-{name.lower()}"


def test_group_id_is_the_lower_cased_slug() -> None:
    assert ids.group_id("Support_Bot-2") == "ag-support_bot-2"


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "a.b", "", " ", "a b", " demo", "x" * 49, "-demo", "_demo", "démo", "a\\b", "..", "."],
)
def test_bad_group_names_are_refused_with_a_clear_one_line_message(name: str) -> None:
    with pytest.raises(ValueError) as info:
        ids.check_group_name(name)
    message = str(info.value)
    assert "invalid group name" in message and "\n" not in message
    with pytest.raises(ValueError):
        ids.group_id(name)


def test_group_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError):
        ids.check_group_name("demo\n")
