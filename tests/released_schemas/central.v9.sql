-- central.db as the release that closed a queue job's own session once done created it: schema v9.
-- Frozen on purpose: files in the field have this schema, so every later release must migrate it.
PRAGMA user_version=9;
CREATE TABLE agent_groups(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE COLLATE NOCASE,
  rules TEXT NOT NULL DEFAULT '',
  session_mode TEXT NOT NULL DEFAULT 'shared' CHECK (session_mode IN ('shared', 'per-thread')),
  provider TEXT,
  model TEXT,
  created_at TEXT NOT NULL CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
, allow_server_tools INTEGER NOT NULL DEFAULT 0 CHECK (allow_server_tools IN (0, 1)), admin INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1)));
CREATE TABLE wirings(
  channel TEXT NOT NULL,
  agent_group_id TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  token_hash TEXT,
  created_at TEXT NOT NULL CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  PRIMARY KEY (channel, agent_group_id)
);
CREATE UNIQUE INDEX wirings_one_group ON wirings(channel) WHERE channel <> 'cli';
CREATE TABLE sessions(
  id TEXT PRIMARY KEY,
  agent_group_id TEXT NOT NULL,
  thread_key TEXT,
  status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
  created_at TEXT NOT NULL CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  last_active_at TEXT NOT NULL CHECK (last_active_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
, one_job INTEGER NOT NULL DEFAULT 0 CHECK (one_job IN (0, 1)));
CREATE INDEX sessions_group ON sessions(agent_group_id, status);
CREATE UNIQUE INDEX sessions_one_thread ON sessions(agent_group_id, thread_key)
  WHERE status = 'active' AND thread_key IS NOT NULL;
CREATE TABLE scheduled_tasks(
  id TEXT PRIMARY KEY,
  name TEXT,
  schedule TEXT NOT NULL,
  target_kind TEXT NOT NULL CHECK (target_kind IN ('queue', 'container', 'host')),
  spec TEXT NOT NULL CHECK (json_valid(spec)),
  active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
  next_run TEXT CHECK (next_run IS NULL OR next_run GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  created_at TEXT NOT NULL CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  updated_at TEXT NOT NULL CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
, zone TEXT);
CREATE INDEX scheduled_tasks_due ON scheduled_tasks(active, next_run);
CREATE TABLE scheduled_task_runs(
  id TEXT PRIMARY KEY,
  task_id TEXT NOT NULL REFERENCES scheduled_tasks(id) ON DELETE CASCADE,
  status TEXT NOT NULL
    CHECK (status IN ('running', 'succeeded', 'failed', 'queued', 'missed', 'timeout')),
  scheduled_for TEXT NOT NULL CHECK (scheduled_for GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  started_at TEXT CHECK (started_at IS NULL OR started_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  finished_at TEXT CHECK (finished_at IS NULL OR finished_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  duration_ms INTEGER,
  exit_code INTEGER,
  queued_message_id TEXT,
  output_tail TEXT,
  error TEXT,
  missed_slots INTEGER
, queued_session_id TEXT);
CREATE INDEX scheduled_task_runs_task ON scheduled_task_runs(task_id, scheduled_for);
CREATE UNIQUE INDEX scheduled_task_runs_once ON scheduled_task_runs(task_id, scheduled_for)
  WHERE status <> 'missed';
CREATE TABLE task_ids(
  id TEXT PRIMARY KEY,
  agent_group_id TEXT NOT NULL,
  session_id TEXT NOT NULL
);
CREATE TABLE group_usage(
  agent_group_id TEXT NOT NULL,
  day TEXT NOT NULL CHECK (day GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
  requests INTEGER NOT NULL DEFAULT 0,
  input_tokens INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (agent_group_id, day)
);
CREATE TABLE session_index(
  session_id TEXT PRIMARY KEY,
  files TEXT NOT NULL,
  next_due TEXT CHECK (next_due IS NULL OR next_due = '' OR next_due GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  context TEXT NOT NULL
) WITHOUT ROWID;
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
  created_at TEXT NOT NULL CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
);
CREATE TABLE IF NOT EXISTS "mail_seen"(
  mailbox TEXT NOT NULL,
  uidvalidity INTEGER NOT NULL,
  uid INTEGER NOT NULL,
  message_id TEXT NOT NULL,
  outcome TEXT NOT NULL CHECK (outcome IN ('trying', 'taking', 'taken', 'refused', 'automatic', 'duplicate',
                                           'too_large', 'skipped')),
  session_id TEXT,
  row_id TEXT,
  seen_at TEXT NOT NULL CHECK (seen_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  tries INTEGER NOT NULL DEFAULT 0 CHECK (typeof(tries) = 'integer' AND tries >= 0),
  reason TEXT,
  PRIMARY KEY (mailbox, uidvalidity, uid)
);
CREATE INDEX mail_seen_message ON mail_seen(mailbox, message_id);
