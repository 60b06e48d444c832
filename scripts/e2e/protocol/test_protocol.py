"""The protocol scenario against the real release binary and the real Django
(CONTRACT §3 WebSocket, §4 REST): who may connect, what each side sees."""

import re
import uuid

import jwt

from conftest import http, open_client, refused_status, run

OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:8]}"


def mentor_url(stack, student: str, token=None):
    return stack.ws_url(
        token or stack.token("mentor"), stack.user_id("mentor"), student_id=stack.user_id(student)
    )


def student_url(stack, student: str, token=None, **extra):
    return stack.ws_url(token or stack.token(student), stack.user_id(student), **extra)


def test_mentor_and_student_chat_with_ack_typing_viewed_presence_and_history(stack):
    alice_id, mentor_id = stack.user_id("alice"), stack.user_id("mentor")
    text = unique("Hello, mentor! ünïcödé ✓")
    client_id = uuid.uuid4().hex

    async def scenario():
        async with open_client(student_url(stack, "alice"), "alice") as alice:
            async with open_client(mentor_url(stack, "alice"), "mentor") as mentor:
                # Presence: each side learns the other is here.
                await alice.wait_for("presence", user_id=mentor_id, online=True)
                await mentor.wait_for("presence", user_id=alice_id, online=True)

                await alice.send(type="message", text=text, client_id=client_id)
                got = await mentor.wait_for("message", text=text)
                echo = await alice.wait_for("message", text=text)
                ack = await alice.wait_for("ack", client_id=client_id)
                assert OBJECT_ID.match(got["id"]) and OBJECT_ID.match(got["conversation_id"])
                assert got["sender_id"] == alice_id
                assert RFC3339_UTC.match(got["created_at"]), got["created_at"]
                assert got["client_id"] == client_id
                assert echo["id"] == got["id"] == ack["id"]
                assert not mentor.received("ack"), "ack goes to the sending connection only"
                conversation_id = got["conversation_id"]

                # Typing reaches the other side, not the typist's own connection.
                await mentor.send(type="typing", is_typing=True)
                typing = await alice.wait_for("typing", sender_id=mentor_id)
                assert typing["is_typing"] is True and typing["conversation_id"] == conversation_id
                await mentor.send(type="typing", is_typing=False)
                typing = await alice.wait_for("typing", sender_id=mentor_id)
                assert typing["is_typing"] is False

                # Read receipt.
                await mentor.send(type="viewed", message_id=got["id"])
                viewed = await alice.wait_for("viewed", message_id=got["id"])
                assert viewed["viewer_id"] == mentor_id
                assert viewed["conversation_id"] == conversation_id

                # The mentor's own frames come back in order, so a marker message
                # proves no typing/viewed echo was queued before it.
                marker = unique("marker")
                await mentor.send(type="message", text=marker)
                await mentor.wait_for("message", text=marker)
                await mentor.wait_for("ack")
                assert not mentor.received("typing") and not mentor.received("viewed")

            # The mentor's last connection closed: alice sees them go offline.
            await alice.wait_for("presence", user_id=mentor_id, online=False)
        return got, conversation_id

    got, conversation_id = run(scenario())

    # REST history, as each participant sees it.
    for name in ("alice", "mentor"):
        status, history = stack.rest(
            f"/messages?conversation_id={conversation_id}", stack.token(name), stack.user_id(name)
        )
        assert status == 200, (name, history)
        stored = [m for m in history if m["id"] == got["id"]]
        assert len(stored) == 1, history
        assert stored[0]["text"] == text and stored[0]["sender_id"] == alice_id
        assert stored[0]["created_at"] == got["created_at"], "same instant over WebSocket and REST"
        assert stored[0]["viewed_by"] == mentor_id
        ids = [m["id"] for m in history]
        assert ids == sorted(ids), "history is oldest first"

    status, conversations = stack.rest(
        f"/conversations?student_id={alice_id}", stack.token("alice"), alice_id
    )
    assert status == 200
    assert [c["id"] for c in conversations if c["lesson_id"] == stack.lesson_id] == [conversation_id]
    status, conversation = stack.rest(f"/conversations/{conversation_id}", stack.token("mentor"), mentor_id)
    assert status == 200
    assert (conversation["mentor_id"], conversation["student_id"], conversation["lesson_id"]) == (
        mentor_id,
        alice_id,
        stack.lesson_id,
    )


