-- outbound.db exactly as the first release created it: schema v2.
-- Frozen on purpose: files in the field have this schema, so every later release must migrate it.
PRAGMA user_version=2;
CREATE TABLE messages_out(
  id TEXT PRIMARY KEY,
  seq INTEGER UNIQUE CHECK (seq % 2 = 1),
  in_reply_to TEXT,
  timestamp TEXT NOT NULL CHECK (timestamp GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  kind TEXT NOT NULL CHECK (kind IN ('chat', 'system')),
  platform_id TEXT,
  channel_type TEXT,
  thread_id TEXT,
  content TEXT NOT NULL CHECK (json_valid(content))
);
CREATE TABLE processing_ack(
  message_id TEXT PRIMARY KEY,
  status TEXT NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
  status_changed TEXT NOT NULL CHECK (status_changed GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
  detail TEXT
, generation TEXT);
CREATE TABLE session_state(
  key TEXT PRIMARY KEY,
  value TEXT,
  updated_at TEXT NOT NULL CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
);
CREATE TABLE container_state(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  current_tool TEXT,
  tool_timeout_s INTEGER,
  updated_at TEXT NOT NULL CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
);
