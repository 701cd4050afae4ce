"""DDL of central.db, inbound.db and outbound.db, as forward migrations (a session's two files: ``session_ddl``).

``MIGRATIONS[db][i]`` takes a file from ``PRAGMA user_version`` i to i+1; the latest version is
the list's length. Migrations only ever add: a file written by an older release keeps every row.
Every stored instant is CHECKed against the one UTC text format, so no other text can be written.
"""

from __future__ import annotations

from typing import Literal

from schemas.session_ddl import INBOUND, OUTBOUND
from schemas.times import STORED_GLOB, stored_instant

DbKind = Literal["central", "inbound", "outbound"]

_CENTRAL_V1 = f"""
CREATE TABLE agent_groups(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE COLLATE NOCASE,
  rules TEXT NOT NULL DEFAULT '',
  session_mode TEXT NOT NULL DEFAULT 'shared' CHECK (session_mode IN ('shared', 'per-thread')),
  provider TEXT,
  model TEXT,
  {stored_instant("created_at")}
);
-- A channel address ('cli', 'queue:NAME', 'webhook:NAME', 'toolkit:NAME') routes to its group.
CREATE TABLE wirings(
  channel TEXT NOT NULL,
  agent_group_id TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  token_hash TEXT,
  {stored_instant("created_at")},
  PRIMARY KEY (channel, agent_group_id)
);
-- Every group may have a cli channel; any other address belongs to exactly one group.
CREATE UNIQUE INDEX wirings_one_group ON wirings(channel) WHERE channel <> 'cli';
CREATE TABLE sessions(
  id TEXT PRIMARY KEY,
  agent_group_id TEXT NOT NULL,
  thread_key TEXT,
  status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
  {stored_instant("created_at")},
  {stored_instant("last_active_at")}
);
CREATE INDEX sessions_group ON sessions(agent_group_id, status);
CREATE UNIQUE INDEX sessions_one_thread ON sessions(agent_group_id, thread_key)
  WHERE status = 'active' AND thread_key IS NOT NULL;
"""

# v2: project-level scheduled tasks (DESIGN §9) and their runs. A task's ``next_run`` is the slot it fires
# next; a sweep claims a slot by moving ``next_run`` on in the transaction that inserts the run row.
_CENTRAL_V2 = f"""
CREATE TABLE scheduled_tasks(
  id TEXT PRIMARY KEY,
  name TEXT,
  schedule TEXT NOT NULL,
  target_kind TEXT NOT NULL CHECK (target_kind IN ('queue', 'container', 'host')),
  spec TEXT NOT NULL CHECK (json_valid(spec)),
  active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
  {stored_instant("next_run", nullable=True)},
  {stored_instant("created_at")},
  {stored_instant("updated_at")}
);
CREATE INDEX scheduled_tasks_due ON scheduled_tasks(active, next_run);
CREATE TABLE scheduled_task_runs(
  id TEXT PRIMARY KEY,
  task_id TEXT NOT NULL REFERENCES scheduled_tasks(id) ON DELETE CASCADE,
  status TEXT NOT NULL
    CHECK (status IN ('running', 'succeeded', 'failed', 'queued', 'missed', 'timeout')),
  {stored_instant("scheduled_for")},
  {stored_instant("started_at", nullable=True)},
  {stored_instant("finished_at", nullable=True)},
  duration_ms INTEGER,
  exit_code INTEGER,
  queued_message_id TEXT,
  output_tail TEXT,
  error TEXT,
  missed_slots INTEGER
);
CREATE INDEX scheduled_task_runs_task ON scheduled_task_runs(task_id, scheduled_for);
-- Once-only, enforced by the DB too: one fired run per task and slot ('missed' records are not firings).
CREATE UNIQUE INDEX scheduled_task_runs_once ON scheduled_task_runs(task_id, scheduled_for)
  WHERE status <> 'missed';
"""

