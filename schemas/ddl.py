"""DDL of central.db, inbound.db and outbound.db, as forward migrations.

``MIGRATIONS[db][i]`` takes a file from ``PRAGMA user_version`` i to i+1; the latest version is
the list's length. Migrations only ever add: a file written by an older release keeps every row.
Every stored instant is CHECKed against the one UTC text format, so no other text can be written.
"""

from __future__ import annotations

from typing import Literal

from schemas.times import STORED_GLOB

DbKind = Literal["central", "inbound", "outbound"]


def _instant(column: str, nullable: bool = False) -> str:
    check = f"{column} GLOB '{STORED_GLOB}'"
    if nullable:
        return f"{column} TEXT CHECK ({column} IS NULL OR {check})"
    return f"{column} TEXT NOT NULL CHECK ({check})"


_CENTRAL_V1 = f"""
CREATE TABLE agent_groups(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE COLLATE NOCASE,
  rules TEXT NOT NULL DEFAULT '',
  session_mode TEXT NOT NULL DEFAULT 'shared' CHECK (session_mode IN ('shared', 'per-thread')),
  provider TEXT,
  model TEXT,
  {_instant("created_at")}
);
-- A channel address ('cli', 'queue:NAME', 'webhook:NAME', 'toolkit:NAME') routes to its group.
CREATE TABLE wirings(
  channel TEXT NOT NULL,
  agent_group_id TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  token_hash TEXT,
  {_instant("created_at")},
  PRIMARY KEY (channel, agent_group_id)
);
-- Every group may have a cli channel; any other address belongs to exactly one group.
CREATE UNIQUE INDEX wirings_one_group ON wirings(channel) WHERE channel <> 'cli';
CREATE TABLE sessions(
  id TEXT PRIMARY KEY,
  agent_group_id TEXT NOT NULL,
  thread_key TEXT,
  status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
  {_instant("created_at")},
  {_instant("last_active_at")}
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
  {_instant("next_run", nullable=True)},
  {_instant("created_at")},
  {_instant("updated_at")}
);
CREATE INDEX scheduled_tasks_due ON scheduled_tasks(active, next_run);
CREATE TABLE scheduled_task_runs(
  id TEXT PRIMARY KEY,
  task_id TEXT NOT NULL REFERENCES scheduled_tasks(id) ON DELETE CASCADE,
  status TEXT NOT NULL
    CHECK (status IN ('running', 'succeeded', 'failed', 'queued', 'missed', 'timeout')),
  {_instant("scheduled_for")},
  {_instant("started_at", nullable=True)},
  {_instant("finished_at", nullable=True)},
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

# v1 of the session files: the base inbox/outbox layout ncl shares with the hosts it descends from.
_INBOUND_V1 = f"""
CREATE TABLE messages_in(
  id TEXT PRIMARY KEY,
  seq INTEGER UNIQUE CHECK (seq % 2 = 0),
  kind TEXT NOT NULL CHECK (kind IN ('chat', 'task', 'queue', 'webhook', 'system')),
  {_instant("timestamp")},
  status TEXT NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'processing', 'paused', 'completed', 'failed')),
  {_instant("process_after", nullable=True)},
  recurrence TEXT,
  series_id TEXT,
  tries INTEGER NOT NULL DEFAULT 0,
  platform_id TEXT,
  channel_type TEXT,
  thread_id TEXT,
  content TEXT NOT NULL CHECK (json_valid(content))
);
CREATE TABLE destinations(
  name TEXT PRIMARY KEY,
  channel_type TEXT NOT NULL,
  platform_id TEXT,
  thread_id TEXT,
  display_name TEXT
);
CREATE TABLE session_routing(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  channel_type TEXT,
  platform_id TEXT,
  thread_id TEXT
);
CREATE TABLE delivered(
  message_out_id TEXT PRIMARY KEY,
  seq INTEGER,
  {_instant("delivered_at")},
  status TEXT NOT NULL DEFAULT 'delivered',
  detail TEXT
);
"""

# v2: ncl's additions — context-only rows, wake rows, run history, the scheduling indexes.
_INBOUND_V2 = f"""
ALTER TABLE messages_in ADD COLUMN trigger INTEGER NOT NULL DEFAULT 1 CHECK (trigger IN (0, 1));
ALTER TABLE messages_in ADD COLUMN on_wake INTEGER NOT NULL DEFAULT 0 CHECK (on_wake IN (0, 1));
UPDATE messages_in SET series_id = id WHERE kind = 'task' AND series_id IS NULL;
CREATE INDEX messages_in_due ON messages_in(status, process_after);
CREATE INDEX messages_in_series ON messages_in(series_id);
-- At most one live occurrence carrying the recurrence per series.
CREATE UNIQUE INDEX messages_in_one_live_recurrence ON messages_in(series_id)
  WHERE recurrence IS NOT NULL AND status IN ('pending', 'processing', 'paused');
