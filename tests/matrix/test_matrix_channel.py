"""The Matrix channel against a real Synapse (tests/matrix/conftest.py): a running ``ncl host run`` is the bot,
a person in a room is matrix-nio. Issue 18's acceptance, end to end."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2e_scenario import BlockingFake
from matrix_kit import Bot, Homeserver, Human, body_of, from_bot, said

from host.channels.matrix import TYPING_MS


async def test_a_person_chats_with_the_agent_in_a_room(synapse: Homeserver, humans: list[Human],
                                                         tmp_path: Path) -> None:
    alice = synapse.register("alice1")
    bot = Bot(synapse, tmp_path, "bot1", allow=alice)
    with bot.host() as host:
        human = await Human.login(synapse, alice)
        humans.append(human)
        room = await human.room(bot.user_id)
        host.wait_for_action("matrix_joined", 60)
        await human.say(room, "hello **there**")
        reply = await human.wait_for(lambda e: e["room_id"] == room and e.get("sender") == bot.user_id
                                     and body_of(e).startswith("mock:"))
    assert reply["content"]["body"] == "mock: hello **there**"
    assert reply["content"]["format"] == "org.matrix.custom.html"
    assert "<strong>there</strong>" in reply["content"]["formatted_body"]
    [row] = bot.rows()
    assert (row["sender_id"], row["sender"], row["text"], row["trigger"]) == (alice, "alice1", "hello **there**", 1)
    assert (row["channel_type"], row["platform_id"], row["key"]) == (f"matrix:{bot.user_id}", room,
                                                                     f"matrix:{bot.user_id}/{room}")


def test_doctor_checks_the_login(synapse: Homeserver, tmp_path: Path) -> None:
    bot = Bot(synapse, tmp_path, "bot2", allow="")
    done = bot.env.ncl("doctor", "--json")
    [check] = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "matrix"]
    assert check["level"] == "ok" and f"as {bot.user_id}" in check["detail"], check
    bot.env.vars["NCL_MATRIX_PASSWORD"] = "wrong"
    done = bot.env.ncl("doctor", "--json")
    [check] = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "matrix"]
    assert done.returncode == 1 and check["level"] == "fail" and "refused" in check["detail"], check
    del bot.env.vars["NCL_MATRIX_PASSWORD"]
    done = bot.env.ncl("doctor", "--json")
    [check] = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "matrix"]
    assert check["detail"] == "neither NCL_MATRIX_ACCESS_TOKEN nor NCL_MATRIX_PASSWORD is set"


async def test_a_host_killed_between_sync_and_commit_neither_loses_nor_repeats(
        synapse: Homeserver, humans: list[Human], tmp_path: Path) -> None:
    alice = synapse.register("alice3")
    bot = Bot(synapse, tmp_path, "bot3", allow=alice)
    human = await Human.login(synapse, alice)
    humans.append(human)
    with bot.host() as host:
        room = await human.room(bot.user_id)
        host.wait_for_action("matrix_joined", 60)
    # SIGKILL with the message synced but not written, then written but the sync token not stored.
    for point, text in (("before_commit", "one"), ("after_commit", "two")):
        with bot.host(NCL_TEST_MATRIX_STALL=point) as host:
            await human.say(room, text)
            host.wait_for_action("matrix_stalled", 60)
        assert host.proc.returncode == -signal.SIGKILL
    with bot.host() as host:
        await human.wait_for(from_bot(room, bot, said("mock: two")))
        await human.say(room, "three")  # answered after any repeat of the first two would have been
        await human.wait_for(from_bot(room, bot, said("mock: three")))
    rows = bot.rows()
    assert [(r["text"], r["status"]) for r in rows] == [("one", "completed"), ("two", "completed"),
                                                        ("three", "completed")]
    # "one" and "two" may both wait when the runner starts: one batch, one answer (the mock's is to its last message).
    assert [body_of(e) for e in human.messages(room, bot.user_id)] in (["mock: one", "mock: two", "mock: three"],
                                                                      ["mock: two", "mock: three"])
    state = json.loads((bot.env.data_dir / "matrix" / "state.json").read_text())
    assert state["next_batch"] and state["last_event_id"] == human.messages(room, alice)[-1]["event_id"]


async def test_group_rooms_files_and_a_task_scheduled_by_chatting(
        synapse: Homeserver, humans: list[Human], tmp_path: Path) -> None:
    alice, bob = synapse.register("alice5"), synapse.register("bob5")
    bot = Bot(synapse, tmp_path, "bot5", allow=f"{alice},{bob}")
    a, b = await Human.login(synapse, alice), await Human.login(synapse, bob)
    humans += [a, b]
    with bot.host() as host:
        room = await a.room(bot.user_id, bob)
        host.wait_for_action("matrix_joined", 60)
        await b.sync()  # joins
        await a.wait_for(lambda e: e["room_id"] == room and e.get("state_key") == bob
                         and e["content"].get("membership") == "join")
        await a.say(room, "just talking among ourselves")
        mention = {"m.mentions": {"user_ids": [bot.user_id]}}
        await b.say(room, "bot5: what did alice say?")
        await a.wait_for(from_bot(room, bot, said("mock: bot5: what did alice say?")))
        # A file into the room: kept in the session's workspace (context only: nobody named the bot).
        from nio import UploadResponse

        data = b"line one\nline two\n"
        up, _ = await a.client.upload(io.BytesIO(data), content_type="text/plain", filename="notes.txt",
                                      filesize=len(data))
        assert isinstance(up, UploadResponse)
        await a.say(room, "notes.txt", msgtype="m.file", url=up.content_uri, filename="notes.txt",
                    info={"size": len(data), "mimetype": "text/plain"})
        path = await _row_text(bot, lambda text: text.startswith("[file "))
        stored = path.split(" ")[1]
        assert path == f"[file {stored} (18 bytes, text/plain)]" and stored.startswith("files/")
        # The agent sends it back (a slash command runs its send_file tool): an m.file the person can fetch.
        await a.say(room, f'/send_file {{"path": "{stored}"}}', **mention)
        sent = await a.wait_for(from_bot(room, bot, lambda e: e["content"].get("msgtype") == "m.file"))
        assert sent["content"]["body"] == stored.split("/")[1] and sent["content"]["info"]["size"] == len(data)
        got = await a.client.download(mxc=sent["content"]["url"])
        assert got.body == data
        # Scheduling by chatting: the task lives in this room's session and its answer comes to the room.
        await a.say(room, '/schedule_task {"prompt": "post the daily report"}', **mention)
        await a.wait_for(from_bot(room, bot, said("mock: post the daily report")))
    rows = bot.rows()
    assert len({r["session"] for r in rows}) == 1
    assert [(r["text"], r["trigger"]) for r in rows if r["kind"] == "chat"][:2] == [
        ("just talking among ourselves", 0), ("bot5: what did alice say?", 1)]
    [task] = [r for r in rows if r["kind"] == "task"]
    assert task["prompt"] == "post the daily report" and task["platform_id"] == room
    replies = [body_of(e) for e in a.messages(room, bot.user_id)]
    assert "mock: just talking among ourselves" not in replies and len(replies) == len(set(replies))


async def _row_text(bot: Bot, wanted: Callable[[str], bool], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r["text"] for r in bot.rows() if r["kind"] == "chat" and wanted(str(r.get("text")))]
        if found:
            return str(found[0])
        await asyncio.sleep(0.2)
    raise AssertionError(f"no such row within {timeout} s: {bot.rows()}")


def in_thread_of(root: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["content"].get("m.relates_to", {}).get("rel_type") == "m.thread" \
        and e["content"]["m.relates_to"].get("event_id") == root


async def test_threads_are_sessions_of_their_own_in_per_thread_mode(
        synapse: Homeserver, humans: list[Human], tmp_path: Path) -> None:
    alice = synapse.register("alice6")
    bot = Bot(synapse, tmp_path, "bot6", allow=alice, mode="per-thread")
    human = await Human.login(synapse, alice)
    humans.append(human)
    with bot.host() as host:
        room = await human.room(bot.user_id)
        host.wait_for_action("matrix_joined", 60)
        roots = []
        for name in "ab":  # one at a time: the mock answers a batch's last message
            roots.append(await human.say(room, f"root {name}"))
            await human.wait_for(from_bot(room, bot, said(f"mock: root {name}")))
        for name, root in (("a", roots[0]), ("b", roots[1]), ("a again", roots[0])):
            await human.say(room, f"in {name}", **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}})
            reply = await human.wait_for(from_bot(room, bot, said(f"mock: in {name}")))
            assert in_thread_of(root)(reply), reply
    main = [e for e in human.messages(room, bot.user_id) if body_of(e).startswith("mock: root")]
    assert len(main) == 2 and not [e for e in main if "m.relates_to" in e["content"]]
    base = f"matrix:{bot.user_id}/{room}"
    assert [(r["text"], r["key"]) for r in bot.rows()] == [
        ("root a", base), ("root b", base), ("in a", f"{base}/{roots[0]}"), ("in a again", f"{base}/{roots[0]}"),
        ("in b", f"{base}/{roots[1]}")]
    assert [body_of(e) for e in human.messages(room, bot.user_id)] == [
        "mock: root a", "mock: root b", "mock: in a", "mock: in b", "mock: in a again"]


async def test_an_image_the_agent_sends_arrives_as_an_image(
        synapse: Homeserver, humans: list[Human], tmp_path: Path) -> None:
    alice = synapse.register("alice7")
    bot = Bot(synapse, tmp_path, "bot7", allow=alice)
    human = await Human.login(synapse, alice)
    humans.append(human)
    from nio import UploadResponse

    png = PNG_1X1
    with bot.host() as host:
        room = await human.room(bot.user_id)
        host.wait_for_action("matrix_joined", 60)
        up, _ = await human.client.upload(io.BytesIO(png), content_type="image/png", filename="dot.png",
                                          filesize=len(png))
        assert isinstance(up, UploadResponse)
        await human.say(room, "dot.png", msgtype="m.image", url=up.content_uri,
                        info={"size": len(png), "mimetype": "image/png", "w": 1, "h": 1})
        stored = (await _row_text(bot, lambda text: text.startswith("[file "))).split(" ")[1]
        await human.say(room, f'/send_file {{"path": "{stored}"}}')
        sent = await human.wait_for(from_bot(room, bot, lambda e: e["content"].get("msgtype") != "m.text"))
    content = sent["content"]
    assert content["msgtype"] == "m.image" and content["info"] == {"size": len(png), "mimetype": "image/png"}
    assert content["body"] == stored.split("/")[1] and content["body"].endswith("-dot.png")
    got = await human.client.download(mxc=content["url"])
    assert got.body == png and got.content_type == "image/png"


# The smallest PNG: one transparent pixel.
PNG_1X1 = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


async def test_the_bot_types_while_the_runner_works_and_stops_with_the_answer(
        synapse: Homeserver, humans: list[Human], tmp_path: Path) -> None:
    alice = synapse.register("alice8")
    bot = Bot(synapse, tmp_path, "bot8", allow=alice)
    human = await Human.login(synapse, alice)
    humans.append(human)
    with BlockingFake() as fake:  # the model call is held: the runner works until the test lets it answer
        bot.env.vars.update({"NCL_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "sk-test",
                             "ANTHROPIC_BASE_URL": fake.url})
        with bot.host() as host:
            room = await human.room(bot.user_id)
            host.wait_for_action("matrix_joined", 60)
            asked = time.monotonic()
            await human.say(room, "take your time")
            await human.wait_for(typing(room, bot, True))
            assert await asyncio.to_thread(fake.entered.wait, 60), "the runner never called the model"
            await human.sync()
            assert human.messages(room, bot.user_id) == []  # no answer yet, and still typing:
            assert [e for e in human.seen if typing(room, bot, True)(e) or typing(room, bot, False)(e)][-1][
                "content"]["user_ids"] == [bot.user_id]
            fake.release()  # the held call fails: the answer is the runner's apology
            answer = await human.wait_for(from_bot(room, bot, lambda e: True))
            after = human.seen.index(answer)
            # Stopped by the bot, not by the typing notice's own timeout (TYPING_MS after the message at the
            # earliest): the wait ends well before that.
            await human.wait_for(lambda e: human.seen.index(e) > after and typing(room, bot, False)(e),
                                 timeout=asked + TYPING_MS / 1000 - 10 - time.monotonic())
    assert body_of(answer).startswith("Sorry, I could not answer")


async def test_the_typing_notice_is_renewed_while_a_turn_outlasts_it(
        synapse: Homeserver, humans: list[Human], tmp_path: Path) -> None:
    """A notice of 3 s (the test hook; 60 s otherwise), renewed a third of that apart: the person sees the bot
    typing for four times its length while the model call is held (Synapse ends an unrenewed one within 5 s of
    its timeout), then not typing with the answer."""
    alice = synapse.register("alice10")
    bot = Bot(synapse, tmp_path, "bot10", allow=alice)
    human = await Human.login(synapse, alice)
    humans.append(human)
    with BlockingFake() as fake:
        bot.env.vars.update({"NCL_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "sk-test",
                             "ANTHROPIC_BASE_URL": fake.url})
        with bot.host(NCL_TEST_MATRIX_TYPING_MS="3000") as host:
            room = await human.room(bot.user_id)
            host.wait_for_action("matrix_joined", 60)
            await human.say(room, "take a long time")
            await human.wait_for(typing(room, bot, True))
            assert await asyncio.to_thread(fake.entered.wait, 60), "the runner never called the model"
            held = time.monotonic()
            while time.monotonic() - held < 12:
                await human.sync()
            notices = [e for e in human.seen if typing(room, bot, True)(e) or typing(room, bot, False)(e)]
            assert [e["content"]["user_ids"] for e in notices] == [[bot.user_id]]  # never off while it works
            assert human.messages(room, bot.user_id) == []
            fake.release()
            after = human.seen.index(await human.wait_for(from_bot(room, bot, lambda e: True)))
            await human.wait_for(lambda e: human.seen.index(e) > after and typing(room, bot, False)(e))


def typing(room: str, bot: Bot, on: bool) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["room_id"] == room and e.get("type") == "m.typing" \
        and (bot.user_id in e["content"]["user_ids"]) == on


async def test_a_host_killed_between_a_send_and_its_record_does_not_double_it(
        synapse: Homeserver, humans: list[Human], tmp_path: Path) -> None:
    alice = synapse.register("alice9")
    bot = Bot(synapse, tmp_path, "bot9", allow=alice)
    human = await Human.login(synapse, alice)
    humans.append(human)
    with bot.host() as host:
        room = await human.room(bot.user_id)
        host.wait_for_action("matrix_joined", 60)
    with bot.host(NCL_TEST_MATRIX_STALL="after_send") as host:
        await human.say(room, "once only")
        host.wait_for_action("matrix_stalled", 60)
        await human.wait_for(from_bot(room, bot, said("mock: once only")))  # sent: only its record is missing
    assert host.proc.returncode == -signal.SIGKILL
    assert reply_status(bot) == [None]
    with bot.host() as host:
        host.wait_for_action("reply_handled", 60)  # sent again (the same transaction id) and recorded
        await human.say(room, "and then")
        await human.wait_for(from_bot(room, bot, said("mock: and then")))
    assert reply_status(bot) == ["delivered", "delivered"]
    assert [body_of(e) for e in human.messages(room, bot.user_id)] == ["mock: once only", "mock: and then"]


def reply_status(bot: Bot) -> list[str | None]:
    """Each reply's outcome in the session's ``delivered`` table (None: not recorded), in order."""
    [(session_id, group)] = sqlite3.connect(bot.env.data_dir / "central.db").execute(
        "SELECT id, agent_group_id FROM sessions").fetchall()
    folder = bot.env.data_dir / "v2-sessions" / group / session_id
    with sqlite3.connect(folder / "outbound.db") as out:
        replies = [r for (r,) in out.execute("SELECT id FROM messages_out ORDER BY seq")]
    with sqlite3.connect(folder / "inbound.db") as inbound:
        done = dict(inbound.execute("SELECT message_out_id, status FROM delivered").fetchall())
    return [done.get(r) for r in replies]
