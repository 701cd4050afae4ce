"""The Matrix channel's rules on plain data (host/channels/matrix_wire.py), its settings and its wiring; the
channel against a real homeserver is tests/matrix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_kit import Ncl

from host.channels import matrix_wire as wire
from host.settings import Settings, SettingsError
from schemas import ids


def test_an_event_has_one_message_id_whatever_its_timestamp_says() -> None:
    first = wire.message_id("$abc:ncl.test", 1_781_182_800_000)
    assert first == wire.message_id("$abc:ncl.test", 1_781_182_800_000) and ids.is_id(first, "msg")
    assert first != wire.message_id("$abd:ncl.test", 1_781_182_800_000)
    for hostile in (0, -5, 10**20, "soon", None, True, 1.5):
        assert ids.is_id(wire.message_id("$abc:ncl.test", hostile), "msg")


def test_the_allow_list_takes_user_ids_and_whole_servers_only() -> None:
    allow = ("@alice:a.test", "@*:b.test")
    assert wire.allowed("@alice:a.test", allow) and wire.allowed("@zed:b.test", allow)
    assert not wire.allowed("@bob:a.test", allow) and not wire.allowed("@zed:evil-b.test", allow)
    assert not wire.allowed("@zed:b.test.evil", allow) and not wire.allowed("", allow)
    assert not wire.allowed("@alice:a.test", ())


@pytest.mark.parametrize(("content", "named"), [
    ({"body": "hi all"}, False),
    ({"body": "hi", "m.mentions": {"user_ids": ["@bot:s.test"]}}, True),
    ({"body": "@bot:s.test what now"}, True),
    ({"body": "Helper: what now"}, True),
    ({"body": "helpers unite"}, False),
    ({"body": "x", "formatted_body": '<a href="https://matrix.to/#/@bot:s.test">Helper</a>'}, True),
    ({"body": "x", "m.mentions": "junk"}, False),
])
def test_a_mention_is_the_bot_named(content: dict[str, object], named: bool) -> None:
    assert wire.mentions(content, "@bot:s.test", "Helper") is named


def test_text_is_cut_and_files_are_named_safely() -> None:
    assert wire.cut("x" * 20, 10) == "x" * 10 + "… [cut at 10 characters]"
    assert wire.cut({"not": "text"}, 10) == ""
    assert wire.safe_file_name("../../etc/passwd") == "passwd"
    assert wire.safe_file_name(".bashrc") == "bashrc" and wire.safe_file_name("a b/c d$.txt") == "c d_.txt"
    assert wire.safe_file_name(None) == "file" and wire.safe_file_name("..") == "file"


def test_a_reply_is_markdown_rendered_and_raw_html_shown_as_text() -> None:
    content = wire.text_content("**bold** <script>x</script>")
    assert content["body"] == "**bold** <script>x</script>"
    assert "<strong>bold</strong>" in content["formatted_body"]
    assert "<script>" not in content["formatted_body"] and "&lt;script&gt;" in content["formatted_body"]
    assert wire.in_thread(dict(content), "$root")["m.relates_to"]["event_id"] == "$root"
    assert wire.txn_id("msg-1-a", 2) == wire.txn_id("msg-1-a", 2) != wire.txn_id("msg-1-a", 1)


def test_state_is_written_whole_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "matrix" / "state.json"
    state = wire.State("@bot:s.test", next_batch="s1", last_event_id="$e", access_token="t", device_id="D")
    assert state.decline("!r:s.test") and not state.decline("!r:s.test")
    state.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.listdir(path.parent) == ["state.json"]
    assert wire.State.load(path, "@bot:s.test") == state
    assert wire.State.load(path, "@other:s.test") == wire.State("@other:s.test")  # another bot: a fresh start
    path.write_text(json.dumps({"user_id": "@bot:s.test", "next_batch": 5, "declined": ["!a", 3]}))
    assert wire.State.load(path, "@bot:s.test") == wire.State("@bot:s.test", declined=["!a"])
    path.write_text("{not json")
    assert wire.State.load(path, "@bot:s.test") == wire.State("@bot:s.test")


def test_matrix_settings_are_checked() -> None:
    read = Settings.read({"NCL_MATRIX_HOMESERVER": "http://127.0.0.1:8008", "NCL_MATRIX_USER_ID": "@bot:s.test",
                          "NCL_MATRIX_ALLOW": " @alice:s.test, @*:t.test ", "NCL_MATRIX_PASSWORD": "pw"})
    assert read.matrix_allowed == ("@alice:s.test", "@*:t.test") and "pw" not in repr(read)
    for name, value in [("NCL_MATRIX_USER_ID", "bot"), ("NCL_MATRIX_HOMESERVER", "matrix.org"),
                        ("NCL_MATRIX_ALLOW", "@alice:s.test,alice"), ("NCL_MATRIX_ALLOW", "@*:*")]:
        with pytest.raises(SettingsError, match=name):
            Settings.read({name: value})


def test_groups_are_wired_to_a_bot_on_create_and_update(ncl: Ncl) -> None:
    made = ncl("groups", "create", "demo", "--channel", "cli", "--channel", "matrix:@bot:s.test", "--json")
    assert json.loads(made.out)["channels"] == ["cli", "matrix:@bot:s.test"]
    done = ncl("groups", "create", "other", "--channel", "matrix:@bot:s.test")
    assert done.code == 1 and "already wired to group ag-demo" in done.err
    done = ncl("groups", "create", "bad", "--channel", "matrix:bot")
    assert done.code == 1 and "matrix:@bot:server" in done.err
    ncl("groups", "create", "two", "--channel", "cli")
    done = ncl("groups", "update", "two", "--channel", "matrix:@bot2:s.test", "--json")
    assert json.loads(done.out)["channels"] == ["cli", "matrix:@bot2:s.test"]
    done = ncl("groups", "update", "two", "--remove-channel", "cli", "--rules", "be brief", "--json")
    assert json.loads(done.out)["channels"] == ["matrix:@bot2:s.test"]
    done = ncl("groups", "update", "two", "--remove-channel", "webhook:x")
    assert done.code == 1 and "has no channel webhook:x" in done.err
