"""The one error type users see: its message is printed as one line and the command exits 1."""


class NclError(Exception):
    """A bad value, an unknown id or a failed precondition, worded for the person who typed it."""
