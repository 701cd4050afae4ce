"""What every edge says about bad input in the same words: a blank prompt is refused, and a refused value is one
line ``field: message`` (pydantic's own report spans several lines and names the model, not the mistake).

Pydantic is named for types only: an edge without a model (``ncl chat``'s text) checks without loading it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

BLANK = "must not be empty or only whitespace"


def not_blank(value: str) -> str:
    """A pydantic validator (and a check of its own): text that holds something besides whitespace."""
    if not value.strip():
        raise ValueError(BLANK)
    return value


def check_text(value: Any) -> None:
    """ValueError if a JSON value holds an unpaired surrogate: ``json.loads`` takes ``"\\ud83d"`` alone (a text cut
    inside an emoji), but no UTF-8 text, and so no JSON output of it, can hold one."""
    import json

    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValueError("an unpaired surrogate escape: not text") from None


def check_prompt(value: Any, what: str = "prompt") -> None:
    """The prompt rule for edges without a model (CLI arguments, queue items): ValueError ``what: …``."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} {BLANK}")


def flat(text: str) -> str:
    """``text`` on one line: its line breaks (of every kind ``splitlines`` knows) become spaces."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def one_line(exc: ValidationError) -> str:
    """The first error of ``exc`` as ``field: message``; a validator's own message is kept as it wrote it."""
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"])
    message = str(err.get("ctx", {}).get("error", err["msg"]))
    return flat(f"{where}: {message}" if where else message)
