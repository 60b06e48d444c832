"""The reference Django backend answers CONTRACT §2 as chat-service expects."""

import jwt

from conftest import http


def test_simplejwt_token_carries_the_user_id_claim(stack):
    token = stack.token("alice")
    claims = jwt.decode(token, options={"verify_signature": False})
    # SimpleJWT 5.5 writes the id as a string; chat-service must read either form.
    assert int(claims["user_id"]) == stack.user_id("alice")
    assert claims["token_type"] == "access"


def test_users_endpoint_answers_only_for_the_tokens_own_user(stack):
    alice, bob = stack.user_id("alice"), stack.user_id("bob")
    auth = {"Authorization": f"Bearer {stack.token('alice')}"}
    status, body = http("GET", f"{stack.django}/api/content/chat-service/users/{alice}/", headers=auth)
    assert (status, body) == (200, {"id": alice, "is_mentor": False})
    status, _ = http("GET", f"{stack.django}/api/content/chat-service/users/{bob}/", headers=auth)
    assert status != 200
    status, _ = http("GET", f"{stack.django}/api/content/chat-service/users/{alice}/")
    assert status == 401

    mentor = stack.user_id("mentor")
    auth = {"Authorization": f"Bearer {stack.token('mentor')}"}
    status, body = http("GET", f"{stack.django}/api/content/chat-service/users/{mentor}/", headers=auth)
    assert (status, body) == (200, {"id": mentor, "is_mentor": True})


def test_lesson_endpoint_lists_students_and_hides_the_lesson_from_outsiders(stack):
    url = f"{stack.django}/api/content/chat-service/lesson/{stack.lesson_id}/detail/"
    expected = {
        "id": stack.lesson_id,
        "course_id": stack.demo["course_id"],
        "teacher_id": stack.user_id("mentor"),
        "student_ids": sorted([stack.user_id("alice"), stack.user_id("bob")]),
    }
    for name in ("mentor", "alice", "bob"):
        status, body = http("GET", url, headers={"Authorization": f"Bearer {stack.token(name)}"})
        assert (status, body) == (200, expected), name
    status, _ = http("GET", url, headers={"Authorization": f"Bearer {stack.token('outsider', 'outsider-pass')}"})
    assert status == 404
    status, _ = http("GET", url)
    assert status == 401


def test_chat_page_knows_the_chat_service_url(stack):
    status, body = http("GET", f"{stack.django}/")
    assert status == 200
    assert f'"{stack.chat}"' in body
