"""Where a zone's UTC offset changes: the instants the cron counter must look at one by one.

The C ``ZoneInfo`` does not expose its transitions, so they are read through zoneinfo's pure-Python loader,
which finds the same file the same way (TZPATH, then the tzdata package). A zone file lists explicit
transitions up to some instant; after the last one a POSIX rule repeats every year, and the rule depends
only on the calendar, so from the following year on the zone's offsets repeat every 400 Gregorian years
(146,097 days, a whole number of weeks). Anything unexpected (no key, a changed private API) gives None and
callers fall back to walking day by day.
"""

from __future__ import annotations

import importlib
import logging
from bisect import bisect_left
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)
CYCLE_YEARS = 400
CYCLE_S = 146_097 * 86_400


@dataclass(frozen=True)
class Transitions:
    explicit: tuple[int, ...]  # epoch seconds, ascending
    rule: Any  # zoneinfo's yearly rule (_TZStr), or None when the offset stays put after the last explicit one
    periodic_from: int  # the first year from which the offsets repeat every CYCLE_YEARS

    def between(self, lo: int, hi: int) -> list[int]:
        """The transition instants t with lo <= t < hi, ascending."""
        found = list(self.explicit[bisect_left(self.explicit, lo):bisect_left(self.explicit, hi)])
        if self.rule is None:
            return found
        last = self.explicit[-1] if self.explicit else None
        first_year = max(_year(lo) - 1, self.periodic_from - 1, 1)
        for year in range(first_year, min(_year(hi) + 1, 9999) + 1):
            for t in _yearly(self.rule, year):
                if lo <= t < hi and (last is None or t > last):
                    found.append(t)
        return sorted(found)


@lru_cache(maxsize=4096)
def _yearly(rule: Any, year: int) -> tuple[int, int]:
    start, end = rule.transitions(year)  # in local standard / daylight time, as zoneinfo reads them
    return (int(start - rule.std.utcoff.total_seconds()), int(end - rule.dst.utcoff.total_seconds()))


def _year(epoch: int) -> int:
    return datetime.fromtimestamp(min(max(epoch, -62_135_596_800), 253_402_214_400), UTC).year


def of(zone: ZoneInfo) -> Transitions | None:
    """The zone's transitions, or None when they cannot be known (a zone made from a file without a key)."""
    return _load(zone.key) if zone.key else None


@lru_cache(maxsize=16)
def _load(key: str) -> Transitions | None:
    try:
        # The pure-Python twin of ZoneInfo, with its data in plain attributes.
        pure: Any = importlib.import_module("zoneinfo._zoneinfo").ZoneInfo.no_cache(key)
        explicit = tuple(int(t) for t in pure._trans_utc)
        after = pure._tz_after
        rule = after if hasattr(after, "transitions") and after.dst_diff else None
    except Exception as exc:  # a future Python may rename these: count slowly rather than fail
        log.warning("zone %s: transitions unknown (%s); cron counts walk day by day", key, exc,
                    extra={"action": "zone_transitions_unknown"})
        return None
    periodic_from = (_year(explicit[-1]) + 1) if explicit else 1
    return Transitions(explicit, rule, periodic_from)
