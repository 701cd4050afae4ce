"""SQL shared by host and runner, so both decide "due" the same way (DESIGN §6.1, §12.5)."""

# Named parameter :now is the stored UTC text of the instant. Filters apply before any LIMIT.
DUE = "status = 'pending' AND (process_after IS NULL OR process_after <= :now)"
