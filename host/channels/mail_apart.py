"""A mail read in a process of its own (``read``), ended after ``NCL_MAIL_READ_S`` or past ``READ_MEMORY`` bytes:
the standard library's parsers slow down with the square of some shapes (unclosed HTML tags, long address lists: a
100 KB mail took minutes) and hold gigabytes for others (25 MB of header lines without a name: 5 GB), and a mail is
whatever anyone sent. What comes back is JSON, never a pickle: the reading process has read the mail.

The process is ``python -m host.channels.mail_apart MAX_ATTACHMENTS SECONDS MEMORY``, the mail on its stdin, the
``Mail`` as JSON on its stdout (attachments in base64)."""

from __future__ import annotations

import base64
import json
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from host.channels.mail_parse import Mail, parse

READ_MEMORY = 2 << 30  # bytes of address space the reading process may map (a 25 MB mail needs ~400 MB)


# The reading process runs this very code, wherever the host found it (an install, a checkout on PYTHONPATH), and
# gets none of the host's environment (its secrets among it): it reads what anyone sent.
_ROOT = str(Path(__file__).resolve().parents[2])


class Unreadable(Exception):
    """A mail whose reading ran past its time or memory, or failed: skipped, never tried again."""


def read(raw: bytes, max_attachments: int, seconds: float, memory: int = READ_MEMORY) -> Mail:
    """``mail_parse.parse`` of ``raw``, in a process of its own given ``seconds`` (see the module). A real mail is
    read in well under a second, 25 MB of base64 in about 3 s."""
    try:
        done = subprocess.run([sys.executable, "-m", __name__, str(max_attachments), str(seconds), str(memory)],
                              input=raw, capture_output=True, timeout=seconds, check=False, env={"PYTHONPATH": _ROOT})
    except subprocess.TimeoutExpired:
        raise Unreadable(f"reading it took longer than {seconds:g} s (NCL_MAIL_READ_S)") from None
    if done.returncode != 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise Unreadable(f"reading it failed: {last[0][:300]}")
    return _mail(done.stdout)


def _mail(answer: bytes) -> Mail:
    """The reading process's answer, read as carefully as the mail: it is what the mail made of it."""
    try:
        data = json.loads(answer)
        data["attachments"] = [(name, base64.b64decode(content)) for name, content in data["attachments"]]
        return Mail(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise Unreadable(f"reading it gave no mail: {type(exc).__name__}") from None


def _main() -> None:
    memory = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))  # a MemoryError past it, never the machine's OOM killer
    signal.alarm(int(float(sys.argv[2])) + 5)  # ended even if the host that waits for it is gone
    mail = parse(sys.stdin.buffer.read(), int(sys.argv[1]))
    found: dict[str, Any] = {**mail.__dict__,
                             "attachments": [(n, base64.b64encode(c).decode()) for n, c in mail.attachments]}
    sys.stdout.buffer.write(json.dumps(found).encode())


if __name__ == "__main__":
    _main()
