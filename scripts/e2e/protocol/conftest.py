"""Helpers for the protocol scenario: a real Django and a real chat-service,
both started by scripts/e2e/run.sh, which passes their URLs in E2E_* variables."""

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

WAIT_S = 10  # upper bound for one expected event; a bound, not an assertion on speed


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the suite through scripts/e2e/run.sh", returncode=2)
    return value


class Stack:
    def __init__(self):
        self.django = _env("E2E_DJANGO_URL").rstrip("/")
        self.chat = _env("E2E_CHAT_URL").rstrip("/")
        self.ws = self.chat.replace("http", "ws", 1) + "/ws"
        self.secret = _env("E2E_DJANGO_SECRET_KEY")
        with open(_env("E2E_DEMO_JSON")) as f:
            self.demo = json.load(f)
        self.lesson_id = self.demo["lesson_id"]
        self._tokens = {}

    def user_id(self, name: str) -> int:
        return self.demo["users"][name]["id"]

    def token(self, name: str, password: str | None = None) -> str:
        """An access token from SimpleJWT's token endpoint, as a frontend gets it."""
        if name not in self._tokens:
            password = password or self.demo["users"][name]["password"]
            status, body = http(
                "POST",
                f"{self.django}/api/token/",
                body={"username": name, "password": password},
            )
            assert status == 200, (status, body)
            self._tokens[name] = body["access"]
        return self._tokens[name]

    def signed_token(self, user_id: int, *, key: str, exp_offset_s: int) -> str:
        """A token shaped like SimpleJWT's, signed with `key`, expiring at now + offset."""
        now = int(time.time())
        payload = {
            "token_type": "access",
            "exp": now + exp_offset_s,
            "iat": now - 3600,
            "jti": os.urandom(16).hex(),
            "user_id": str(user_id),
        }
        return jwt.encode(payload, key, algorithm="HS256")

    def ws_url(self, token: str, user_id, lesson_id=None, student_id=None) -> str:
        query = {"token": token, "user_id": user_id, "lesson_id": lesson_id or self.lesson_id}
        if student_id is not None:
            query["student_id"] = student_id
        return f"{self.ws}?{urlencode(query)}"

    def rest(self, path: str, token: str, user_id=None, method: str = "GET"):
        headers = {"Authorization": f"Bearer {token}"}
        if user_id is not None:
            headers["X-User-Id"] = str(user_id)
        return http(method, f"{self.chat}{path}", headers=headers)


def http(method: str, url: str, headers=None, body=None):
    """(status, parsed JSON or text, headers) without raising on 4xx/5xx."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            status, raw, resp_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as err:
        status, raw, resp_headers = err.code, err.read(), err.headers
    text = raw.decode()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return HttpResult(status, parsed, resp_headers)


class HttpResult(tuple):
    """(status, body) that also carries the response headers."""

    def __new__(cls, status, body, headers):
        result = super().__new__(cls, (status, body))
        result.headers = headers
        return result


class Client:
    """One WebSocket connection whose inbound events are collected in order."""

    def __init__(self, ws, name: str):
        self.ws = ws
        self.name = name
        self.events: list[dict] = []
        self._seen = 0
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self.closed = asyncio.Event()

    async def _read(self):
        try:
            async for frame in self.ws:
                event = json.loads(frame)
                async with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        except ConnectionClosed:
            pass  # an abnormal close is still a close; tests check events, not the code
        finally:
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def send(self, **frame):
        await self.ws.send(json.dumps(frame))

    async def wait_for(self, what: str, **match) -> dict:
        """The first not-yet-consumed event of type `what` whose fields equal `match`."""

        def find():
            for index in range(self._seen, len(self.events)):
                event = self.events[index]
                if event.get("type") == what and all(event.get(k) == v for k, v in match.items()):
                    return index, event
            return None

        async def wait():
            async with self._changed:
                while True:
                    found = find()
                    if found:
                        return found
                    if self.closed.is_set():
                        raise AssertionError(f"{self.name}: closed before {what} {match}; got {self.events}")
                    await self._changed.wait()

        try:
            index, event = await asyncio.wait_for(wait(), WAIT_S)
        except TimeoutError:
            raise AssertionError(f"{self.name}: no {what} {match} within {WAIT_S}s; got {self.events}") from None
        self._seen = index + 1
        return event

    def received(self, what: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == what]

    async def close(self):
        await self.ws.close()
        await self._reader


class open_client:
    """async with open_client(url, name) as client: ..."""

    def __init__(self, url: str, name: str):
        self.url, self.name = url, name

    async def __aenter__(self) -> Client:
        self._connect = connect(self.url, open_timeout=WAIT_S, close_timeout=WAIT_S)
        ws = await self._connect.__aenter__()
        self.client = Client(ws, self.name)
        return self.client

    async def __aexit__(self, *exc):
        await self.client.close()
        await self._connect.__aexit__(*exc)


async def refused_status(url: str) -> int:
    """The HTTP status a refused upgrade answered with (fails if it was accepted)."""
    try:
        async with connect(url, open_timeout=WAIT_S):
            pass
    except InvalidStatus as err:
        return err.response.status_code
    raise AssertionError(f"upgrade was accepted: {url}")


@pytest.fixture(scope="session")
def stack() -> Stack:
    return Stack()


def run(coro):
    return asyncio.run(coro)
