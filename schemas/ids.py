"""Identifiers: ``<prefix>-<epoch_ms>-<6 chars [0-9a-z]>`` and agent-group ids ``ag-<slug>``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_SUFFIX = 6  # characters of an id's random part
# sched: project-level scheduled tasks; host: those of them an admin group's agent created (issue 16.3)
PREFIXES = ("task", "msg", "sys", "sess", "run", "sched", "host")
_ID = re.compile(rf"({'|'.join(PREFIXES)})-([0-9]{{13}})-([0-9a-z]{{6}})")
# The patterns below are compiled (and cached by ``re``) where first used: compiling a pattern costs 0.3-1.5M
# instructions, which every command paid at import for these, though few use them.
_SHORT = rf"({'|'.join(PREFIXES)})-([0-9a-z]{{6}})"
GROUP_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}"
# A mail address as mailboxes and NCL_ALERT_CHANNEL take it: a dot-atom local part, a domain of labels; no quoting.
MAIL_ADDRESS = (r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*")


def new_id(prefix: str, now: datetime) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    import secrets  # imported here: it loads OpenSSL (~4 ms), which a command that makes no id need not

    # One draw for the six characters, as uniform as six choices, which read the system's randomness six times:
    # 28 µs of CPU an id, 8 now (a clone makes two: its row's and its run's).
    draw, suffix = secrets.randbelow(len(_ALPHABET) ** _SUFFIX), ""
    for _ in range(_SUFFIX):
        draw, digit = divmod(draw, len(_ALPHABET))
        suffix += _ALPHABET[digit]
    return f"{prefix}-{epoch_ms(now)}-{suffix}"


def epoch_ms(now: datetime) -> int:
    # Integer arithmetic: float timestamps round about 0.6% of instants down by a millisecond.
    return (now - EPOCH) // timedelta(milliseconds=1)


def is_id(text: str, prefix: str) -> bool:
    """True when ``text`` is a well-formed id of that kind (used to accept runner-chosen ids)."""
    match = _ID.fullmatch(text) if isinstance(text, str) else None
    return match is not None and match.group(1) == prefix


def short(full: str) -> str:
    """What a table shows of an id: its kind and random part, ``task-ab12cd`` for ``task-1796440877725-ab12cd`` (the
    time part is alike in ids made close together); anything else as it is."""
    match = _ID.fullmatch(full)
    return f"{match.group(1)}-{match.group(3)}" if match else full


def short_pattern(ref: str, prefix: str) -> str | None:
    """The SQL ``LIKE`` pattern of the full ids a short id of that kind stands for; None if ``ref`` is none."""
    match = re.fullmatch(_SHORT, ref)
    return f"{prefix}-%-{match.group(2)}" if match and match.group(1) == prefix else None


def group_id(name: str) -> str:
    """``ag-<slug>`` for a validated group name; the slug is the lower-cased name."""
    check_group_name(name)
    return f"ag-{name.lower()}"


def check_group_name(name: str) -> None:
    if not re.fullmatch(GROUP_NAME, name or ""):
        raise ValueError(
            f"invalid group name {name!r}: use 1-48 letters, digits, '-' or '_', "
            "starting with a letter or digit (no '/', '.', spaces)"
        )
