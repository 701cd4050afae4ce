"""Timezone resolution (DESIGN §3): the first valid IANA name among the candidates, else UTC."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class ResolvedZone(NamedTuple):  # not a dataclass: every command makes this class, a NamedTuple is made 5x faster
    """The zone the host plans in, where its name came from, and the candidates refused before it."""

    name: str
    source: str  # "env" | ".env" | "system" | "fallback"
    rejected: tuple[tuple[str, str], ...] = ()  # (source, value) candidates that were not IANA names

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.name)


# Files in a zoneinfo tree that are not zone names. Listing every name (available_timezones) costs ~0.2 s,
# paid by every CLI call; opening the one zone asked for is what ZoneInfo does anyway.
_NOT_NAMES = frozenset({"localtime", "posixrules", "Factory"})


@lru_cache(maxsize=64)
def is_iana_name(value: str | None) -> bool:
    if not value or value in _NOT_NAMES or value != value.strip():
        return False
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def resolve(candidates: list[tuple[str, str | None]]) -> ResolvedZone:
    """``candidates`` are (source, value) in priority order; absent values are ``None``.

    A present value that is not an IANA zone name (empty, ``IST-2``, ``Not/AZone``) is rejected and
    the next candidate is tried; the rejections are returned so callers can log and show them.
    """
    rejected: list[tuple[str, str]] = []
    for source, value in candidates:
        if value is None:
            continue
        if is_iana_name(value):
            return ResolvedZone(value, source, tuple(rejected))
        rejected.append((source, value))
    return ResolvedZone("UTC", "fallback", tuple(rejected))
