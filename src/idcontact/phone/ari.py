"""Asterisk's REST interface (ARI): REST calls over httpx, events over a WebSocket.

A small client rather than a library: the call logic (``calls.py``) needs a dozen requests and
the event stream, and a fake that replays recorded events stands in for it in unit tests. The
event stream reconnects with exponential backoff; channels stay in the Stasis application while
we are away, so calls survive a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import websockets
from websockets.exceptions import WebSocketException

from idcontact.errors import IdContactError

log = logging.getLogger(__name__)

CONNECTED = "IdContactConnected"
"""A pseudo event, yielded after every (re)connection of the event stream."""
DISCONNECTED = "IdContactDisconnected"
"""A pseudo event, yielded when the event stream is lost (before reconnecting)."""


class PbxError(IdContactError):
    status = 502
    slug = "pbx-error"
    title = "The phone system did not answer correctly"


class GoneError(PbxError):
    """The channel, playback or bridge no longer exists (the caller hung up meanwhile); its
    end arrives as an event, so the call logic may carry on."""


class AriClient:
    """One Stasis application on one Asterisk."""

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        app: str,
        *,
        timeout: float = 5.0,
        backoff: tuple[float, float] = (0.2, 15.0),
    ) -> None:
        self._base = base_url.rstrip("/")
        self._user = user
        self._password = password
        self._app = app
        self._backoff = backoff
        self._http = httpx.AsyncClient(base_url=self._base, auth=(user, password), timeout=timeout)

    @property
    def app(self) -> str:
        return self._app

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, params: Mapping[str, str | int] | None = None
    ) -> Any:
        """One REST call; ``PbxError`` (names the path, never credentials) on failure."""
        try:
            response = await self._http.request(method, path, params=params)
        except httpx.HTTPError as exc:
            raise PbxError(f"ARI {method} {_shape(path)}: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise GoneError(f"ARI {method} {_shape(path)}: gone")
        if response.status_code >= 400:
            raise PbxError(f"ARI {method} {_shape(path)}: HTTP {response.status_code}")
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def ping(self) -> bool:
        try:
            await self.request("GET", "/asterisk/ping")
        except PbxError:
            return False
        return True

    def _events_url(self) -> str:
        parts = urlsplit(self._base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        query = urlencode({"app": self._app, "subscribeAll": "false"})
        return urlunsplit((scheme, parts.netloc, f"{parts.path}/events", query, ""))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event of the application, forever; reconnects with backoff (logged without
        the URL's credentials) and yields a ``CONNECTED`` pseudo event after each connect."""
        delay = self._backoff[0]
        auth = httpx.BasicAuth(self._user, self._password)
        header = next(auth.auth_flow(httpx.Request("GET", self._base))).headers["Authorization"]
        while True:
            try:
                async with websockets.connect(
                    self._events_url(),
                    additional_headers={"Authorization": header},
                    open_timeout=5,
                    ping_interval=20,
                    max_size=1 << 20,
                ) as socket:
                    delay = self._backoff[0]
                    log.info("ARI event stream connected")
                    yield {"type": CONNECTED}
                    async for message in socket:
                        try:
                            event = json.loads(message)
                        except ValueError:
                            continue
                        if isinstance(event, dict):
                            yield event
                error = "closed"
            except (TimeoutError, OSError, WebSocketException) as exc:
                error = type(exc).__name__
            log.warning(
                "ARI event stream lost; reconnecting",
                extra={"error": error, "retry_in": round(delay, 2)},
            )
            yield {"type": DISCONNECTED}
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 (jitter, not a secret)
            delay = min(delay * 2, self._backoff[1])

    # -- what the call logic asks of the PBX ---------------------------------------------

    async def answer(self, channel: str) -> None:
        with contextlib.suppress(GoneError):
            await self.request("POST", f"/channels/{channel}/answer")

    async def hangup(self, channel: str) -> None:
        with contextlib.suppress(PbxError):  # gone already
            await self.request("DELETE", f"/channels/{channel}", {"reason": "normal"})

    async def play(self, channel: str, media: list[str], playback_id: str) -> None:
        with contextlib.suppress(GoneError):
            await self.request(
                "POST", f"/channels/{channel}/play/{playback_id}", {"media": ",".join(media)}
            )

    async def stop_playback(self, playback_id: str) -> None:
        with contextlib.suppress(PbxError):  # finished already
            await self.request("DELETE", f"/playbacks/{playback_id}")

    async def start_moh(self, channel: str) -> None:
        with contextlib.suppress(GoneError):
            await self.request("POST", f"/channels/{channel}/moh", {"mohClass": "default"})

    async def stop_moh(self, channel: str) -> None:
        with contextlib.suppress(PbxError):
            await self.request("DELETE", f"/channels/{channel}/moh")

    async def originate(
        self, endpoint: str, channel_id: str, app_args: str, caller_id: str, ring_seconds: int
    ) -> None:
        await self.request(
            "POST",
            f"/channels/{channel_id}",
            {
                "endpoint": endpoint,
                "app": self._app,
                "appArgs": app_args,
                "callerId": caller_id,
                "timeout": ring_seconds,
            },
        )

    async def bridge(self, bridge_id: str, channels: list[str]) -> None:
        await self.request("POST", f"/bridges/{bridge_id}", {"type": "mixing"})
        await self.request(
            "POST", f"/bridges/{bridge_id}/addChannel", {"channel": ",".join(channels)}
        )

    async def inventory(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The channels in our application and every bridge (after a restart: what to adopt)."""
        app = await self.request("GET", f"/applications/{self._app}")
        ours = set(app.get("channel_ids", [])) if isinstance(app, dict) else set()
        channels = await self.request("GET", "/channels") or []
        bridges = await self.request("GET", "/bridges") or []
        return [c for c in channels if c.get("id") in ours], list(bridges)

    async def destroy_bridge(self, bridge_id: str) -> None:
        with contextlib.suppress(PbxError):
            await self.request("DELETE", f"/bridges/{bridge_id}")


def _shape(path: str) -> str:
    """A path for logs and errors with ids replaced: ``/channels/{id}/play``."""
    parts = path.split("?")[0].split("/")
    return "/".join(p if not p or p.isalpha() else "{id}" for p in parts)
