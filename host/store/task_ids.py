"""Task ids are unique in the install (DESIGN §13.5): every new series registers its id in central.db
``task_ids`` before its first inbound row is written, so an id names one series of one session, and the CLI
finds it with one indexed read instead of opening every session's inbox."""

from __future__ import annotations

from dataclasses import dataclass

from host.store import db


@dataclass(frozen=True)
class TaskIds:
    """The registry as one session sees it: ids are registered under its group and session."""

    central: db.Connection
    agent_group_id: str
    session_id: str

    def register(self, task_id: str) -> bool:
        """Claim ``task_id`` for this session; False if another session holds it. One this session holds already is
        its own again (the caller checked its inbox has no such series): the registration of a series whose inbox
        write was lost, the host killed between the two commits."""
        with db.transaction(self.central):
            added = self.central.execute("INSERT OR IGNORE INTO task_ids(id, agent_group_id, session_id)"
                                         " VALUES (?, ?, ?)", (task_id, self.agent_group_id, self.session_id))
            return added.rowcount == 1 or lookup(self.central, task_id) == (self.agent_group_id, self.session_id)


def lookup(central: db.Connection, task_id: str) -> tuple[str, str] | None:
    """(agent group id, session id) of a registered series id, or None."""
    row = central.execute("SELECT agent_group_id, session_id FROM task_ids WHERE id = ?", (task_id,)).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))