# v3 (issue 11): task ids are unique in the install (every series registers its id here before its first row is
# written, so a runner cannot reuse another session's id); a group says whether the model API may reach the network
# for it (server tools); model usage is counted per group and UTC day for the daily token budget.
_CENTRAL_V3 = """
CREATE TABLE task_ids(
  id TEXT PRIMARY KEY,
  agent_group_id TEXT NOT NULL,
  session_id TEXT NOT NULL
);
ALTER TABLE agent_groups ADD COLUMN allow_server_tools INTEGER NOT NULL DEFAULT 0 CHECK (allow_server_tools IN (0, 1));
CREATE TABLE group_usage(
  agent_group_id TEXT NOT NULL,
  day TEXT NOT NULL CHECK (day GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
  requests INTEGER NOT NULL DEFAULT 0,
  input_tokens INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (agent_group_id, day)
);
"""

# v4 (issue 13): likewise for a project-level task's next run.
_CENTRAL_V4 = """
ALTER TABLE scheduled_tasks ADD COLUMN zone TEXT;
"""

# v5 (issue 14): what the sweep last learned of each session, so a restarted host opens only the sessions whose files
# changed since or whose due time has come. ``files``: the stat signature of its files when the visit began
# (``seen.files_of``); ``context``: the zone and schema versions it was taken under (another one: the row is not used).
_CENTRAL_V5 = f"""
CREATE TABLE session_index(
  session_id TEXT PRIMARY KEY,
  files TEXT NOT NULL,
  next_due TEXT CHECK (next_due IS NULL OR next_due = '' OR next_due GLOB '{STORED_GLOB}'),
  context TEXT NOT NULL
) WITHOUT ROWID;
"""

# v6 (issue 16.3): admin groups, marked by the operator (``ncl groups create|update --admin``): their agents' task
# tools may act on any group's tasks. Decided from this column only, never from anything a runner writes.
_CENTRAL_V6 = """
ALTER TABLE agent_groups ADD COLUMN admin INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1));
"""

# v7 (issue 17): mailboxes of ``mail:ADDRESS`` channels (the password only as the name of a variable, never its
# value; ``allow``: the JSON list of sender patterns, empty = nobody) and each mail the host has looked at, by the
# IMAP UIDVALIDITY and UID it had: ``taking`` is written with the chosen session and row id before the row, ``taken``
# after it, so a host killed anywhere between fetch and flag takes the mail again into the same row, never twice.
_CENTRAL_V7 = f"""
CREATE TABLE mailboxes(
  address TEXT PRIMARY KEY,
  imap_host TEXT NOT NULL,
  imap_port INTEGER NOT NULL CHECK (imap_port BETWEEN 1 AND 65535),
  smtp_host TEXT NOT NULL,
  smtp_port INTEGER NOT NULL CHECK (smtp_port BETWEEN 1 AND 65535),
  username TEXT NOT NULL,
  password_env TEXT NOT NULL,
  tls TEXT NOT NULL DEFAULT 'ssl' CHECK (tls IN ('ssl', 'starttls', 'none')),
  allow TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(allow) AND json_type(allow) = 'array'),
  {stored_instant("created_at")}
);
CREATE TABLE mail_seen(
  mailbox TEXT NOT NULL,
  uidvalidity INTEGER NOT NULL,
  uid INTEGER NOT NULL,
  message_id TEXT NOT NULL,
  outcome TEXT NOT NULL
    CHECK (outcome IN ('taking', 'taken', 'refused', 'automatic', 'duplicate', 'too_large')),
  session_id TEXT,
  row_id TEXT,
  {stored_instant("seen_at")},
  PRIMARY KEY (mailbox, uidvalidity, uid)
);
CREATE INDEX mail_seen_message ON mail_seen(mailbox, message_id);
"""

