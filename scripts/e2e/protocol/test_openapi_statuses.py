"""Every response status docs/openapi.json documents is one the running service
really gives: a table of requests, one per (method, path, status), each sent
to the real release binary and its answer checked against the document
(status, media type, body schema). A documented status without a case, or a
case for an undocumented one, fails; the few that cannot be produced against
a healthy stack say why and which Rust test produces them instead.

Two services answer: the main stack (real Django, demo users) and the
"degraded" one run.sh starts beside it, whose Django address has nothing
listening (every authenticated call is a Django outage, 503) and which
allows one WebSocket origin only (for the 403)."""

import asyncio
import base64
import http.client
import json
import os
import uuid
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import jsonschema_rs
import pytest
from websockets.asyncio.client import connect

from conftest import _env, open_client, run

REPO = Path(__file__).resolve().parents[3]
ZERO_ID = "0" * 24
NO_SUCH_ID = "663af8129dde123456789def"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


class Reply:
    def __init__(self, status, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def media_type(self) -> str:
        return (self.headers.get("content-type") or "").split(";")[0].strip().lower()

    def json(self):
        return json.loads(self.body)


def request(base: str, path: str, method="GET", headers=None) -> Reply:
    """One request over http.client, which (unlike urllib) leaves `Connection`
    alone, so an upgrade request stays one; a 101 is read as a bodiless answer
    and the connection is dropped."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        body = b"" if response.status == 101 else response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, headers, body)
    finally:
        conn.close()


def upgrade_headers(**extra):
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        **extra,
    }


class Skip:
    """A documented status no request against the e2e stack can produce."""

    def __init__(self, reason: str):
        self.reason = reason


class Env:
    def __init__(self, stack):
        self.stack = stack
        self.main = stack.chat
        self.degraded = _env("E2E_DEGRADED_CHAT_URL").rstrip("/")
        self.mentor_id = stack.user_id("mentor")
        self.alice_id = stack.user_id("alice")
        self.bob_id = stack.user_id("bob")

    def auth(self, name: str) -> dict:
        return {
            "Authorization": f"Bearer {self.stack.token(name)}",
            "X-User-Id": str(self.stack.user_id(name)),
        }

    def ws_query(self, name: str, **params) -> str:
        query = {"token": self.stack.token(name), "user_id": self.stack.user_id(name), "lesson_id": self.stack.lesson_id}
        query.update(params)
        return "/ws?" + urlencode(query)


@pytest.fixture(scope="module")
def env(stack):
    env = Env(stack)
    # alice's conversation with the mentor holds a message (this module may run first).
    async def say_hello():
        async with open_client(stack.ws_url(stack.token("alice"), env.alice_id), "alice") as alice:
            text = f"openapi {uuid.uuid4().hex[:8]}"
            await alice.send(type="message", text=text)
            got = await alice.wait_for("message", text=text)
            await alice.wait_for("ack")
            return got["conversation_id"]

    env.conversation_id = run(say_hello())
    return env


@pytest.fixture(scope="module")
def document(env):
    reply = request(env.main, "/openapi.json")
    assert reply.status == 200 and reply.media_type == "application/json"
    assert reply.body == (REPO / "docs" / "openapi.json").read_bytes(), (
        "the running binary serves another document than docs/openapi.json (a stale CHAT_SERVICE_BIN?)"
    )
    return reply.json()


def too_many_connections(env) -> Reply:
    """bob at CHAT_MAX_CONNECTIONS_PER_USER (20, the default) open connections; one more."""

    async def scenario():
        url = env.stack.ws + env.ws_query("bob")[len("/ws"):]
        opened = []
        try:
            for _ in range(20):
                opened.append(await connect(url, open_timeout=10).__aenter__())
            return await asyncio.to_thread(request, env.main, env.ws_query("bob"), "GET", upgrade_headers())
        finally:
            for ws in opened:
                await ws.close()

    return run(scenario())


STORE_DOWN = (
    "needs the store down under a running service: tests/store_outage.rs "
    "(a_locked_store_refuses_beyond_the_queue_and_recovers: /readyz 503 with status unavailable; "
    "connecting_while_the_store_cannot_write_is_503)"
)
INTERNAL = (
    "a store error that is not an outage (StoreError::Internal); src/http/error.rs "
    "store_and_auth_errors_map_to_statuses maps it to 500 internal"
)

# (method, path, status) -> a request producing it, or why none can here.
CASES = {
    ("get", "/", 200): lambda e: request(e.main, "/"),
    ("get", "/healthz", 200): lambda e: request(e.main, "/healthz"),
    ("get", "/readyz", 200): lambda e: request(e.main, "/readyz"),
    ("get", "/readyz", 503): Skip(STORE_DOWN),
    ("get", "/metrics", 200): lambda e: request(e.main, "/metrics"),
    ("get", "/metrics", 500): Skip("only when the metrics registry cannot be encoded (src/http/metrics.rs)"),
    ("get", "/openapi.json", 200): lambda e: request(e.main, "/openapi.json"),
    # /conversations
    ("get", "/conversations", 200): lambda e: request(e.main, "/conversations?sort=waiting", headers=e.auth("mentor")),
    ("get", "/conversations", 400): lambda e: request(e.main, "/conversations?sort=bogus", headers=e.auth("mentor")),
    ("get", "/conversations", 401): lambda e: request(e.main, "/conversations"),
    ("get", "/conversations", 403): lambda e: request(e.main, f"/conversations?student_id={e.bob_id}", headers=e.auth("alice")),
    ("get", "/conversations", 500): Skip(INTERNAL),
    ("get", "/conversations", 503): lambda e: request(e.degraded, "/conversations", headers=e.auth("alice")),
    # /conversations/{id}
    ("get", "/conversations/{id}", 200): lambda e: request(e.main, f"/conversations/{e.conversation_id}", headers=e.auth("alice")),
    ("get", "/conversations/{id}", 400): lambda e: request(e.main, "/conversations/not-an-id", headers=e.auth("alice")),
    ("get", "/conversations/{id}", 401): lambda e: request(e.main, f"/conversations/{e.conversation_id}"),
    ("get", "/conversations/{id}", 404): lambda e: request(e.main, f"/conversations/{NO_SUCH_ID}", headers=e.auth("alice")),
    ("get", "/conversations/{id}", 500): Skip(INTERNAL),
    ("get", "/conversations/{id}", 503): lambda e: request(e.degraded, f"/conversations/{NO_SUCH_ID}", headers=e.auth("alice")),
    # /messages
    ("get", "/messages", 200): lambda e: request(e.main, f"/messages?conversation_id={e.conversation_id}&limit=5", headers=e.auth("mentor")),
    ("get", "/messages", 400): lambda e: request(e.main, f"/messages?conversation_id={e.conversation_id}&after={ZERO_ID}&after_seq=1", headers=e.auth("alice")),
    ("get", "/messages", 401): lambda e: request(e.main, f"/messages?conversation_id={e.conversation_id}"),
    ("get", "/messages", 404): lambda e: request(e.main, f"/messages?conversation_id={e.conversation_id}", headers=e.auth("bob")),
    ("get", "/messages", 429): Skip(
        "needs CHAT_HISTORY_PER_USER answers held unread by one caller; src/capacity.rs "
        "one_caller_holds_at_most_its_share and error.rs map HistoryBusy::PerUser to 429"
    ),
    ("get", "/messages", 500): Skip(INTERNAL),
    ("get", "/messages", 503): lambda e: request(e.degraded, f"/messages?conversation_id={NO_SUCH_ID}", headers=e.auth("alice")),
    # /presence
    ("get", "/presence", 200): lambda e: request(e.main, f"/presence?user_id={e.alice_id}", headers=e.auth("mentor")),
    ("get", "/presence", 400): lambda e: request(e.main, "/presence?user_id=0", headers=e.auth("mentor")),
    ("get", "/presence", 401): lambda e: request(e.main, f"/presence?user_id={e.alice_id}", headers={"X-User-Id": "abc", "Authorization": "Bearer x"}),
    ("get", "/presence", 404): lambda e: request(e.main, f"/presence?user_id={e.bob_id}", headers=e.auth("alice")),
    ("get", "/presence", 500): Skip(INTERNAL),
    ("get", "/presence", 503): lambda e: request(e.degraded, f"/presence?user_id={e.alice_id}", headers=e.auth("alice")),
    # /ws: the checks before the upgrade (CONTRACT §3)
    ("get", "/ws", 101): lambda e: request(e.main, e.ws_query("alice"), headers=upgrade_headers()),
    ("get", "/ws", 400): lambda e: request(e.main, e.ws_query("mentor"), headers=upgrade_headers()),
    ("get", "/ws", 401): lambda e: request(e.main, e.ws_query("alice", user_id=e.bob_id), headers=upgrade_headers()),
    ("get", "/ws", 403): lambda e: request(e.degraded, e.ws_query("alice"), headers=upgrade_headers(Origin="http://elsewhere.invalid")),
    ("get", "/ws", 404): lambda e: request(e.main, e.ws_query("alice", lesson_id=999999), headers=upgrade_headers()),
    ("get", "/ws", 429): too_many_connections,
    ("get", "/ws", 500): Skip(INTERNAL),
    ("get", "/ws", 503): lambda e: request(e.degraded, e.ws_query("alice"), headers=upgrade_headers()),
}


def documented(document):
    """(method, path, status) for every response of every operation."""
    found = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                found.update((method, path, int(status)) for status in operation["responses"])
    return found


def resolve(document, node):
    while "$ref" in node:
        target = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check_against_document(document, method, path, status, reply: Reply):
    assert reply.status == status, (reply.status, reply.body[:300])
    response = resolve(document, document["paths"][path][method]["responses"][str(status)])
    content = response.get("content")
    if not content:
        return
    assert reply.media_type in content, f"{reply.headers.get('content-type')} not in {list(content)}"
    if reply.media_type != "application/json":
        assert reply.body, "an empty body"
        return
    schema = {**content[reply.media_type]["schema"], "components": document["components"]}
    validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
    errors = [f"{error.instance_path}: {error.message}" for error in validator.iter_errors(reply.json())]
    assert not errors, errors


def test_the_document_is_valid_openapi_3_1(document):
    import schemathesis

    assert document["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(document).validate()


def test_every_documented_status_has_a_case_and_no_case_is_undocumented(document):
    wanted = documented(document) - {(m, p, s) for (m, p, s) in documented(document) if m == "options"}
    cases = set(CASES)
    assert not wanted - cases, f"documented, no case: {sorted(wanted - cases)}"
    assert not cases - wanted, f"a case for an undocumented status: {sorted(cases - wanted)}"


@pytest.mark.parametrize("key", sorted(CASES), ids=lambda key: f"{key[0].upper()} {key[1]} {key[2]}")
def test_each_documented_status_is_produced(env, document, key):
    case = CASES[key]
    if isinstance(case, Skip):
        pytest.skip(case.reason)
    check_against_document(document, *key, case(env))


def test_every_path_answers_its_preflight_and_refuses_other_methods(env, document):
    for path, item in document["paths"].items():
        concrete = path.replace("{id}", NO_SUCH_ID)
        assert "options" in item, f"{path}: OPTIONS is documented"
        for status in item["options"]["responses"]:
            preflight = request(env.main, concrete, "OPTIONS")
            check_against_document(document, "options", path, int(status), preflight)
            assert preflight.headers["access-control-allow-origin"] == "*"
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            refused = request(env.main, concrete, method)
            assert refused.status == 405, (method, path, refused.status)
            assert refused.headers.get("allow") == "GET, OPTIONS", (method, path)
            error = resolve(document, {"$ref": "#/components/schemas/Error"})
            schema = {**error, "components": document["components"]}
            assert jsonschema_rs.Draft202012Validator(schema).is_valid(refused.json())
            assert refused.json()["error"]["code"] == "method_not_allowed"
