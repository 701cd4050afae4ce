"""Reading a mail as the hostile input it is (issue 17): headers that may be malformed, HTML turned into text by a
parser that runs nothing and fetches nothing, attachments bounded in number and named so no name can leave the
folder they are saved in, and the marks of automatic mail (RFC 3834 and the usual list and bounce headers) an agent
must never answer. Pure functions: no I/O."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser
from typing import Any, cast

MAX_TEXT = 100_000  # characters of body text a row keeps
MAX_NAME = 100  # characters of an attachment's file name
MAX_NAME_BYTES = 240  # of its UTF-8: file systems take 255 bytes a name, and " (2)" may be added
MAX_REFERENCES = 30
MAX_ADDRESS = 254  # characters of an address (RFC 5321's path limit): a longer one is no address anyone has
MAX_HEADER = 16_384  # characters of a header value the structured parser sees (its cost grows with the square)
MAX_FIRST_HEADERS = 64 << 10  # bytes of the header section ``first_look`` reads
MAX_FIRST_HEADER = 2_048  # characters of a header value it parses: a real From is far shorter
MAX_PARTS = 1_000  # MIME parts read (the parser's cost grows with them: 20,000 parts took 11 s); the rest are not
DELIMITER = re.compile(rb"^--", re.MULTILINE)  # every part but the root follows a line that begins so
MESSAGE_ID = re.compile(r"<[^<>\s]{1,500}>")
AUTOMATIC_SENDERS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply", "donotreply")


@dataclass
class Mail:
    message_id: str
    sender: str  # the From address, lower case ('' if there is none or several)
    sender_name: str
    to: list[str]
    subject: str
    text: str
    in_reply_to: str | None
    references: list[str]
    automatic: str | None  # why it is automatic mail, or None
    attachments: list[tuple[str, bytes]] = field(default_factory=list)
    dropped: int = 0  # attachments over the limit, not saved

    @property
    def thread(self) -> str:
        """The conversation's root: the first reference (kept first by every mail client), else the mail replied
        to, else the mail itself. A reply to the agent's answer has it too: the answer carries the references."""
        return self.references[0] if self.references else self.in_reply_to or self.message_id


class _Bounded(EmailPolicy):
    """The default policy, but a header value is cut before it is parsed: a 1 MB Subject took 35 s, 25 MB hours."""

    limit = MAX_HEADER

    def header_fetch_parse(self, name: str, value: str) -> Any:
        return super().header_fetch_parse(name, value[:self.limit])


class _Brief(_Bounded):
    limit = MAX_FIRST_HEADER


POLICY = _Bounded()


def first_look(raw: bytes) -> tuple[str, str | None]:
    """The sender (as ``parse`` finds it) and Message-ID from the first ``MAX_FIRST_HEADERS`` bytes of the header
    section alone, each value cut to ``MAX_FIRST_HEADER``: cheap whatever the mail holds, so a sender off the
    allow-list is refused before the mail is read (``mail_apart``)."""
    end = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=len(raw))
    message = BytesParser(EmailMessage, policy=_Brief()).parsebytes(raw[:min(end, MAX_FIRST_HEADERS)],
                                                                    headersonly=True)
    found = _ids(_header(message, "Message-ID"))
    return _sender(message)[1], found[0] if found else None


def parse(raw: bytes, max_attachments: int) -> Mail:
    raw_read, cut = _first_parts(raw)
    message = _message(raw_read)
    name, sender = _sender(message)
    message_id = _ids(_header(message, "Message-ID"))
    in_reply_to = _ids(_header(message, "In-Reply-To"))
    references = re.findall(MESSAGE_ID, _header(message, "References"))
    if len(references) > MAX_REFERENCES:  # the root and the latest ones, as RFC 5322 suggests trimming
        references = references[:1] + references[-(MAX_REFERENCES - 1):]
    attachments, dropped = _attachments(message, max_attachments)
    return Mail(
        message_id=message_id[0] if message_id else f"<{hashlib.sha256(raw).hexdigest()}@ncl.invalid>",
        sender=sender, sender_name=name,
        to=[address.lower() for _, address in _addresses(message, "To") if len(address) <= MAX_ADDRESS][:50],
        subject=_clean(_header(message, "Subject"))[:500],
        text=(_body(message)[:MAX_TEXT] + (f"\n\n[ncl: this mail has more than {MAX_PARTS} MIME parts; the rest were"
                                            " not read]" if cut else "")).strip(),
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=references,
        automatic=automatic(message, sender),
        attachments=attachments, dropped=dropped,
    )


def _first_parts(raw: bytes) -> tuple[bytes, bool]:
    """The mail up to its ``MAX_PARTS``-th part (cut before the next one's delimiter line; the parser takes a
    multipart left open), and whether anything was cut. Only a multipart is cut; its closing line is not a part."""
    delimiters = DELIMITER.finditer(raw)
    for _ in range(MAX_PARTS):
        if next(delimiters, None) is None:
            return raw, False
    beyond = next(delimiters, None)
    if beyond is None or next(delimiters, None) is None or BytesParser(EmailMessage, policy=POLICY).parsebytes(
            raw, headersonly=True).get_content_maintype() != "multipart":
        return raw, False
    return raw[:beyond.start()], True


