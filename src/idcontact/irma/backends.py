"""Two IRMA servers behind one interface, for the ``yivi`` auth plugin.

- :class:`BuiltinBackend`: our server in this process (``[irma]``), called directly.
- :class:`RemoteBackend`: an IRMA server reached over HTTP with our requestor client: the Go
  ``irma server`` of the Yivi project, or ours in another process. The frontend calls
  (pairing) go to the session's own URL with the frontend authorization, as a browser's would.

Both answer in the requestor API's JSON, so the plugin cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from idcontact.irma.client import FINAL, RemoteError, RequestorClient, Started
from idcontact.irma.requestors import SessionRequest
from idcontact.irma.sessions import Session, SessionError, Sessions, Status, session_url

FRONTEND_OPTIONS_CONTEXT = "https://irma.app/ld/request/frontendoptions/v1"
KEEPALIVE = 15.0


class BackendError(Exception):
    """The IRMA server could not be reached or refused: the resident sees a failure page."""


class Backend(Protocol):
    async def start(self, request: Mapping[str, Any], *, app_timeout: int) -> Started: ...

    async def pairing(self, started: Started) -> str:
        """Ask for a pairing code (cross-device flows); the code the app will show."""
        ...

    async def paired(self, started: Started) -> None: ...

    async def status(self, started: Started) -> str: ...

    def statuses(self, started: Started) -> AsyncIterator[str]:
        """The status now, then each change, until a final one."""
        ...

    async def result(self, started: Started) -> dict[str, Any]: ...

    async def cancel(self, started: Started) -> None: ...


class BuiltinBackend:
    """Our IRMA server in this process."""

    def __init__(self, sessions: Sessions, public_url: str, prefix: str = "/yivi") -> None:
        self._sessions = sessions
        self._public_url = public_url
        self._prefix = prefix

    async def start(self, request: Mapping[str, Any], *, app_timeout: int) -> Started:
        try:
            asked = SessionRequest.parse(dict(request))
            session = self._sessions.start(asked.request, timeout=app_timeout, requestor="yivi")
        except SessionError as exc:
            raise BackendError(exc.error) from None
        url = session_url(self._public_url, self._prefix, session.client_token, asked.host)
        return Started(
            session.requestor_token,
            {"u": url, "irmaqr": "disclosing"},
            {"authorization": session.frontend_authorization},
        )

    def _session(self, started: Started) -> Session:
        try:
            return self._sessions.by_requestor(started.token)
        except SessionError as exc:
            raise BackendError(exc.error) from None

    async def pairing(self, started: Started) -> str:
        session = self._session(started)
        try:
            self._sessions.set_pairing(session, True)
        except SessionError as exc:
            raise BackendError(exc.error) from None
        return str(session.pairing_code)

    async def paired(self, started: Started) -> None:
        try:
            self._sessions.paired(self._session(started))
        except SessionError as exc:
            raise BackendError(exc.error) from None

    async def status(self, started: Started) -> str:
        return str(self._session(started).status)

    async def statuses(self, started: Started) -> AsyncIterator[str]:
        session = self._session(started)
        seen = session.status
        yield str(seen)
        while seen not in (Status.DONE, Status.CANCELLED, Status.TIMEOUT):
            now = await self._sessions.next_status(session, seen, KEEPALIVE)
            if now is not seen:
                seen = now
                yield str(now)

    async def result(self, started: Started) -> dict[str, Any]:
        return self._session(started).result_json()

    async def cancel(self, started: Started) -> None:
        self._sessions.cancel(self._session(started))


@dataclass
class RemoteBackend:
    """An IRMA server over HTTP (the Go server): requestor API and frontend endpoints (pairing),
    both under the server's URL."""

    client: RequestorClient
    http: httpx.AsyncClient

    async def start(self, request: Mapping[str, Any], *, app_timeout: int) -> Started:
        try:
            return await self.client.start(request, app_timeout=app_timeout)
        except (RemoteError, httpx.HTTPError) as exc:
            raise BackendError(_reason(exc)) from None

    async def _frontend(self, started: Started, path: str, body: object | None) -> httpx.Response:
        # Through the server's own URL: the session URL may carry the municipality's host
        # name, which need not resolve from here; the Go server checks that the Host header
        # is the session's host, so it is sent as such.
        pointer = urlsplit(str(started.session_ptr.get("u", "")))
        client_token = pointer.path.rsplit("/", 1)[-1]
        url = f"{self.client.url}/irma/session/{client_token}/frontend/{path}"
        headers = {"Authorization": str(started.frontend_request.get("authorization", ""))}
        if pointer.netloc and pointer.netloc != urlsplit(self.client.url).netloc:
            headers["Host"] = pointer.netloc
        try:
            answer = await self.http.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise BackendError(_reason(exc)) from None
        if answer.status_code >= 400:
            raise BackendError(f"frontend {path}: {answer.status_code}")
        return answer

    async def pairing(self, started: Started) -> str:
        body = {"@context": FRONTEND_OPTIONS_CONTEXT, "pairingMethod": "pin"}
        answer = await self._frontend(started, "options", body)
        try:
            return str(answer.json()["pairingCode"])
        except (ValueError, KeyError, TypeError):
            raise BackendError("frontend options: no pairing code") from None

    async def paired(self, started: Started) -> None:
        await self._frontend(started, "pairingcompleted", None)

    async def status(self, started: Started) -> str:
        try:
            return await self.client.status(started.token)
        except (RemoteError, httpx.HTTPError) as exc:
            raise BackendError(_reason(exc)) from None

    async def statuses(self, started: Started) -> AsyncIterator[str]:
        try:
            async for status in self.client.status_events(started.token):
                yield status
        except (RemoteError, httpx.HTTPError) as exc:
            raise BackendError(_reason(exc)) from None

    async def result(self, started: Started) -> dict[str, Any]:
        try:
            return await self.client.result(started.token)
        except (RemoteError, httpx.HTTPError) as exc:
            raise BackendError(_reason(exc)) from None

    async def cancel(self, started: Started) -> None:
        try:
            await self.client.cancel(started.token)
        except (RemoteError, httpx.HTTPError) as exc:
            raise BackendError(_reason(exc)) from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, RemoteError):
        return exc.error
    return type(exc).__name__


__all__ = ["FINAL", "Backend", "BackendError", "BuiltinBackend", "RemoteBackend"]
