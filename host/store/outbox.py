"""The host's reads of a session's outbound.db (runner-owned), and the one write it may do there:
clearing claims of a runner that is gone (DESIGN §5)."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from host.store import db, journals
from host.store.bounds import REPLY_CHARS as REPLY_CHARS
from host.store.bounds import TEXT_CHARS as TEXT_CHARS
from schemas.rows import MAX_REQUEST_CHARS, MODEL_WAIT, MODEL_WAIT_MAX_TEXT, ModelWait

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One ``messages_out`` row (DESIGN §4): a reply for a channel, or a request for the host."""

    id: str
    seq: int
    in_reply_to: str | None
    timestamp: str
    kind: str
    platform_id: str | None
    channel_type: str | None
    thread_id: str | None
    content: str

    @classmethod
    def of(cls, row: sqlite3.Row) -> OutMessage:
        return cls(row["id"], row["seq"], row["in_reply_to"], row["timestamp"], row["kind"], row["platform_id"],
                   row["channel_type"], row["thread_id"], row["content"])


@dataclass(frozen=True, slots=True)
class Ack:
    """One ``processing_ack`` row: a runner's claim of an inbox row (``processing``), or how its turn ended."""

    message_id: str
    status: str
    status_changed: str
    detail: str | None
    generation: str | None

    @classmethod
    def of(cls, row: sqlite3.Row) -> Ack:
        return cls(row["message_id"], row["status"], row["status_changed"], row["detail"], row["generation"])


@dataclass
class Outbox:
    """What one sweep needs from outbound.db, read in one short read transaction."""

    acks: dict[str, Ack] = field(default_factory=dict)
    requests: list[OutMessage] = field(default_factory=list)
    replies: list[OutMessage] = field(default_factory=list)
    tool_timeout_s: float | None = None


# A sweep's visit waits at most this long for a session's files (its outbound.db, its inbox's COMMIT, the session's
# in-process lock: see ``Visitor.visit``), and so does a look at the claims of a runner that may be alive: a runner
# keeping its files locked, or an operator's ``sqlite3`` left inside a read, must not stall every other session.
RUNNER_WAIT_S = 0.25


# What a read takes of the rows the runner writes, whatever it wrote: each request's text up to one character past
# what ``requests.parse`` accepts (it refuses it), each reply's up to REPLY_CHARS (a longer one is answered with a
# line saying so), at most REPLIES replies a read (the rest at the next: the session stays busy while replies
# wait), each other text up to TEXT_CHARS (ids, routing), an ack's detail to one past MAX_DETAIL (``acks.detail``).
REPLIES = 20
MAX_DETAIL = 64 << 10  # characters of a finished ack's detail read as JSON; more is only a reason (a claim's: none)
MAX_REASON = 4_000  # characters of its reason kept (task_runs.detail, the log line): the rest is not even read
MAX_TOOL_TIMEOUT_S = 7 * 86400  # a running tool's declared timeout widens the stuck check by at most this much
TOO_LONG = json.dumps({"text": f"[The agent's answer was longer than {REPLY_CHARS} characters: not sent.]",
                       "files": []})


