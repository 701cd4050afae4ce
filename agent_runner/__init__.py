"""The agent runner: what runs inside a session's container (DESIGN §7)."""
