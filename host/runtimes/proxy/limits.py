"""An agent group's model allowance (issue 11): requests per minute and tokens per UTC day, kept by the proxy.

Requests per minute (``NCL_GROUP_REQUESTS_PER_MINUTE``) are counted in memory, in fixed UTC-minute windows: a host
restart forgets at most one minute. Tokens (``input_tokens + output_tokens`` of each response's ``usage``) are kept
in central.db ``group_usage`` per group and UTC day, so a budget (``NCL_GROUP_TOKENS_PER_DAY``) survives a restart
and starts afresh at 00:00 UTC. A request over either limit is answered 429 ``rate_limit_error`` naming the limit and
when it resets, and the session gets one notice (DESIGN §12.6) per limit window, not one per refused call.

Usage is read from the response bytes as they stream through (JSON or SSE alike): the largest ``"input_tokens"`` and
``"output_tokens"`` seen. SSE usage is cumulative (``message_start``, then ``message_delta``), so the largest is
the total; a value a model could forge inside a tool input only ever counts more, never less. An answer that did not
pass whole (its caller hung up, or the API's connection broke) may have been billed in full with its counts in the part
never read (a stream's output total comes last, a JSON answer's usage at its end): it counts as if it ran whole, its
input estimated from the request's size unless the stream said it, its output at the request's ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

from host.errors import NclError
from host.http.wire import Refusal
from host.settings import Settings
from host.store import db, inbox, usage
from schemas.times import to_text

log = logging.getLogger(__name__)
# Cache writes and reads are input the API bills too (writes at more than plain input): all of it counts.
USAGE = re.compile(rb'"((?:cache_creation_|cache_read_)?input|output)_tokens"\s*:\s*(\d{1,12})')
CARRY = 64  # bytes kept from one chunk to the next, so a count split between two chunks is still seen
BYTES_PER_TOKEN = 4  # of a request whose answer never said its input tokens (text runs about 4 bytes a token)


class Limited(Refusal):
    """A 429 with the headers that tell the SDK when (or whether) to retry."""

    def __init__(self, message: str, retry_after: int, retry: bool) -> None:
        super().__init__(429, "rate_limit_error", message)
        self.headers = [("retry-after", str(retry_after)), *([] if retry else [("x-should-retry", "false")])]


class UsageMeter:
    """Token counts of one response, read as it passes; holds a few bytes, never the response."""

    def __init__(self) -> None:
        self.tokens = {b"input": 0, b"cache_creation_input": 0, b"cache_read_input": 0, b"output": 0}
        self._carry = b""

    @property
    def input_tokens(self) -> int:
        return sum(count for kind, count in self.tokens.items() if kind != b"output")

    def feed(self, chunk: bytes) -> None:
        text = self._carry + chunk
        for kind, value in USAGE.findall(text):
            self.tokens[kind] = max(self.tokens[kind], int(value))
        self._carry = text[-CARRY:]

    def cut_short(self, request_bytes: int, max_tokens: int) -> None:
        """The answer did not pass whole: count it as if it ran whole (see the module)."""
        if not self.input_tokens:
            self.tokens[b"input"] = request_bytes // BYTES_PER_TOKEN
        self.tokens[b"output"] = max(self.tokens[b"output"], max_tokens)


class GroupLimits:
    def __init__(self, settings: Settings, now: Callable[[], datetime]) -> None:
        self.settings = settings
        self.now = now
        self._minutes: dict[str, tuple[datetime, int]] = {}  # group -> (its current minute, requests in it)
        self._noticed: dict[tuple[Path, str], datetime] = {}  # (session folder, limit) -> window last noticed

    async def admit(self, group: str, folder: Path) -> None:
        """Count one request of ``group``, or refuse it (``Limited``) if the group is over a limit."""
        now = self.now()
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        budget = self.settings.group_tokens_per_day
        if budget and (used := await asyncio.to_thread(self._tokens, group, day)) >= budget:
            reset = day + timedelta(days=1)
            await self._refuse(folder, "model_budget_exhausted", day, reset, retry=False, message=(
                f"agent group {group} used {used:,} of its {budget:,} model tokens for {day:%Y-%m-%d} UTC "
                f"(NCL_GROUP_TOKENS_PER_DAY); the budget resets at {reset:%Y-%m-%dT%H:%MZ}"))
        now = self.now()
        minute = now.replace(second=0, microsecond=0)
        start, count = self._minutes.get(group, (minute, 0))
        count = count if start == minute else 0
        if (rate := self.settings.group_requests_per_minute) and count >= rate:
            reset = minute + timedelta(minutes=1)
            await self._refuse(folder, "model_rate_limited", minute, reset, retry=True, message=(
                f"agent group {group} made {count} model requests this minute, its limit "
                f"(NCL_GROUP_REQUESTS_PER_MINUTE={rate}); the limit resets at {reset:%H:%M:%S}Z"))
        self._minutes[group] = (minute, count + 1)

    async def charge(self, group: str, meter: UsageMeter) -> None:
        """Add one request and its tokens to the group's day (the day it ended)."""
        day = self.now().strftime("%Y-%m-%d")
        try:
            await asyncio.to_thread(self._add, group, day, meter.input_tokens, meter.tokens[b"output"])
        except (NclError, db.Error) as exc:  # counting must not break the answer the client already has
            log.warning("model usage of %s not recorded: %s", group, exc, extra={"action": "usage_not_recorded"})

    async def _refuse(self, folder: Path, kind: str, window: datetime, reset: datetime, retry: bool,
                      message: str) -> None:
        if self._noticed.get((folder, kind)) != window:  # logged and noticed once a window, not once a call
            self._noticed[(folder, kind)] = window
            log.warning("proxy refuses %s: %s", folder.name, message, extra={"action": kind, "session": folder.name})
            await asyncio.to_thread(self._notice, folder, kind, window, f"Model calls refused: {message}.")
        raise Limited(message, max(1, math.ceil((reset - self.now()).total_seconds())), retry)

    def _tokens(self, group: str, day: datetime) -> int:
        with closing(db.connect(self.settings.central_db, "central")) as conn:
            return usage.tokens(conn, group, f"{day:%Y-%m-%d}")

    def _add(self, group: str, day: str, input_tokens: int, output_tokens: int) -> None:
        with closing(db.connect(self.settings.central_db, "central")) as conn:
            usage.add(conn, group, day, input_tokens, output_tokens)

    def _notice(self, folder: Path, kind: str, window: datetime, text: str) -> None:
        path = folder / "inbound.db"
        if not path.is_file():
            return  # not a session the host keeps (yet): nobody to tell
        try:
            with closing(db.connect(path, "inbound")) as conn, db.transaction(conn):
                # Once per window even across a host restart: the inbox itself says whether it was told.
                if not inbox.noticed_since(conn, kind, to_text(window)):
                    inbox.notice(conn, self.now(), kind, text)
        except (NclError, db.Error) as exc:
            log.warning("notice to %s failed: %s", folder.name, exc, extra={"action": "notice_failed"})