CREATE TABLE task_runs(
  id TEXT PRIMARY KEY,
  series_id TEXT NOT NULL,
  message_id TEXT,
  {_instant("scheduled_for", nullable=True)},
  {_instant("started_at", nullable=True)},
  {_instant("finished_at", nullable=True)},
  duration_ms INTEGER,
  outcome TEXT NOT NULL
    CHECK (outcome IN ('ran', 'skipped', 'gate_error', 'failed', 'missed', 'cancelled')),
  detail TEXT
);
CREATE INDEX task_runs_series ON task_runs(series_id, finished_at);
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

# v3: a sweep's visit reads a session's current state, not its history: the handled-seq watermarks and the
# finished-but-still-recurring repair look up indexes instead of scanning every row ever delivered or run.
_INBOUND_V3 = """
CREATE INDEX delivered_status_seq ON delivered(status, seq);
CREATE INDEX messages_in_recurring ON messages_in(status) WHERE recurrence IS NOT NULL;
"""

# v4 (issue 13): the zone a recurring occurrence's time was planned in (TZ), so a host started in another zone
# re-plans it there (a 09:00 task stays at 09:00 local); NULL: planned before zones were recorded.
_INBOUND_V4 = """
ALTER TABLE messages_in ADD COLUMN zone TEXT;
"""

# v5 (issue 16.4): what a run produced, for the run log: the answer's messages_out id and its first 500 characters,
# and the model tokens its turn used as the runner reported them (input counts cached input, as the credential proxy
# does); NULL: none, or not reported (the mock provider). Only whole numbers from 0 up, only 500 characters.
_INBOUND_V5 = """
ALTER TABLE task_runs ADD COLUMN answer_id TEXT;
ALTER TABLE task_runs ADD COLUMN answer_excerpt TEXT
  CHECK (answer_excerpt IS NULL OR length(answer_excerpt) <= 500);
ALTER TABLE task_runs ADD COLUMN input_tokens INTEGER
  CHECK (input_tokens IS NULL OR (typeof(input_tokens) = 'integer' AND input_tokens >= 0));
ALTER TABLE task_runs ADD COLUMN output_tokens INTEGER
  CHECK (output_tokens IS NULL OR (typeof(output_tokens) = 'integer' AND output_tokens >= 0));
"""

# v4 (issue 13): likewise for a project-level task's next run.
_CENTRAL_V4 = """
ALTER TABLE scheduled_tasks ADD COLUMN zone TEXT;
"""

# v5 (issue 14): what the sweep last learned of each session, so a restarted host opens only the sessions whose files
# changed since or whose due time has come. ``files``: the stat signature of the folder and both files when the visit
# began; ``context``: the zone and schema versions it was taken under (another one: the row is not used).
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
  {_instant("created_at")}
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
  {_instant("seen_at")},
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
  {_instant("seen_at")},
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