def read(path: Path, open_ids: Iterable[str], after_seq: int, writable: bool, reply_after_seq: int = 0,
         request_limit: int = -1, wait_s: float | None = None) -> Outbox:
    """Acks of the given (still open) messages, system requests after ``after_seq``, chat replies after
    ``reply_after_seq``, the running tool's timeout (not ``writable``: only while a runner is alive).

    ``writable`` (only when no runner is alive) may write; otherwise the file is opened query-only (read-write at
    the file level, so a FIFO swapped in cannot block the sweep, see ``db.connect``). Either is ``db.Tampered`` by a
    read given up past its bounds (``bounds``), only the query-only one by what ``journals.guard`` finds. Either rolls
    back a hot journal a killed runner left, which a read-only connection could not read past.
    ``wait_s``: the busy timeout, if not the default (``db.connect``).
    """
    if not path.exists():
        return Outbox()
    journals.guard(path, live=not writable)
    ids = list(open_ids)
    acks: dict[str, Ack] = {}
    requests: list[OutMessage] = []
    replies: list[OutMessage] = []
    with db.outbound(path, query_only=not writable, reading=True, wait_s=wait_s) as conn:
        some_requests, some_replies, some_acks = _news(conn, ids, after_seq, reply_after_seq)
        if some_acks:
            acks = {row["message_id"]: Ack.of(row) for row in in_chunks(conn, ACKS, ids)}
        if some_requests:
            requests = [OutMessage.of(row) for row in conn.execute(  # at most request_limit (-1: all)
                OUT.format(chars=MAX_REQUEST_CHARS + 1, kind="system"), (after_seq, request_limit))]
        if some_replies:
            replies = [OutMessage.of(row) for row in conn.execute(
                OUT.format(chars=REPLY_CHARS + 1, kind="chat"), (reply_after_seq, REPLIES))]
            replies = [r if len(r.content) <= REPLY_CHARS else replace(r, content=TOO_LONG) for r in replies]
        # The tool's timeout only widens a live runner's stuck check: a read for none (``writable``) skips it.
        state = None if writable else conn.execute(
            f"SELECT {_cut('current_tool', 64)}, CAST(substr(tool_timeout_s, 1, 64) AS REAL) AS tool_timeout_s"
            " FROM container_state WHERE id = 1").fetchone()
        db.end_read(conn)
    timeout = float(state["tool_timeout_s"]) if state and state["current_tool"] and state["tool_timeout_s"] else None
    timeout = None if timeout is None or not timeout > 0 else min(timeout, MAX_TOOL_TIMEOUT_S)  # (NaN: None)
    return Outbox(acks, requests, replies, timeout)


def _news(conn: db.Connection, ids: list[str], after_seq: int, reply_after_seq: int) -> tuple[bool, bool, bool]:
    """Which reads would find anything: requests past ``after_seq``, replies past ``reply_after_seq``, acks of the
    open rows ``ids``. One short statement: the bounded reads cost ~40 µs each to compile, and a visit mostly finds
    nothing new (a quiet outbox), or one kind of thing (a finished turn's ack)."""
    if len(ids) > CHUNK:  # (more than one statement binds: the acks are read, in chunks)
        acked, bound = "1", []
    else:
        acked, bound = f"EXISTS (SELECT 1 FROM processing_ack WHERE message_id IN ({', '.join('?' * len(ids))}))", ids
    found = conn.execute(f"SELECT EXISTS (SELECT 1 FROM messages_out WHERE kind = 'system' AND {NEW}), EXISTS"
                         f" (SELECT 1 FROM messages_out WHERE kind = 'chat' AND {NEW}), {acked}",
                         (after_seq, reply_after_seq, *bound)).fetchone()
    return bool(found[0]), bool(found[1]), bool(found[2])


def _cut(column: str, chars: int = TEXT_CHARS) -> str:
    return f"substr({column}, 1, {chars}) AS {column}"


# A finished ack's detail with its reason cut in SQLite first: a long reason (an error's text) leaves its other
# keys (the answer's id, the tokens) within what is parsed.
_DETAIL = f"substr(CASE WHEN json_valid(detail) AND json_type(detail, '$.reason') = 'text' THEN json_set(detail, " \
          f"'$.reason', substr(json_extract(detail, '$.reason'), 1, {MAX_REASON})) ELSE detail END, 1, " \
          f"{MAX_DETAIL + 1})"
ACKS = f"SELECT {', '.join(map(_cut, ('message_id', 'status', 'status_changed', 'generation')))}, CASE WHEN " \
       f"status = 'processing' THEN NULL ELSE {_DETAIL} END AS detail FROM processing_ack WHERE message_id IN ({{}})"
