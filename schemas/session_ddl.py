"""DDL of a session's two files, inbound.db (the host's) and outbound.db (the runner's), as forward migrations
(``schemas.ddl``)."""

from __future__ import annotations

from schemas.times import stored_instant

# v1 of the session files: the base inbox/outbox layout ncl shares with the hosts it descends from.
_INBOUND_V1 = f"""
CREATE TABLE messages_in(
  id TEXT PRIMARY KEY,
  seq INTEGER UNIQUE CHECK (seq % 2 = 0),
  kind TEXT NOT NULL CHECK (kind IN ('chat', 'task', 'queue', 'webhook', 'system')),
  {stored_instant("timestamp")},
  status TEXT NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'processing', 'paused', 'completed', 'failed')),
  {stored_instant("process_after", nullable=True)},
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
  {stored_instant("delivered_at")},
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
  {stored_instant("scheduled_for", nullable=True)},
  {stored_instant("started_at", nullable=True)},
  {stored_instant("finished_at", nullable=True)},
  duration_ms INTEGER,
  outcome TEXT NOT NULL
    CHECK (outcome IN ('ran', 'skipped', 'gate_error', 'failed', 'missed', 'cancelled')),
  detail TEXT
);
CREATE INDEX task_runs_series ON task_runs(series_id, finished_at);
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

# v6 (issue 17): a mail is a row of its own kind, ``mail``. SQLite cannot change a CHECK in place: the table is
# rebuilt with every row and column as they were, and its indexes made again.
_INBOUND_V6 = f"""
CREATE TABLE messages_in_v6(
  id TEXT PRIMARY KEY,
  seq INTEGER UNIQUE CHECK (seq % 2 = 0),
  kind TEXT NOT NULL CHECK (kind IN ('chat', 'task', 'queue', 'webhook', 'system', 'mail')),
  {stored_instant("timestamp")},
  status TEXT NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'processing', 'paused', 'completed', 'failed')),
  {stored_instant("process_after", nullable=True)},
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
  {stored_instant("timestamp")},
  kind TEXT NOT NULL CHECK (kind IN ('chat', 'system')),
  platform_id TEXT,
  channel_type TEXT,
  thread_id TEXT,
  content TEXT NOT NULL CHECK (json_valid(content))
);
CREATE TABLE processing_ack(
  message_id TEXT PRIMARY KEY,
  status TEXT NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
  {stored_instant("status_changed")},
  detail TEXT
);
CREATE TABLE session_state(
  key TEXT PRIMARY KEY,
  value TEXT,
  {stored_instant("updated_at")}
);
CREATE TABLE container_state(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  current_tool TEXT,
  tool_timeout_s INTEGER,
  {stored_instant("updated_at")}
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
  {stored_instant("timestamp")},
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

INBOUND = (_INBOUND_V1, _INBOUND_V2, _INBOUND_V3, _INBOUND_V4, _INBOUND_V5, _INBOUND_V6)
OUTBOUND = (_OUTBOUND_V1, _OUTBOUND_V2, _OUTBOUND_V3, _OUTBOUND_V4)
