"""What the property-based bad-input tests (tests/test_properties_*.py, issue 7) share: the settings that make every
property derandomized, the checks an outcome must pass (a one-line error, strict JSON, an observed branch), and the
strategies several of them draw from (JSON values, cron texts, ISO times).

Every property runs derandomized (the same examples on every machine and every run) with a modest number of
examples. Where a property holds only on part of its input space today, the part where it breaks is pinned by a
concrete ``xfail(strict=True, reason="BUG: …")`` test right after it, so fixing the bug turns that test red until
its mark is removed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from kit import utc

from schemas import cron

T0 = utc("2026-06-11T13:00:00")  # Thursday 09:00 in New York
ZONE = "America/New_York"
ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Apia"]


def props(max_examples: int) -> Callable[[Any], Any]:
    """Deterministic examples, no deadline (real files and sockets), fixtures shared across examples allowed."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


def one_line(message: str) -> None:
    assert message.strip(), "an empty error message"
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    assert "Traceback" not in message


def observe(outcome: str) -> None:
    """Count an outcome for ``--hypothesis-show-statistics`` (so one can see both branches are exercised)."""
    if currently_in_test_context():
        event(outcome)


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON (sqlite3's json functions and most parsers refuse)."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# --- strategies ---------------------------------------------------------------------------------------------------

# Finite JSON data (NaN and Infinity have tests of their own below).
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
no_nul = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=16)

CRON_TOKENS = ["*", "0", "5", "59", "60", "23", "24", "1-5", "5-1", "3-3", "*/0", "*/1", "*/15", "1-31/2", "jan",
               "mon-fri", "sun", "7", "L", "?", "H", "1,2", "*,5", "a", "", "-1", "007", "1-", "/5", "*/60", "feb",
               "31", "29", "30", "0-59/59", "sat-sun", "2/3", "12-", "JAN", "1,,2"]
cron_field = st.sampled_from(CRON_TOKENS) | st.from_regex(r"[0-9a-z*/,\-]{1,6}", fullmatch=True)
cron_texts = (st.lists(cron_field, min_size=1, max_size=7).map(" ".join)
              | st.sampled_from([*cron.ALIASES, "@reboot", "@", "@DAILY", " 0  9 * *  1-5 ", "0 9 * * 1-5\n"])
              | st.text(max_size=30))

# ISO texts of instants a person might type, naive or with an offset: any year, or years well inside the calendar.
offsets = st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                                            max_value=timedelta(hours=23, minutes=59)))
all_instants = st.datetimes(timezones=st.none() | offsets)
sane_instants = st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9000, 12, 30),
                             timezones=st.none() | offsets)


@st.composite
def iso_texts(draw: st.DrawFn, instants: st.SearchStrategy[datetime] = sane_instants) -> str:
    moment = draw(instants)
    text = moment.isoformat(sep=draw(st.sampled_from("T ")),
                            timespec=draw(st.sampled_from(["auto", "minutes", "seconds", "milliseconds"])))
    return text.replace("+00:00", "Z") if draw(st.booleans()) else text