def test_resend_with_the_same_client_id_is_stored_and_delivered_once(stack):
    text = unique("resent after reconnect")
    client_id = uuid.uuid4().hex

    async def scenario():
        async with open_client(mentor_url(stack, "bob"), "mentor") as mentor:
            async with open_client(student_url(stack, "bob"), "bob") as bob:
                await bob.send(type="message", text=text, client_id=client_id)
                first = await bob.wait_for("ack", client_id=client_id)
            # A reconnecting client resends what it believes un-acknowledged.
            async with open_client(student_url(stack, "bob"), "bob again") as bob:
                await bob.send(type="message", text=text, client_id=client_id)
                again = await bob.wait_for("ack", client_id=client_id)
                assert again["id"] == first["id"]
                marker = unique("after the resend")
                await bob.send(type="message", text=marker)
                await mentor.wait_for("message", text=marker)
            delivered = [e for e in mentor.received("message") if e["text"] == text]
            assert len(delivered) == 1, delivered
            return delivered[0]["conversation_id"], first["id"]

    conversation_id, message_id = run(scenario())
    status, history = stack.rest(
        f"/messages?conversation_id={conversation_id}", stack.token("bob"), stack.user_id("bob")
    )
    assert status == 200
    assert [m["id"] for m in history if m["text"] == text] == [message_id]


def test_a_student_cannot_reach_another_students_chat(stack):
    alice_id, bob_id = stack.user_id("alice"), stack.user_id("bob")
    secret = unique("for the mentor only")

    async def scenario():
        async with open_client(student_url(stack, "alice"), "alice") as alice:
            await alice.send(type="message", text=secret)
            got = await alice.wait_for("message", text=secret)
            # bob names alice as the student: ignored, he is always his own conversation's student.
            async with open_client(student_url(stack, "bob", student_id=alice_id), "bob") as bob:
                probe = unique("bob's probe")
                await bob.send(type="message", text=probe)
                bob_msg = await bob.wait_for("message", text=probe)
                assert bob_msg["conversation_id"] != got["conversation_id"]
                assert not [e for e in bob.received("message") if e["text"] == secret]
            marker = unique("alice marker")
            await alice.send(type="message", text=marker)
            await alice.wait_for("message", text=marker)
            assert not [e for e in alice.received("message") if e["text"] == probe]
            return got["conversation_id"]

    alice_conversation = run(scenario())
    bob_token = stack.token("bob")
    status, body = stack.rest(f"/messages?conversation_id={alice_conversation}", bob_token, bob_id)
    assert status == 404, body
    assert body["error"]["code"] == "not_found"
    status, _ = stack.rest(f"/conversations/{alice_conversation}", bob_token, bob_id)
    assert status == 404
    status, _ = stack.rest(f"/conversations?student_id={alice_id}", bob_token, bob_id)
    assert status == 403
    status, mine = stack.rest("/conversations", bob_token, bob_id)
    assert status == 200 and alice_conversation not in [c["id"] for c in mine]
    # bob's token with alice's id: Django says the token is not alice's.
    status, _ = stack.rest(f"/messages?conversation_id={alice_conversation}", bob_token, alice_id)
    assert status == 401


def test_rest_takes_the_caller_from_the_simplejwt_user_id_claim(stack):
    async def scenario():
        async with open_client(student_url(stack, "alice"), "alice") as alice:
            text = unique("claim")
            await alice.send(type="message", text=text)
            return (await alice.wait_for("message", text=text))["conversation_id"]

    conversation_id = run(scenario())
    # No X-User-Id: the id comes from the token's `user_id` claim (a string in SimpleJWT 5.5).
    status, conversations = stack.rest("/conversations", stack.token("alice"))
    assert status == 200, conversations
    assert conversation_id in [c["id"] for c in conversations]
    status, _ = stack.rest(f"/messages?conversation_id={conversation_id}", stack.token("alice"))
    assert status == 200


