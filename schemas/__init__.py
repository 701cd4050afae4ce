"""The contract shared by host and runner: row models, DDL, time and id helpers. No I/O."""