# Rows past a watermark: a seq of another type (the runner's SQLite stores text in an INTEGER column) would be a
# watermark the host's inbox could not hold.
NEW = "seq > ? AND typeof(seq) = 'integer'"
_ROUTED = ", ".join(map(_cut, ("id", "in_reply_to", "timestamp", "kind", "platform_id", "channel_type", "thread_id")))
OUT = f"SELECT seq, {_ROUTED}, substr(content, 1, {{chars}}) AS content FROM messages_out WHERE kind = '{{kind}}'" \
      f" AND {NEW} ORDER BY seq LIMIT ?"


CHUNK = 500  # ids bound in one statement: under SQLite's variable limit


def in_chunks(conn: db.Connection, sql: str, ids: list[str], size: int = CHUNK) -> list[sqlite3.Row]:
    """Run ``sql`` (its ``IN ({})`` filled with placeholders) over ``ids`` in chunks, under SQLite's variable
    limit; the rows of every chunk."""
    rows: list[sqlite3.Row] = []
    for start in range(0, len(ids), size):
        chunk = ids[start:start + size]
        rows += conn.execute(sql.format(", ".join("?" * len(chunk))), chunk).fetchall()
    return rows


def clear_claims(path: Path, message_ids: list[str], wait_s: float | None = None) -> None:
    """Delete ``processing`` claims of a runner that is no longer alive, so the next one starts clean. ``wait_s``:
    the busy timeout, if not the default (``db.connect``)."""
    if not message_ids or not path.exists():
        return
    journals.guard(path, live=False)
    with db.outbound(path, wait_s=wait_s) as conn:
        # The runner's rows are freed, not overwritten (Debian's SQLite zeroes freed pages: claims of 16 MiB values
        # cost the host writing all of them twice, file and journal, in one step no CPU bound sees).
        conn.execute("PRAGMA secure_delete=OFF")
        with db.transaction(conn):
            in_chunks(conn, "DELETE FROM processing_ack WHERE status = 'processing' AND message_id IN ({})",
                       message_ids)


def claimed(path: Path, message_ids: list[str]) -> set[str]:
    """Which of these rows a runner has claimed (a claim the sweep may not have copied into the inbox yet). The
    runner may be alive: its file is waited for at most ``RUNNER_WAIT_S``, then this fails busy (``db.is_busy``),
    and one ``db.Tampered`` is refused."""
    if not message_ids or not path.exists():
        return set()
    journals.guard(path, live=True)
    with db.outbound(path, query_only=True, wait_s=RUNNER_WAIT_S) as conn:
        return {r[0] for r in in_chunks(conn, "SELECT message_id FROM processing_ack WHERE status = 'processing'"
                                                " AND message_id IN ({})", message_ids)}


def at_work(path: Path, generation: str) -> bool:
    """Whether the runner of this generation holds a claim: at work on a turn. Its file is waited for at most
    ``RUNNER_WAIT_S``; one held longer counts as at work, one that cannot be read as not (its visit says why)."""
    if not path.exists():
        return False
    try:
        journals.guard(path, live=True)
        with db.outbound(path, query_only=True, wait_s=RUNNER_WAIT_S) as conn:
            return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM processing_ack WHERE status = 'processing'"
                                     " AND generation = ?)", (generation,)).fetchone()[0])
    except (db.Error, db.DbError) as exc:
        return db.is_busy(exc)


def model_wait(path: Path) -> ModelWait | None:
    """What the runner said of its wait to retry the model API (``ModelWait``), if anything readable."""
    if not path.exists():
        return None
    journals.guard(path, live=True)
    with db.outbound(path, query_only=True) as conn:
        row = conn.execute("SELECT substr(value, 1, ?) FROM session_state WHERE key = ?",
                           (MODEL_WAIT_MAX_TEXT + 1, MODEL_WAIT)).fetchone()  # the runner's text: bounded
    return ModelWait.parse(row[0] if row and isinstance(row[0], str) else None)
