"""How a recurring series ends (issue 16.2, DESIGN §13.3): ``until`` (a time) and ``count`` (a number of runs).

Both live in the task content under those keys, so the runner, ``sqlite3`` and every clone read them where the rest
of the task is:

* ``until``: UTC text; no occurrence is planned after it (a slot exactly at ``until`` still runs);
* ``count``: the occurrences left, the row's own included. A new series stores the number of runs asked for (the
  first included); each clone carries one less, and slots that were missed (the misfire rule) count as used, as
  the grid's slots are what is counted, whatever happened at each: ran, skipped, gate error, failed or missed. A
  run-now occurrence is off the grid and does not count.

After the last allowed occurrence ends no clone is made and that row's content gets ``"ended": "count"`` or
``"until"`` (the record ``ncl tasks show`` reads).
"""

from __future__ import annotations

import json
from datetime import datetime
from itertools import islice
from zoneinfo import ZoneInfo

from schemas.times import TimeFormatError, from_text

MAX_COUNT = 100_000
ENDED = "ended"  # content key on the last occurrence: "count" or "until"


def check_count(value: object) -> int:
    """A count as asked (1 to MAX_COUNT), or ValueError in one line."""
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise ValueError(f"count must be a whole number of runs from 1 to {MAX_COUNT}, not {str(value)[:40]!r}")
    count = int(value)
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be from 1 to {MAX_COUNT} runs, not {count}")
    return count


def check_until(until: datetime, now: datetime, first: datetime | None) -> None:
    """``until`` must lie ahead, and not before the (next) run, or ValueError in one line."""
    if until <= now:
        raise ValueError(f"until {until:%Y-%m-%dT%H:%M:%SZ} has already passed")
    if first is not None and until < first:
        raise ValueError(f"until {until:%Y-%m-%dT%H:%M:%SZ} is before the next run at {first:%Y-%m-%dT%H:%M:%SZ}; "
                         "cancel the task to end it now")


class Ends:
    """A series' end conditions. A plain class: a frozen dataclass compiles its methods when the class is made, which
    ``ncl tasks list`` pays, and a NamedTuple's field ``count`` would hide ``tuple.count``."""

    __slots__ = ("count", "until")

    def __init__(self, until: datetime | None = None, count: int | None = None) -> None:
        self.until = until
        self.count = count

    @classmethod
    def of(cls, content: str | dict[str, object]) -> Ends:
        """The end conditions a row's content holds; a value that does not read is taken as absent."""
        data = json.loads(content) if isinstance(content, str) else content
        until, count = data.get("until"), data.get("count")
        try:
            when = from_text(until) if isinstance(until, str) else None
        except TimeFormatError:
            when = None
        return cls(when, count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else None)

    def __bool__(self) -> bool:
        return self.until is not None or self.count is not None

    def reached(self, slot: datetime, spent: int) -> str | None:
        """Why there is no occurrence at ``slot`` once this row has used ``spent`` slots: "count", "until" or None."""
        if self.count is not None and self.count - spent <= 0:
            return "count"
        if self.until is not None and slot > self.until:
            return "until"
        return None

    def cap(self, expr: str, first: datetime, latest: datetime, later: int,
            zone: ZoneInfo) -> tuple[datetime, int]:
        """The misfire rule's (latest slot, slots after ``first``) within the series' end: slots past it are not
        the series' to run or to count."""
        from schemas import recurring  # imported here (croniter): reading a row's ends (``ncl tasks list``) needs none

        if self.until is not None and latest > self.until:
            later, found = recurring.count_between(expr, first, self.until, zone)
            latest = found or first
        if self.count is not None and later > self.count - 1:
            later = self.count - 1
            latest = next(islice(recurring.firings(expr, first, zone), later - 1, None)) if later else first
        return latest, later

    def runs_left(self, expr: str, slot: datetime, zone: ZoneInfo) -> int | None:
        """Occurrences left from the one at ``slot`` (itself included); None when neither end is set."""
        counted = None
        if self.until is not None:
            from schemas import recurring  # see ``cap``

            counted = 1 + recurring.count_between(expr, slot, self.until, zone)[0] if slot <= self.until else 0
        if self.count is not None:
            counted = self.count if counted is None else min(counted, self.count)
        return counted
