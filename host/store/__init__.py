"""Storage: every SQL statement of central.db, of the host's side of inbound.db and of its reads of outbound.db."""
