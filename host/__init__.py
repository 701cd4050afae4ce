"""The ncl host: sweeps session inboxes, wakes runners, applies their requests; and the ncl CLI."""
