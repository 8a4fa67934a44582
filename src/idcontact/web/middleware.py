"""ASGI middleware: correlation id, body limit, security headers and a query-free access log."""

from __future__ import annotations

import logging
import random
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idcontact.logs import conversation_id, correlation_id
from idcontact.web.problem import problem

access_log = logging.getLogger("idcontact.access")

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    # Pages and redirects may carry tokens (?result=, the tel page): never leak them onward.
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CSP.encode()),
]


class EdgeMiddleware:
    """Everything that happens at the edge of every HTTP request, in one pass."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Correlation ids only tell log lines apart, they open nothing: a generator seeded
        # once from the OS instead of a getrandom() system call per request.
        self._ids = random.Random(secrets.randbits(128))  # noqa: S311

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = f"{self._ids.getrandbits(64):016x}"
        token = correlation_id.set(cid)
        about = conversation_id.set(None)
        started = time.perf_counter()
        status = 500
        path = scope.get("path", "")

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                # A route with its own CSP (the embeddable panel's frame-ancestors) decides
                # framing there; X-Frame-Options knows no allow-list, so it must not veto it.
                skip = names | (
                    {b"x-frame-options"} if b"content-security-policy" in names else set()
                )
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in skip)
                if b"cache-control" not in names and not path.startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                headers.append((b"x-request-id", cid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                response = problem(413, "payload-too-large", "The request body is too large")
                await response(scope, receive, send_wrapper)
                return

            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_wrapper)
        finally:
            route = scope.get("route")
            access_log.info(
                "request",
                extra={
                    "method": scope.get("method"),
                    # The route template, never the raw path or query: both may carry tokens.
                    "route": getattr(route, "path", None) or "<unmatched>",
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
            correlation_id.reset(token)
            conversation_id.reset(about)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """Read the whole body up to the limit; ``None`` means it is too large."""
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)
