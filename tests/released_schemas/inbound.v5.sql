-- inbound.db as ncl created it from issue 16.4 (answers in the run log) until issue 17 (mail): schema v5.
-- Frozen on purpose: files in the field have this schema, so every later release must migrate it.
PRAGMA user_version=5;
CREATE TABLE messages_in(
  id TEXT PRIMARY KEY,
  seq INTEGER UNIQUE CHECK (seq % 2 = 0),
  kind TEXT NOT NULL CHECK (kind IN ('chat', 'task', 'queue', 'webhook', 'system')),
  timestamp TEXT NOT NULL CHECK (timestamp GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  status TEXT NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'processing', 'paused', 'completed', 'failed')),
  process_after TEXT CHECK (process_after IS NULL OR process_after GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  recurrence TEXT,
  series_id TEXT,
  tries INTEGER NOT NULL DEFAULT 0,
  platform_id TEXT,
  channel_type TEXT,
  thread_id TEXT,
  content TEXT NOT NULL CHECK (json_valid(content))
, trigger INTEGER NOT NULL DEFAULT 1 CHECK (trigger IN (0, 1)), on_wake INTEGER NOT NULL DEFAULT 0 CHECK (on_wake IN (0, 1)), zone TEXT);
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
  delivered_at TEXT NOT NULL CHECK (delivered_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  status TEXT NOT NULL DEFAULT 'delivered',
  detail TEXT
);
CREATE INDEX messages_in_due ON messages_in(status, process_after);
CREATE INDEX messages_in_series ON messages_in(series_id);
CREATE UNIQUE INDEX messages_in_one_live_recurrence ON messages_in(series_id)
  WHERE recurrence IS NOT NULL AND status IN ('pending', 'processing', 'paused');
CREATE TABLE task_runs(
  id TEXT PRIMARY KEY,
  series_id TEXT NOT NULL,
  message_id TEXT,
  scheduled_for TEXT CHECK (scheduled_for IS NULL OR scheduled_for GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  started_at TEXT CHECK (started_at IS NULL OR started_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  finished_at TEXT CHECK (finished_at IS NULL OR finished_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  duration_ms INTEGER,
  outcome TEXT NOT NULL
    CHECK (outcome IN ('ran', 'skipped', 'gate_error', 'failed', 'missed', 'cancelled')),
  detail TEXT
, answer_id TEXT, answer_excerpt TEXT
  CHECK (answer_excerpt IS NULL OR length(answer_excerpt) <= 500), input_tokens INTEGER
  CHECK (input_tokens IS NULL OR (typeof(input_tokens) = 'integer' AND input_tokens >= 0)), output_tokens INTEGER
  CHECK (output_tokens IS NULL OR (typeof(output_tokens) = 'integer' AND output_tokens >= 0)));
CREATE INDEX task_runs_series ON task_runs(series_id, finished_at);
CREATE INDEX delivered_status_seq ON delivered(status, seq);
CREATE INDEX messages_in_recurring ON messages_in(status) WHERE recurrence IS NOT NULL;
