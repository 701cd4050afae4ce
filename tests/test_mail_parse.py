"""Issue 17: a mail is hostile input (host/channels/mail_parse.py). HTML becomes text with nothing run or
fetched, attachment names cannot leave their folder, their number is bounded, automatic mail is recognised, and
threading reads References / In-Reply-To."""

from __future__ import annotations

import errno
import imaplib
import sqlite3
from email.message import EmailMessage

import pytest

from host.channels import mail_apart, mail_imap, mail_parse
from host.channels.mail_imap import save_attachments
from host.files import confined


def raw(**headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = headers.pop("From", "Alice <Alice@Example.org>")
    message["To"] = "agent@example.org"
    message["Subject"] = headers.pop("Subject", "Hello")
    message["Message-ID"] = headers.pop("Message_ID", "<m1@example.org>")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("plain words")
    return message


def test_headers_text_and_thread() -> None:
    mail = mail_parse.parse(raw(Subject="Hi\x1b[31m there").as_bytes(), 5)
    assert (mail.sender, mail.sender_name, mail.to) == ("alice@example.org", "Alice", ["agent@example.org"])
    assert mail.subject == "Hi [31m there"  # one printable line: no escape reaches a terminal or the prompt
    assert (mail.text, mail.message_id, mail.thread, mail.automatic) == ("plain words", "<m1@example.org>",
                                                                        "<m1@example.org>", None)
    reply = mail_parse.parse(raw(In_Reply_To="<a2@x>", References="<root@x> <a1@x> <a2@x>").as_bytes(), 5)
    assert (reply.in_reply_to, reply.references, reply.thread) == ("<a2@x>", ["<root@x>", "<a1@x>", "<a2@x>"],
                                                                   "<root@x>")
    assert mail_parse.parse(raw(In_Reply_To="<a2@x>").as_bytes(), 5).thread == "<a2@x>"
    many = raw()
    del many["To"]
    many["To"] = ", ".join([f"{'x' * 300}@example.org", "bob@example.org"])  # no one has a 300-character address
    assert mail_parse.parse(many.as_bytes(), 5).to == ["bob@example.org"]
    no_id = raw()
    del no_id["Message-ID"]
    assert mail_parse.parse(no_id.as_bytes(), 5).message_id.endswith("@ncl.invalid>")  # the same bytes, the same id


def test_html_becomes_text_without_scripts_or_styles() -> None:
    message = raw()
    message.set_content("<html><head><style>p{color:red}</style><script>alert(1)</script></head><body>"
                        "<p>Hello &amp; welcome</p><ul><li>one</li><li>two</li></ul>"
                        "<img src='http://tracker.example/x.png'><a href='http://evil.example'>link</a></body>",
                        subtype="html")
    text = mail_parse.parse(message.as_bytes(), 5).text
    assert text == "Hello & welcome\n\n- one\n- two\nlink"


@pytest.mark.parametrize(("headers", "why"), [
    ({"Auto_Submitted": "auto-replied"}, "Auto-Submitted: auto-replied"),
    ({"Precedence": "bulk"}, "Precedence: bulk"),
    ({"Precedence": "junk"}, "Precedence: junk"),
    ({"List_Id": "<news.example.org>"}, "List-Id header"),
    ({"Return_Path": "<>"}, "empty Return-Path"),
    ({"From": "MAILER-DAEMON@example.org"}, "sent by mailer-daemon"),
])
def test_automatic_mail_is_recognised(headers: dict[str, str], why: str) -> None:
    assert mail_parse.parse(raw(**headers).as_bytes(), 5).automatic == why


def test_a_person_is_not_automatic() -> None:
    assert mail_parse.parse(raw(Auto_Submitted="no", Return_Path="<alice@example.org>").as_bytes(), 5).automatic is None


def test_attachment_names_are_plain_unique_and_bounded(tmp_path: object) -> None:
    message = raw()
    names = ["../../etc/passwd", "..\\..\\boot.ini", ".hidden", "a\x00b\tc.txt", "same.txt", "SAME.txt",
             "x" * 300 + ".pdf", "/abs/path.png"]
    for name in names:
        message.add_attachment(b"data", maintype="application", subtype="octet-stream", filename=name)
    mail = mail_parse.parse(message.as_bytes(), 7)
    saved = [name for name, _ in mail.attachments]
    assert saved[:6] == ["passwd", "boot.ini", "hidden", "a_b_c.txt", "same.txt", "SAME (2).txt"]
    assert len(saved[6]) == mail_parse.MAX_NAME and saved[6].endswith(".pdf")
    assert mail.dropped == 1  # the 8th is over the limit of 7
    assert all("/" not in name and not name.startswith(".") for name in saved)


def test_attachments_are_written_only_inside_the_rows_folder(tmp_path: pytest.TempPathFactory) -> None:
    folder = tmp_path / "session"  # type: ignore[operator]
    (folder / "inbox").mkdir(parents=True)
    assert save_attachments(folder, "msg-1", [("a.txt", b"A")]) == ["a.txt"]
    assert (folder / "inbox" / "msg-1" / "a.txt").read_bytes() == b"A"
    outside = tmp_path / "outside"  # type: ignore[operator]
    outside.mkdir()
    (folder / "inbox" / "msg-2").symlink_to(outside)  # a runner planted a link where the next row's folder goes
    with pytest.raises(confined.Refused):
        save_attachments(folder, "msg-2", [("b.txt", b"B")])
    assert list(outside.iterdir()) == []


def _parts(count: int) -> bytes:
    parts = "".join(f"--B\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=p{i}.txt\r\n\r\n"
                    f"part {i}\r\n" for i in range(count))
    return (f"From: a@example.org\r\nSubject: many\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/mixed; boundary=B\r\n\r\n{parts}--B--\r\n").encode()


def test_a_mail_of_thousands_of_parts_is_read_up_to_max_parts_with_a_note() -> None:
    """20,000 parts took 11 s to parse (in the watcher's thread, holding the GIL): only the first MAX_PARTS are."""
    whole = mail_parse.parse(_parts(mail_parse.MAX_PARTS), 5000)
    assert len(whole.attachments) == mail_parse.MAX_PARTS and "not read" not in whole.text
    cut = mail_parse.parse(_parts(20_000), 5000)
    assert len(cut.attachments) == mail_parse.MAX_PARTS
    assert cut.attachments[-1] == (f"p{mail_parse.MAX_PARTS - 1}.txt", f"part {mail_parse.MAX_PARTS - 1}".encode())
    assert cut.text == f"[ncl: this mail has more than {mail_parse.MAX_PARTS} MIME parts; the rest were not read]"
    assert cut.subject == "many" and cut.sender == "a@example.org"


def test_a_plain_mail_with_many_lines_beginning_with_dashes_is_not_cut() -> None:
    text = "-- a line\r\n" * (mail_parse.MAX_PARTS + 500)
    mail = mail_parse.parse(f"From: a@example.org\r\nSubject: dashes\r\n\r\n{text}".encode(), 5)
    assert mail.text.count("-- a line") == mail_parse.MAX_PARTS + 500 and "not read" not in mail.text


@pytest.mark.parametrize("exc,hosts", [
    (OSError(errno.ENOSPC, "No space left on device"), True), (sqlite3.OperationalError("disk I/O error"), True),
    (imaplib.IMAP4.abort("socket error"), True), (ConnectionResetError(), True), (TimeoutError(), True),
    (OSError(errno.ENAMETOOLONG, "File name too long"), False), (confined.Refused("inbox", "a link", link=True), False),
    (RecursionError(), False), (ValueError("bad header"), False)])
def test_only_a_failure_that_is_the_mails_counts_against_it(exc: BaseException, hosts: bool) -> None:
    assert mail_imap._not_the_mail(exc) is hosts


def test_a_first_look_reads_the_sender_from_the_first_64_kib_of_headers_alone() -> None:
    """What decides whether a mail is read at all costs one bounded look: the sender and Message-ID as ``parse``
    finds them, from at most ``MAX_FIRST_HEADERS`` bytes of headers, each value cut to ``MAX_FIRST_HEADER``."""
    plain = raw()
    assert mail_parse.first_look(plain.as_bytes()) == ("alice@example.org", "<m1@example.org>")
    late = b"X-Pad: " + b"p" * (mail_parse.MAX_FIRST_HEADERS + 10) + b"\r\n" + plain.as_bytes()
    assert mail_parse.parse(late, 5).sender == "alice@example.org"
    assert mail_parse.first_look(late) == ("", None)  # past the bound: not looked for, so the mail is refused
    commas = b"From: " + b"," * mail_parse.MAX_FIRST_HEADER + b"alice@example.org\r\n\r\nhi"
    assert mail_parse.first_look(commas) == ("", None)
    nameless = b"From: alice@example.org\r\n" + b":\n" * (1 << 20) + b"\n"  # 2 MB of header lines without a name
    assert mail_parse.first_look(nameless)[0] == "alice@example.org"


def test_a_mail_is_read_apart_within_its_time_and_memory() -> None:
    """``mail_apart.read`` gives what ``parse`` gives, attachments' bytes and all, or ``Unreadable``: a mail whose
    reading outlasts its seconds (unclosed HTML tags: minutes in html.parser) or needs more memory than allowed."""
    message = raw()
    message.add_attachment(bytes(range(256)) * 64, maintype="application", subtype="octet-stream", filename="b.bin")
    assert mail_apart.read(message.as_bytes(), 5, 20.0) == mail_parse.parse(message.as_bytes(), 5)
    bomb = b"From: alice@example.org\r\nContent-Type: text/html\r\n\r\n" + b"<a " * 200_000
    with pytest.raises(mail_apart.Unreadable, match=r"took longer than 1 s \(NCL_MAIL_READ_S\)"):
        mail_apart.read(bomb, 5, 1.0)
    with pytest.raises(mail_apart.Unreadable, match="gave no mail"):  # its answer is checked as any input is
        mail_apart._mail(b'{"sender": "a@example.org"}')
    big = raw()
    big.add_attachment(b"x" * (20 << 20), maintype="application", subtype="octet-stream", filename="big.bin")
    with pytest.raises(mail_apart.Unreadable, match="MemoryError"):
        mail_apart.read(big.as_bytes(), 5, 20.0, memory=150 << 20)
