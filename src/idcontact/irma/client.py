"""The requestor side of an IRMA server: start a disclosure session, follow it, fetch the result.

One client for both backends, ours (``/yivi`` in the embedded mode) and the Go ``irma
server``: the same paths and JSON. It authenticates with a token (``Authorization``) or with a
JWT signed by an HS256 key or an RSA private key (RS256), and reads the result either plainly
or as ``result-jwt``, verified against the server's configured public key.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc.jwk import OctKey, RSAKey

from idcontact.errors import TokenError
from idcontact.tokens import sign_jwt, verify_jwt

MAX_EVENT_BYTES = 4096
FINAL = frozenset({"DONE", "CANCELLED", "TIMEOUT"})


class RemoteError(Exception):
    """The server refused, in its words (the Go error JSON), or did not answer sensibly."""

    def __init__(self, status: int, error: str, description: str = "") -> None:
        super().__init__(f"{status} {error}: {description}" if description else f"{status} {error}")
        self.status = status
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Started:
    """A new session: the requestor's token, what the app opens, what the frontend needs."""

    token: str
    session_ptr: dict[str, Any]
    frontend_request: dict[str, Any]


class RequestorClient:
    """``auth`` is a token (string), an HS256 key (``OctKey``) or an RS256 key (``RSAKey``)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        auth: str | OctKey | RSAKey,
        *,
        name: str = "idcontact",
        result_key: RSAKey | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self.url = url.rstrip("/")
        self._auth = auth
        self._name = name
        self._result_key = result_key
        self._clock = clock

    async def reachable(self) -> bool:
        """Whether the server answers HTTP at all (``/readyz``): any answer below 500 will do,
        the root path of the requestor API has no resource of its own."""
        try:
            response = await self._http.get(f"{self.url}/", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    async def start(
        self,
        request: Mapping[str, Any],
        *,
        app_timeout: int | None = None,
        validity: int | None = None,
    ) -> Started:
        extended: dict[str, Any] = {"request": dict(request)}
        if app_timeout is not None:
            extended["timeout"] = app_timeout
        if validity is not None:
            extended["validity"] = validity
        if isinstance(self._auth, str):
            sent = await self._http.post(
                f"{self.url}/session", json=extended, headers={"Authorization": self._auth}
            )
        else:
            claims = {
                "iss": self._name,
                "iat": int(self._clock()),
                "sub": "verification_request",
                "sprequest": extended,
            }
            sent = await self._http.post(
                f"{self.url}/session",
                content=sign_jwt(claims, self._auth),
                headers={"Content-Type": "text/plain"},
            )
        body = _json(sent)
        try:
            return Started(body["token"], body["sessionPtr"], body.get("frontendRequest", {}))
        except (KeyError, TypeError):
            raise RemoteError(sent.status_code, "MALFORMED_ANSWER") from None

    async def status(self, token: str) -> str:
        return str(_json(await self._http.get(f"{self.url}/session/{token}/status")))

    async def status_events(self, token: str) -> AsyncIterator[str]:
        """The status now, then each change, until a final status or until the server closes
        the stream (``RemoteError`` when it offers no events: poll :meth:`status`).

        The Go server sends changes only, ours the status at subscription too; asking once
        the stream is open makes both the same, and no change falls between the two.
        """
        url = f"{self.url}/session/{token}/statusevents"
        async with self._http.stream("GET", url, timeout=None) as response:
            if response.status_code != 200:
                raise RemoteError(response.status_code, "NO_STATUS_EVENTS")
            last = await self.status(token)
            yield last
            if last in FINAL:
                return
            async for line in response.aiter_lines():
                if len(line) > MAX_EVENT_BYTES:
                    raise RemoteError(200, "MALFORMED_ANSWER")
                if not line.startswith("data:"):
                    continue
                try:
                    status = str(json.loads(line[5:]))
                except ValueError:
                    raise RemoteError(200, "MALFORMED_ANSWER") from None
                if status != last:
                    last = status
                    yield status
                if status in FINAL:
                    return

    async def result(self, token: str) -> dict[str, Any]:
        """The session result; through ``result-jwt`` when a result key is configured, so what
        arrives is what the server signed."""
        if self._result_key is None:
            body = _json(await self._http.get(f"{self.url}/session/{token}/result"))
            if not isinstance(body, dict):
                raise RemoteError(200, "MALFORMED_ANSWER")
            return body
        answer = await self._http.get(f"{self.url}/session/{token}/result-jwt")
        if answer.status_code != 200:
            _json(answer)
        try:
            claims = verify_jwt(
                answer.text,
                {},
                fallback_key=self._result_key,
                allowed_algs=("RS256",),
                clock=self._clock,
            )
        except TokenError as exc:
            raise RemoteError(200, "RESULT_NOT_TRUSTED", type(exc).__name__) from None
        return dict(claims)

    async def cancel(self, token: str) -> None:
        answer = await self._http.delete(f"{self.url}/session/{token}")
        if answer.status_code >= 400:
            _json(answer)


def _json(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        raise RemoteError(response.status_code, "MALFORMED_ANSWER") from None
    if response.status_code >= 400:
        if isinstance(body, dict):
            raise RemoteError(
                response.status_code, str(body.get("error")), str(body.get("description", ""))
            )
        raise RemoteError(response.status_code, "MALFORMED_ANSWER")
    return body
