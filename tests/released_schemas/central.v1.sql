-- central.db exactly as the first release created it: schema v1.
-- Frozen on purpose: files in the field have this schema, so every later release must migrate it.
PRAGMA user_version=1;
CREATE TABLE agent_groups(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE COLLATE NOCASE,
  rules TEXT NOT NULL DEFAULT '',
  session_mode TEXT NOT NULL DEFAULT 'shared' CHECK (session_mode IN ('shared', 'per-thread')),
  provider TEXT,
  model TEXT,
  created_at TEXT NOT NULL CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
);
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
);
CREATE INDEX sessions_group ON sessions(agent_group_id, status);
CREATE UNIQUE INDEX sessions_one_thread ON sessions(agent_group_id, thread_key)
  WHERE status = 'active' AND thread_key IS NOT NULL;
