"""Who may bring the Matrix bot into a room, and what keeps it there, against a real Synapse
(tests/matrix/conftest.py): invites from strangers and encrypted rooms are declined; an invite it cannot join and a
stranger's encrypted event stop nothing."""

from __future__ import annotations

from pathlib import Path

from matrix_kit import Bot, Homeserver, Human, body_of, from_bot, said


async def test_invites_from_strangers_and_encrypted_rooms_are_declined(
        synapse: Homeserver, humans: list[Human], tmp_path: Path) -> None:
    alice, mallory = synapse.register("alice4"), synapse.register("mallory4")
    bot = Bot(synapse, tmp_path, "bot4", allow=alice)
    stranger, friend = await Human.login(synapse, mallory), await Human.login(synapse, alice)
    humans += [stranger, friend]
    with bot.host() as host:
        theirs = await stranger.room(bot.user_id)
        line = host.wait_for_action("matrix_declined", 60)
        assert theirs in line and f"{mallory} is not in NCL_MATRIX_ALLOW" in line
        secret = await friend.room(bot.user_id, encrypted=True)
        notice = await friend.wait_for(from_bot(secret, bot, lambda e: True))
        assert "does not support end-to-end encrypted rooms" in body_of(notice)
        await friend.wait_for(lambda e: e["room_id"] == secret and e.get("type") == "m.room.member"
                              and e.get("state_key") == bot.user_id and e["content"]["membership"] == "leave")
        line = host.wait_for_action("matrix_declined", 60)
        assert secret in line and "encrypted" in line
        await stranger.say(theirs, "hello?")
        await friend.room(bot.user_id)  # a room it joins: proof the stranger's invite is not retried meanwhile
        host.wait_for_action("matrix_joined", 60)
    assert sum("action=matrix_declined" in seen for seen in host.seen) == 2
    assert bot.rows() == []
    assert stranger.messages(theirs, bot.user_id) == []


async def test_an_invite_the_bot_cannot_join_and_a_strangers_encrypted_event_stop_nothing(
        synapse: Homeserver, humans: list[Human], tmp_path: Path) -> None:
    """Attack review: an allowed user's invite to a room the bot may not join (join rule ``private``) failed every
    sync for ever, so no room's message was taken again; and one ``m.room.encrypted`` event from a member off the
    allow-list made the bot leave an unencrypted room. Now the invite is given up after three syncs (logged) and
    the event is weighed against the room's state."""
    alice, mallory = synapse.register("alice11"), synapse.register("mallory11")
    bot = Bot(synapse, tmp_path, "bot11", allow=alice)
    friend, stranger = await Human.login(synapse, alice), await Human.login(synapse, mallory)
    humans += [friend, stranger]
    with bot.host() as host:
        room = await friend.room(bot.user_id, mallory)
        host.wait_for_action("matrix_joined", 60)
        await stranger.sync()  # joins the room it was invited to
        await friend.room(bot.user_id, join_rule="private", name="locked")
        line = host.wait_for_action("matrix_given_up", 60)
        assert "You are not allowed to join this room" in line
        sent = await stranger.client.room_send(room, "m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2",
                                                                          "ciphertext": "x", "sender_key": "k",
                                                                          "session_id": "s", "device_id": "D"})
        assert getattr(sent, "event_id", None), sent
        await friend.say(room, "bot11: still here?")  # named: a room of three answers only when it is
        reply = await friend.wait_for(from_bot(room, bot, said("mock: bot11: still here?")))
    assert reply["content"]["body"] == "mock: bot11: still here?"
    assert not [seen for seen in host.seen if "action=matrix_declined" in seen]
