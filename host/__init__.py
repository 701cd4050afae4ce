"""The ncl host: sweeps session inboxes, wakes runners, applies their requests; and the ncl CLI."""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it): ncl --version prints it
