"""The app behind a real server, for responses that stay open (server-sent events).

httpx's ASGITransport collects the whole body before it answers, so a stream that stays open
needs a real server: uvicorn in a thread of this process, on the app built here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from idcontact.app import create_app
from tests.conftest import demo_settings
from tests.flows._servers import HOST, free_port

STREAM_DEADLINE_S = 15.0


@contextmanager
def served(tmp_path: Path, **overrides: Any) -> Iterator[str]:
    """The embedded demo behind uvicorn on a free port; stopped (and joined) on exit."""
    with serve(
        lambda base: create_app(demo_settings(tmp_path, public_url=base, **overrides))
    ) as url:
        yield url


@dataclass
class Receiver:
    """Another system's HTTP endpoint (an archive, an SMS gateway), as far as we see it: it
    answers ``status`` and keeps what it got."""

    url: str = ""
    status: int = 500
    received: list[tuple[dict[str, str], Any]] = field(default_factory=list)


@contextmanager
def receiving(status: int = 500) -> Iterator[Receiver]:
    """A :class:`Receiver` behind a real server, taking JSON POSTs at ``url``."""
    r = Receiver(status=status)

    async def take(request: Request) -> JSONResponse:
        r.received.append((dict(request.headers), await request.json()))
        return JSONResponse({}, status_code=r.status)

    with serve(lambda base: Starlette(routes=[Route("/receive", take, methods=["POST"])])) as url:
        r.url = f"{url}/receive"
        yield r


@contextmanager
def serve(
    make: Callable[[str], ASGIApp], *, port: int | None = None, **options: Any
) -> Iterator[str]:
    """The app ``make(base_url)`` behind uvicorn on a free port (or ``port``); stopped (and
    joined) on exit. ``options`` go to ``uvicorn.Config`` (``ssl_certfile`` makes it https)."""
    port = port or free_port()
    scheme = "https" if options.get("ssl_certfile") else "http"
    base = f"{scheme}://{HOST}:{port}"
    app = make(base)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=HOST,
            port=port,
            log_level="warning",
            lifespan="on",
            ws="none",
            timeout_graceful_shutdown=5,
            **options,
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "the server stopped during start-up"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "the server did not stop"


class Stream:
    """The events and comments of one ``text/event-stream`` response, read as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.raw: list[str] = []

    async def next(self) -> Any:
        """The next event's data (parsed JSON), a comment (``": ..."``), or ``None`` when the
        stream ended. Named events (``event: open``) are kept in ``raw`` only."""
        data: list[str] = []
        with anyio.fail_after(STREAM_DEADLINE_S):
            async for line in self._lines:
                self.raw.append(line)
                if line.startswith(":"):
                    return line
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    return json.loads("\n".join(data))
        return None

    async def event(self) -> Any:
        """The next event, skipping comments."""
        while True:
            item = await self.next()
            if not (isinstance(item, str) and item.startswith(":")):
                return item


@asynccontextmanager
async def stream(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Stream]:
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        yield Stream(response)