# v6 (issue 17): a mail is a row of its own kind, ``mail``. SQLite cannot change a CHECK in place: the table is
# rebuilt with every row and column as they were, and its indexes made again.
_INBOUND_V6 = f"""
CREATE TABLE messages_in_v6(
  id TEXT PRIMARY KEY,
  seq INTEGER UNIQUE CHECK (seq % 2 = 0),
  kind TEXT NOT NULL CHECK (kind IN ('chat', 'task', 'queue', 'webhook', 'system', 'mail')),
  {_instant("timestamp")},
  status TEXT NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'processing', 'paused', 'completed', 'failed')),
  {_instant("process_after", nullable=True)},
  recurrence TEXT,
  series_id TEXT,
  tries INTEGER NOT NULL DEFAULT 0,
  platform_id TEXT,
  channel_type TEXT,
  thread_id TEXT,
  content TEXT NOT NULL CHECK (json_valid(content)),
  trigger INTEGER NOT NULL DEFAULT 1 CHECK (trigger IN (0, 1)),
  on_wake INTEGER NOT NULL DEFAULT 0 CHECK (on_wake IN (0, 1)),
  zone TEXT
);
INSERT INTO messages_in_v6(id, seq, kind, timestamp, status, process_after, recurrence, series_id, tries,
                           platform_id, channel_type, thread_id, content, trigger, on_wake, zone)
  SELECT id, seq, kind, timestamp, status, process_after, recurrence, series_id, tries,
         platform_id, channel_type, thread_id, content, trigger, on_wake, zone FROM messages_in;
DROP TABLE messages_in;
ALTER TABLE messages_in_v6 RENAME TO messages_in;
CREATE INDEX messages_in_due ON messages_in(status, process_after);
CREATE INDEX messages_in_series ON messages_in(series_id);
CREATE UNIQUE INDEX messages_in_one_live_recurrence ON messages_in(series_id)
  WHERE recurrence IS NOT NULL AND status IN ('pending', 'processing', 'paused');
CREATE INDEX messages_in_recurring ON messages_in(status) WHERE recurrence IS NOT NULL;
"""

_OUTBOUND_V1 = f"""
CREATE TABLE messages_out(
  id TEXT PRIMARY KEY,
  seq INTEGER UNIQUE CHECK (seq % 2 = 1),
  in_reply_to TEXT,
  {_instant("timestamp")},
  kind TEXT NOT NULL CHECK (kind IN ('chat', 'system')),
  platform_id TEXT,
  channel_type TEXT,
  thread_id TEXT,
  content TEXT NOT NULL CHECK (json_valid(content))
);
CREATE TABLE processing_ack(
  message_id TEXT PRIMARY KEY,
  status TEXT NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
  {_instant("status_changed")},
  detail TEXT
);
CREATE TABLE session_state(
  key TEXT PRIMARY KEY,
  value TEXT,
  {_instant("updated_at")}
);
CREATE TABLE container_state(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  current_tool TEXT,
  tool_timeout_s INTEGER,
  {_instant("updated_at")}
);
"""

# v2: claims belong to one runner generation, so a fresh runner never inherits stale liveness.
_OUTBOUND_V2 = """
ALTER TABLE processing_ack ADD COLUMN generation TEXT;
"""

# v3: a turn's task requests take effect with the turn. The tools stage them here; the transaction that records
# the turn's answer moves them into messages_out, and a runner killed mid-turn leaves them to be dropped (its
# retried turn asks again), so one request from the user is never applied twice.
_OUTBOUND_V3 = f"""
CREATE TABLE staged_requests(
  id TEXT PRIMARY KEY,
  generation TEXT NOT NULL,
  in_reply_to TEXT,
  {_instant("timestamp")},
  content TEXT NOT NULL CHECK (json_valid(content))
);
-- The host reads requests and replies past its watermarks: by kind and seq, not by scanning every answer.
CREATE INDEX messages_out_kind_seq ON messages_out(kind, seq);
"""

# v4: no new table. The runner keeps outbound.db's journal (journal_mode=TRUNCATE), which a host of v4 makes and
# mounts into the container on its own (a runner cannot swap a FIFO in for it). A runner of v3 deletes its journal at
# each commit, which fails on that mount and leaves a hot journal behind, whose rollback would undo the commit: the
# version keeps the images of such runners from starting (``host.runtimes.image``).
_OUTBOUND_V4 = ""

MIGRATIONS: dict[DbKind, tuple[str, ...]] = {
    "central": (_CENTRAL_V1, _CENTRAL_V2, _CENTRAL_V3, _CENTRAL_V4, _CENTRAL_V5, _CENTRAL_V6, _CENTRAL_V7, _CENTRAL_V8,
                _CENTRAL_V9),
    "inbound": (_INBOUND_V1, _INBOUND_V2, _INBOUND_V3, _INBOUND_V4, _INBOUND_V5, _INBOUND_V6),
    "outbound": (_OUTBOUND_V1, _OUTBOUND_V2, _OUTBOUND_V3, _OUTBOUND_V4),
}


def latest_version(kind: DbKind) -> int:
    return len(MIGRATIONS[kind])
