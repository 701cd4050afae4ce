"""A mail is hostile input, and a mail the watcher trips on is tried again and again, so every mail behind it in
the mailbox waits forever: any sender (the parse comes before the allow-list) must not be able to make one. Was: an
attachment named with 100 four-byte characters (400 bytes, over the file system's 255) failed every write;
multiparts nested 2,000 deep (140 KB) raised RecursionError; a 1 MB Subject took 35 s of parsing, holding the GIL
(quadratic: a 25 MiB one hours)."""

from __future__ import annotations

from email.policy import EmailPolicy
from pathlib import Path
from typing import Any

import pytest

from host.channels import mail_imap, mail_parse

HEAD = b"From: Alice <alice@example.org>\r\nTo: bot@example.org\r\nMessage-ID: <m1@example.org>\r\n" \
       b"MIME-Version: 1.0\r\n"


def _with_attachment(filename_param: bytes) -> bytes:
    return HEAD + b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\n' \
        b"hi\r\n--zz\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; " \
        + filename_param + b"\r\n\r\nabc\r\n--zz--\r\n"


@pytest.mark.parametrize("encoded", ["%F0%9F%98%80" * 200 + ".txt", "%E2%82%AC" * 300, "a" * 300 + ".pdf"])
def test_an_attachment_name_of_any_length_in_bytes_is_saved(tmp_path: Path, encoded: str) -> None:
    parsed = mail_parse.parse(_with_attachment(b"filename*=utf-8''" + encoded.encode()), 20)
    [(name, data)] = parsed.attachments
    assert len(name.encode()) <= 255 - len(" (99)")
    (tmp_path / "inbox").mkdir()
    assert mail_imap.save_attachments(tmp_path, "msg-1", parsed.attachments) == [name]
    assert (tmp_path / "inbox" / "msg-1" / name).read_bytes() == data == b"abc"


def test_multiparts_nested_thousands_deep_are_read_as_a_mail_without_its_body() -> None:
    depth = 3000
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth))
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    raw = HEAD + opening + b"Content-Type: text/plain\r\n\r\nhello\r\n" + closing
    parsed = mail_parse.parse(raw, 20)
    assert (parsed.sender, parsed.message_id, parsed.automatic) == ("alice@example.org", "<m1@example.org>", None)


HUGE = {
    "subject": b"Subject: " + b"word " * 200_000 + b"\r\n",
    "encoded-words": b"Subject: " + b"=?utf-8?q?a?= " * 70_000 + b"\r\n",
    "references": b"References: " + b"<r@example.org> " * 60_000 + b"\r\n",
    "to": b"To: " + b"x@example.org, " * 60_000 + b"\r\n",
    "auto-submitted": b"Auto-Submitted: " + b"auto-replied " * 80_000 + b"\r\n",
}


@pytest.mark.parametrize("header", list(HUGE), ids=list(HUGE))
def test_the_structured_header_parser_never_sees_more_than_a_bounded_value(monkeypatch: pytest.MonkeyPatch,
                                                                            header: str) -> None:
    seen: list[int] = []
    parse_header = EmailPolicy.header_fetch_parse

    def spy(self: EmailPolicy, name: str, value: str) -> Any:
        seen.append(len(value))
        return parse_header(self, name, value)

    monkeypatch.setattr(EmailPolicy, "header_fetch_parse", spy)
    raw = HEAD.replace(b"To: bot@example.org\r\n", b"") + HUGE[header] + b"\r\nbody\r\n"
    parsed = mail_parse.parse(raw, 20)
    assert seen and max(seen) <= mail_parse.MAX_HEADER
    assert parsed.sender == "alice@example.org" and parsed.text == "body"
    if header == "auto-submitted":
        assert parsed.automatic  # still automatic mail, never answered
    if header == "references":
        assert parsed.thread == "<r@example.org>"
