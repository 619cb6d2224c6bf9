"""The ASGI layer in front of every route of the service (ours and BentoML's own), as one plain middleware:

1. ``X-Request-ID``: echoed when the client sends a sane one (``[A-Za-z0-9._:-]{1,128}``), generated otherwise;
   set on every response and written in the one log line per request (``churnguard.api`` logger).
2. Health, metrics and docs stay open; ``/readyz`` answers with the served model (or 503 and why: not started
   yet, or the customer store cannot be reached).
3. API keys (``serving/auth.py``): 401 without a valid key, 403 for a revoked key or a missing scope, then the
   key's rate limit (429 + ``Retry-After``). With no key configured the API is open: ``churn serve`` then listens
   on the loopback interface only.
4. Body size: 413 over ``serving.max_body_bytes``, by Content-Length or while the body streams in.
5. One error shape: any answer >= 400 that is not already a problem document (Starlette's 404/405, BentoML's own
   errors, an unexpected exception) is rewritten as ``application/problem+json`` (``serving/problems.py``);
   problem documents get their ``request_id`` and ``instance``. A 5xx never carries exception text; the log line
   has the traceback and the request id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from serving.auth import KeyRing, RateLimiter, bearer_token, retry_after
from serving.problems import PROBLEM_JSON, encode, problem_body
from serving.settings import ServingSettings

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("churnguard.api")
OPEN_PATHS = frozenset({"/", "/readyz", "/livez", "/healthz", "/metrics", "/docs.json", "/v1/openapi.json"})
OPEN_PREFIXES = ("/static_content/", "/assets/")
PROBES = frozenset({"/readyz", "/livez", "/healthz", "/metrics"})
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ApiGuard:
    def __init__(self, app: ASGIApp, settings: ServingSettings | Callable[[], ServingSettings]) -> None:
        if callable(settings):  # BentoML builds the middleware in each worker: settings are read there
            settings = settings()
        self.app = app
        self.settings = settings
        self.keys = KeyRing(settings)
        self.limiter = (
            RateLimiter(settings.state_dir / "rate_limits.sqlite", settings.rate_limit_burst)
            if self.keys.enabled and settings.state_dir is not None
            else None
        )
        self.max_body = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        sent_id = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = sent_id if REQUEST_ID.match(sent_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope.get("path", "")
        reply = _Reply(send, request_id, path, scope.get("method", ""))
        key_name = "-"
        try:
            key_name = await self._handle(scope, receive, reply, headers, path)
        except Exception:
            log.exception("request %s %s %s failed", request_id, scope.get("method"), path)
            if not reply.started:
                await reply.problem(500, f"internal error; the server log has request id {request_id}")
        finally:
            ms = (time.perf_counter() - started) * 1000
            probe = path in PROBES and (reply.status or 500) < 400  # health checks every few seconds: not news
            level = logging.DEBUG if probe else logging.INFO
            log.log(
                level, "%s %s %s %s %.1fms key=%s", request_id, scope.get("method"), path, reply.status, ms, key_name
            )

    async def _handle(self, scope: Scope, receive: Receive, reply: _Reply, headers: dict, path: str) -> str:
        if path == "/readyz":
            await self._readyz(reply)
            return "-"
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, reply)
            return "-"
        key_name = "-"
        if self.keys.enabled:
            token = bearer_token(headers.get(b"authorization", b""))
            key = self.keys.lookup(token) if token else None
            if key is None:
                await reply.problem(
                    401, "send Authorization: Bearer <api key>", headers={"www-authenticate": 'Bearer realm="api"'}
                )
                return "-"
            key_name = key.name
            if key.revoked:
                await reply.problem(403, f"API key {key.name!r} has been revoked")
                return key_name
            needed = "events" if path.startswith("/v1/events") else "score"
            if needed not in key.scopes:
                await reply.problem(403, f"API key {key.name!r} lacks the {needed!r} scope")
                return key_name
            if self.limiter is not None:
                try:
                    wait = self.limiter.acquire(key.name, key.rate_limit_per_minute)
                except sqlite3.Error as e:  # its state file is a dependency like any other: unavailable, not 500
                    log.error("rate limiter state %s unusable: %s", self.limiter.path, e)
                    await reply.problem(503, "the rate limiter is unavailable; try again shortly")
                    return key_name
                if wait > 0:
                    await reply.problem(
                        429,
                        f"API key {key.name!r} is over its limit of {key.rate_limit_per_minute} requests per minute",
                        headers={"retry-after": retry_after(wait)},
                    )
                    return key_name
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await reply.problem(413, f"request body over {self.max_body:,} bytes")
            return key_name
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                reply.too_large = True
                raise _BodyTooLarge
            return message

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, reply)
        if reply.too_large and not reply.started:
            await reply.problem(413, f"request body over {self.max_body:,} bytes")
        return key_name

    async def _readyz(self, reply: _Reply) -> None:
        try:
            import bentoml

            service = bentoml.get_current_service()
        except Exception:
            service = None
        readiness = None
        if service is not None and hasattr(service, "readiness"):
            import anyio.to_thread

            readiness = await anyio.to_thread.run_sync(service.readiness)  # it asks the store: not on the event loop
        if readiness is None or readiness.status != "ready":
            if readiness is None:
                detail = "the service has not finished starting"
            else:
                detail = readiness.detail or readiness.status
            await reply.problem(503, f"not ready: {detail}")
            return
        await reply.json(200, readiness.model_dump(mode="json"))


class _BodyTooLarge(Exception):
    pass


class _Reply:
    """The ``send`` given to the app: adds X-Request-ID; holds back error answers to make them problems."""

    def __init__(self, send: Send, request_id: str, path: str, method: str) -> None:
        self._send = send
        self.method = method
        self.request_id = request_id
        self.path = path
        self.status: int | None = None
        self.started = False  # anything sent to the client yet
        self.too_large = False
        self._held: dict[str, Any] | None = None
        self._body = bytearray()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.status >= 400:
                self._held = message
                return
            message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", self.request_id.encode())]}
            self.started = True
            await self._send(message)
            return
        if message["type"] == "http.response.body" and self._held is not None:
            self._body += message.get("body", b"")
            if not message.get("more_body", False):
                held, self._held = self._held, None
                if self.too_large:  # the app turned our receive error into some answer: answer 413 instead
                    return
                await self._rewrite(held, bytes(self._body))
            return
        await self._send(message)

    async def _rewrite(self, start: Message, body: bytes) -> None:
        status = start["status"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])}
        content_type = headers.get("content-type", "")
        keep = {k: v for k, v in headers.items() if k in ("retry-after", "www-authenticate", "allow")}
        if content_type.startswith(PROBLEM_JSON):
            problem = json.loads(body)
            problem.setdefault("instance", self.path)
        elif status in (404, 405):
            problem = problem_body(status, f"no route {self.method} {self.path}", instance=self.path)
        else:
            problem = problem_body(status, _detail(status, body, content_type), instance=self.path)
        problem["request_id"] = self.request_id
        await self.json(status, problem, headers=keep, media_type=PROBLEM_JSON)

    async def problem(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        body = problem_body(status, detail, instance=self.path, request_id=self.request_id)
        await self.json(status, body, headers=headers, media_type=PROBLEM_JSON)

    async def json(
        self, status: int, body: dict, headers: dict[str, str] | None = None, media_type: str = "application/json"
    ) -> None:
        payload = encode(body)
        raw = [
            (b"content-type", media_type.encode()),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", self.request_id.encode()),
            *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
        ]
        self.status = status
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": raw})
        await self._send({"type": "http.response.body", "body": payload})


def _detail(status: int, body: bytes, content_type: str) -> str:
    """A short detail for an error answer someone else made; 5xx never pass their text on."""
    if status >= 500:
        return "the server could not answer this request; the server log has its request id"
    text = body.decode("utf-8", "replace").strip()
    if content_type.startswith("application/json"):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list) and parsed:
                parsed = parsed[0]
            if isinstance(parsed, dict):
                text = str(parsed.get("error") or parsed.get("detail") or text)
        except ValueError:
            pass
    return text.splitlines()[0][:300] if text else f"HTTP {status}"
