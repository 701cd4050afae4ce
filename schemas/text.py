"""Text shown to a person in a bounded space: a table cell, a list line, a mail's subject."""

from __future__ import annotations


def one_line(text: str, most: int) -> str:
    """``text`` on one line (each run of white space one space), cut to ``most`` characters with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= most else line[:most - 1] + "…"
