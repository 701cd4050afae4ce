"""Short ids (``task-ab12cd``, what tables show: ``schemas.ids.short``) taken wherever a full one is: a short id
names the one stored id with that kind and random part, and one that names several is refused, never guessed."""

from __future__ import annotations

from host.errors import NclError
from host.store import db
from schemas import ids


def expand(conn: db.Connection, table: str, prefix: str, ref: str) -> str:
    """The full id in ``table`` that ``ref`` is short for, or ``ref`` itself (a full id, or a short one naming
    nothing, which the caller reports as unknown)."""
    pattern = ids.short_pattern(ref, prefix)
    if pattern is None:
        return ref
    found = [str(row[0]) for row in conn.execute(f"SELECT id FROM {table} WHERE id LIKE ? ORDER BY id", (pattern,))]
    if len(found) > 1:
        raise NclError(f"{ref!r} is short for {len(found)} ids ({', '.join(found)}); give the full one")
    return found[0] if found else ref
