"""The host's small HTTP/1.1 server parts: the wire format, the accept loop, throttled logs."""