def _message(raw: bytes) -> EmailMessage:
    parser = BytesParser(EmailMessage, policy=POLICY)
    try:
        return cast(EmailMessage, parser.parsebytes(raw))
    except RecursionError:  # multiparts nested a thousand deep: the headers are still read, the body is not
        message = parser.parsebytes(raw, headersonly=True)
        message.set_payload("")
        return cast(EmailMessage, message)


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a header the parser chokes on reads as missing, never as a crash of the watcher
        return ""
    return "" if value is None else str(value)


def _ids(text: str) -> list[str]:
    return re.findall(MESSAGE_ID, text)


def _addresses(message: Message, name: str) -> list[tuple[str, str]]:
    try:
        values = message.get_all(name) or []
        return [(n, a) for n, a in getaddresses([str(v) for v in values]) if "@" in a]
    except Exception:
        return []


def _sender(message: Message) -> tuple[str, str]:
    """The one From address (lower case) and its display name; ('', '') when there is none or more than one."""
    found = _addresses(message, "From")
    if len(found) != 1:
        return "", ""
    name, address = found[0]
    return _clean(name)[:200], address.lower()


def automatic(message: Message, sender: str) -> str | None:
    """Why this mail was sent by a machine (never to be answered: that is how agents get into reply loops)."""
    auto = _header(message, "Auto-Submitted").strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto[:40]}"
    precedence = _header(message, "Precedence").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    for name in ("List-Id", "List-Unsubscribe", "List-Post", "X-Autoreply", "X-Autorespond"):
        if _header(message, name):
            return f"{name} header"
    if "Return-Path" in message and parseaddr(_header(message, "Return-Path"))[1] == "":
        return "empty Return-Path"
    if sender.partition("@")[0] in AUTOMATIC_SENDERS:
        return f"sent by {sender.partition('@')[0]}"
    return None


def _body(message: EmailMessage) -> str:
    try:
        part = message.get_body(preferencelist=("plain", "html"))
        if part is None:
            return ""
        content = part.get_content()
    except Exception:
        return ""
    if not isinstance(content, str):
        return ""
    return html_to_text(content) if part.get_content_subtype() == "html" else content.strip()


def _attachments(message: EmailMessage, limit: int) -> tuple[list[tuple[str, bytes]], int]:
    saved: list[tuple[str, bytes]] = []
    names: set[str] = set()
    dropped = 0
    try:
        parts = list(message.iter_attachments())
    except Exception:
        return [], 0
    for number, part in enumerate(parts, 1):
        try:
            data = part.get_payload(decode=True)
            if data is None:  # a mail attached whole (message/rfc822)
                inner = part.get_payload(0) if part.is_multipart() else None
                data = inner.as_bytes() if isinstance(inner, Message) else b""
            filename = part.get_filename() or f"attachment-{number}" + (".eml" if part.is_multipart() else "")
        except Exception:
            continue
        if len(saved) >= limit:
            dropped += 1
            continue
        saved.append((safe_name(filename, names, number), bytes(data)))
    return saved, dropped


def safe_name(name: str, taken: set[str], number: int) -> str:
    """A plain file name for an attachment: no directory part, no '..' or leading dot, no control or path
    characters, at most ``MAX_NAME`` characters with its extension kept, unique among ``taken`` (which it joins)."""
    name = unicodedata.normalize("NFC", str(name)).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c if c.isprintable() and c not in ':*?"<>|' else "_" for c in name).strip().lstrip(".-")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 10:
        stem, ext = name, ""
    stem = stem[:MAX_NAME - len(ext) - 1]
    while len(stem.encode()) + len(ext.encode()) > MAX_NAME_BYTES - 1:  # four-byte characters: fewer of them
        stem = stem[:-1]
    stem = stem or f"attachment-{number}"
    candidate = f"{stem}.{ext}" if ext else stem
    counter = 2
    while candidate.lower() in taken:
        candidate = f"{stem} ({counter}).{ext}" if ext else f"{stem} ({counter})"
        counter += 1
    taken.add(candidate.lower())
    return candidate


def _clean(text: str) -> str:
    """One line of printable text (a header may carry newlines and escapes)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote",
          "pre", "hr", "section", "article", "header", "footer"}
HIDDEN = {"script", "style", "head", "title", "template", "noscript", "svg", "object", "iframe"}


class _Text(HTMLParser):
    """Collects the text a reader would see; scripts, styles and embedded objects are dropped, nothing is loaded
    or run (html.parser only tokenizes)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in HIDDEN:
            self.hidden += 1
        elif tag in BLOCKS:
            self.parts.append("\n- " if tag == "li" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in BLOCKS and tag != "li":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _Text()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser is lenient; whatever it still refuses leaves what it read
        pass
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