def test_incomplete_or_unknown_requests_are_refused(stack):
    async def scenario():
        alice, mentor = stack.token("alice"), stack.token("mentor")
        assert await refused_status(stack.ws_url(alice, stack.user_id("alice"), lesson_id=999999)) == 404
        assert await refused_status(stack.ws_url(mentor, stack.user_id("mentor"))) == 400, "no student_id"
        assert await refused_status(f"{stack.ws}?user_id=1&lesson_id=1") == 400, "no token"
        assert await refused_status(stack.ws_url(alice, "abc")) == 400, "malformed user_id"

    run(scenario())


def test_a_user_not_enrolled_cannot_open_the_lessons_chat(stack):
    token = stack.token("outsider", "outsider-pass")
    outsider_id = int(jwt.decode(token, options={"verify_signature": False})["user_id"])
    assert run(refused_status(stack.ws_url(token, outsider_id))) == 404
    # A real user all the same, with no conversations.
    assert tuple(stack.rest("/conversations", token, outsider_id)) == (200, [])


def test_expired_and_forged_tokens_are_refused_with_401(stack):
    alice_id = stack.user_id("alice")
    expired = stack.signed_token(alice_id, key=stack.secret, exp_offset_s=-60)
    forged = stack.signed_token(alice_id, key="not-the-server-secret-but-long-enough-for-hs256", exp_offset_s=3600)
    foreign = stack.token("bob")  # valid, but bob's

    async def scenario():
        for label, token in (("expired", expired), ("forged", forged), ("bob's", foreign)):
            status = await refused_status(student_url(stack, "alice", token=token))
            assert status == 401, (label, status)

    run(scenario())
    for label, token in (("expired", expired), ("forged", forged)):
        status, body = stack.rest("/conversations", token, alice_id)
        assert status == 401, (label, body)
        assert body["error"]["code"] == "unauthorized"
        status, _ = stack.rest("/conversations", token)
        assert status == 401, label
    status, _ = stack.rest("/conversations", "", alice_id)
    assert status == 401


def test_bad_frames_get_error_events_and_the_connection_stays_open(stack):
    async def scenario():
        async with open_client(student_url(stack, "alice"), "alice") as alice:
            await alice.ws.send("not json")
            assert (await alice.wait_for("error"))["code"] == "bad_json"
            await alice.send(type="shout", text="hi")
            assert (await alice.wait_for("error"))["code"] == "unknown_type"
            await alice.send(type="message", text="", client_id="empty-1")
            error = await alice.wait_for("error")
            assert error["code"] == "empty_text" and error["client_id"] == "empty-1"
            await alice.send(type="viewed", message_id="0" * 24)
            assert (await alice.wait_for("error"))["code"] == "message_not_found"
            text = unique("still open")
            await alice.send(type="message", text=text)
            await alice.wait_for("message", text=text)

    run(scenario())


def test_presence_and_cors_preflight(stack):
    alice_id = stack.user_id("alice")

    async def scenario():
        async with open_client(student_url(stack, "alice"), "alice") as alice:
            text = unique("online")
            await alice.send(type="message", text=text)
            await alice.wait_for("message", text=text)
            return stack.rest(f"/presence?user_id={alice_id}", stack.token("mentor"), stack.user_id("mentor"))

    status, body = run(scenario())
    assert status == 200 and body["online"] is True and body["user_id"] == alice_id

    result = http(
        "OPTIONS",
        f"{stack.chat}/messages?conversation_id={'0' * 24}",
        headers={
            "Origin": stack.django,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,x-user-id",
        },
    )
    assert result[0] == 200
    assert result.headers["Access-Control-Allow-Origin"] == "*"
    allowed = result.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "x-user-id" in allowed
