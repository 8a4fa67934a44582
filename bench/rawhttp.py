"""A lean HTTP/1.1 client for the load generator: keep-alive, no TLS, the subset of
``httpx.AsyncClient`` that a flow uses (``get``, ``post`` with ``json`` or ``data``).

The load generator runs on the same CPUs as the server it measures. httpx costs ~0.8 ms of CPU
per request there (request and response models, header normalisation, the connection pool's
state machine), 2.4 ms per flow: at 130 flows/s a third of a core that the server could have
used. This client writes the request bytes itself and parses the answer with httptools (the
parser uvicorn uses). It is for benchmarks against our own server on 127.0.0.1 only: no TLS, no
proxies, no redirects, no cookies, no chunked request bodies.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

import httptools


class RawHTTPError(Exception):
    """The connection failed or closed before a whole answer arrived."""


class RawResponse:
    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.WriteTransport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self.closed = False
        self.answered = False  # a byte of the current request's answer arrived

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is not an asyncio.Transport subclass).
        self._transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RawHTTPError(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RawHTTPError("connection closed"))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(
                RawResponse(self._parser.get_status_code(), self._headers, b"".join(self._body))
            )

    # -- requests --------------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    async def send(self, head: bytes, body: bytes) -> RawResponse:
        if self._transport is None or self.closed:
            raise RawHTTPError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.answered = False
        self._transport.write(head + body if body else head)
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class RawClient:
    """One connection per origin (scheme ``http`` only), opened on first use."""

    def __init__(self, timeout: float = 60.0) -> None:
        self._timeout = timeout
        self._connections: dict[str, _Connection] = {}

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    async def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> RawResponse:
        return await self.request("GET", url, b"", None, headers)

    async def post(
        self,
        url: str,
        *,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RawResponse:
        if json is not None:
            body, kind = jsonlib.dumps(json).encode(), "application/json"
        else:
            body, kind = urlencode(data or {}).encode(), "application/x-www-form-urlencoded"
        return await self.request("POST", url, body, kind, headers)

    async def request(
        self,
        method: str,
        url: str,
        body: bytes,
        content_type: str | None,
        headers: Mapping[str, str] | None,
    ) -> RawResponse:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"RawClient speaks plain http only, not {parts.scheme!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        if method != "GET":
            lines.append(f"Content-Length: {len(body)}")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in (1, 2):
            connection = self._connections.get(parts.netloc)
            reused = connection is not None and not connection.closed
            if connection is None or connection.closed:
                loop = asyncio.get_running_loop()
                _, connection = await loop.create_connection(
                    _Connection, parts.hostname, parts.port or 80
                )
                self._connections[parts.netloc] = connection
            try:
                async with asyncio.timeout(self._timeout):
                    return await connection.send(head, body)
            except RawHTTPError:
                # The server may close an idle keep-alive connection just as a request goes
                # out; it read nothing then, so one retry on a new connection is safe.
                if not (reused and attempt == 1 and not connection.answered):
                    raise
            except TimeoutError:
                connection.close()  # its answer may still come: never reuse it
                raise
        raise AssertionError("unreachable")
