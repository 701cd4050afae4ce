"""What the model proxy keeps of a group's allowance (issue 11): tokens and requests per agent group and UTC day
(central.db ``group_usage``)."""

from __future__ import annotations

from host.store import db


def tokens(conn: db.Connection, group_id: str, day: str) -> int:
    """Input and output tokens the group used on ``day`` (YYYY-MM-DD, UTC)."""
    row = conn.execute("SELECT input_tokens + output_tokens FROM group_usage WHERE agent_group_id = ? AND day = ?",
                       (group_id, day)).fetchone()
    return int(row[0]) if row else 0


def add(conn: db.Connection, group_id: str, day: str, input_tokens: int, output_tokens: int) -> None:
    """Count one request and its tokens on the group's ``day``."""
    with db.transaction(conn):
        conn.execute(
            "INSERT INTO group_usage(agent_group_id, day, requests, input_tokens, output_tokens)"
            " VALUES (?, ?, 1, ?, ?) ON CONFLICT(agent_group_id, day) DO UPDATE SET requests = requests + 1,"
            " input_tokens = input_tokens + excluded.input_tokens,"
            " output_tokens = output_tokens + excluded.output_tokens",
            (group_id, day, input_tokens, output_tokens))