# v8: a mail the watcher fails to take is given up after a few tries, so it cannot block the mails behind it.
# ``tries`` counts the attempts made (each counted before the parse, so a mail that kills the host counts too);
# ``trying``: tried but never got further; ``skipped``: given up (left unread), ``reason`` the last failure. SQLite
# cannot change a CHECK in place: the table is rebuilt with every row as it was.
_CENTRAL_V8 = f"""
CREATE TABLE mail_seen_v8(
  mailbox TEXT NOT NULL,
  uidvalidity INTEGER NOT NULL,
  uid INTEGER NOT NULL,
  message_id TEXT NOT NULL,
  outcome TEXT NOT NULL CHECK (outcome IN ('trying', 'taking', 'taken', 'refused', 'automatic', 'duplicate',
                                           'too_large', 'skipped')),
  session_id TEXT,
  row_id TEXT,
  {stored_instant("seen_at")},
  tries INTEGER NOT NULL DEFAULT 0 CHECK (typeof(tries) = 'integer' AND tries >= 0),
  reason TEXT,
  PRIMARY KEY (mailbox, uidvalidity, uid)
);
INSERT INTO mail_seen_v8(mailbox, uidvalidity, uid, message_id, outcome, session_id, row_id, seen_at)
  SELECT mailbox, uidvalidity, uid, message_id, outcome, session_id, row_id, seen_at FROM mail_seen;
DROP TABLE mail_seen;
ALTER TABLE mail_seen_v8 RENAME TO mail_seen;
CREATE INDEX mail_seen_message ON mail_seen(mailbox, message_id);
"""

# v9: a queue target's run names the session its job went to, not only the job's message id; a session made for
# one queue job (no thread_id) says so: it is closed once it has nothing left to do (``host.scheduling.jobs``).
_CENTRAL_V9 = """
ALTER TABLE scheduled_task_runs ADD COLUMN queued_session_id TEXT;
ALTER TABLE sessions ADD COLUMN one_job INTEGER NOT NULL DEFAULT 0 CHECK (one_job IN (0, 1));
"""

# v10 (issue 14): counts of changes to the list of sessions a sweep visits, kept by the DB itself: sessions made, and
# sessions closed, reopened or moved. The running host learns from one row whether the list changed (each chat's
# arrival writes central.db: reading every session's id then held each tick at 10,000 sessions), and reads only the
# sessions made since when nothing else changed (a queue job's own session: the whole list cost 30-60 ms). A session's
# ``closed_at``: when it was closed (NULL while active), from which ``ncl sessions prune`` counts its age (sessions
# closed before v10: their last activity).
_CENTRAL_V10 = f"""
CREATE TABLE session_list(id INTEGER PRIMARY KEY CHECK (id = 1), made INTEGER NOT NULL, changed INTEGER NOT NULL);
INSERT INTO session_list VALUES (1, 0, 0);
CREATE TRIGGER session_list_made AFTER INSERT ON sessions
  BEGIN UPDATE session_list SET made = made + 1; END;
CREATE TRIGGER session_list_dropped AFTER DELETE ON sessions WHEN OLD.status = 'active'
  BEGIN UPDATE session_list SET changed = changed + 1; END;
CREATE TRIGGER session_list_changed AFTER UPDATE OF id, agent_group_id, thread_key, status, one_job ON sessions
  BEGIN UPDATE session_list SET changed = changed + 1; END;
ALTER TABLE sessions ADD COLUMN {stored_instant("closed_at", nullable=True)};
UPDATE sessions SET closed_at = last_active_at WHERE status = 'closed';
"""

MIGRATIONS: dict[DbKind, tuple[str, ...]] = {
    "central": (_CENTRAL_V1, _CENTRAL_V2, _CENTRAL_V3, _CENTRAL_V4, _CENTRAL_V5, _CENTRAL_V6, _CENTRAL_V7, _CENTRAL_V8,
                _CENTRAL_V9, _CENTRAL_V10),
    "inbound": INBOUND,
    "outbound": OUTBOUND,
}


def latest_version(kind: DbKind) -> int:
    return len(MIGRATIONS[kind])
