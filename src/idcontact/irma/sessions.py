"""IRMA disclosure sessions: the state machine behind the requestor and app APIs.

``INITIALIZED`` → (``PAIRING``) → ``CONNECTED`` → ``DONE``; from any state that is not final,
``CANCELLED`` or ``TIMEOUT``. A session waits ``timeout`` seconds (default 300) for the app,
lives at most ``max_lifetime`` (15 minutes), and its result is kept ``result_lifetime`` (5
minutes) after it ends. Tokens are random: the requestor's, the app's (in the QR code) and the
frontend's authorization; the app's first ``Authorization`` header binds the session (protocol
2.8), and every later call must repeat it. No web framework here.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from idcontact.irma.request import DisclosureRequest
from idcontact.irma.schemes import Schemes
from idcontact.irma.verify import Verified, verify_disclosure

Clock = Callable[[], float]
TOKEN_ALPHABET = string.ascii_letters + string.digits


class Status(StrEnum):
    INITIALIZED = "INITIALIZED"
    PAIRING = "PAIRING"
    CONNECTED = "CONNECTED"
    DONE = "DONE"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"


FINAL = frozenset({Status.DONE, Status.CANCELLED, Status.TIMEOUT})


class SessionError(Exception):
    """An IRMA protocol error, in the Go server's words (``error`` is its code)."""

    def __init__(self, status: int, error: str, description: str, message: str = "") -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "description": self.description,
            "message": self.message,
            "stacktrace": "",
        }


UNKNOWN = SessionError(400, "SESSION_UNKNOWN", "Unknown or expired session")
UNAUTHORIZED = SessionError(403, "UNAUTHORIZED", "You are not authorized to access the session")


def session_url(public_url: str, prefix: str, client_token: str, host: str | None = None) -> str:
    """The app's URL of a session (``sessionPtr.u``); ``host`` replaces the public host name
    (a municipality's requestor host, registered with Yivi so the app names it)."""
    base = public_url
    if host is not None:
        parts = urlsplit(public_url)
        base = urlunsplit(parts._replace(netloc=host))
    return f"{base}{prefix}/irma/session/{client_token}"


def token(length: int = 20) -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


@dataclass
class Session:
    request: DisclosureRequest
    requestor_token: str
    client_token: str
    frontend_authorization: str
    created: float
    timeout: float
    status: Status = Status.INITIALIZED
    binding: str | None = None
    """The app's ``Authorization`` header of its first call."""
    result: Verified | None = None
    ended: float | None = None
    pairing_code: str | None = None
    changed: float = field(default=0.0)
    validity: int = 120
    """Seconds the result JWT stays valid."""
    requestor: str = ""
    max_lifetime: float = 900
    _event: asyncio.Event | None = field(default=None, repr=False)

    def change(self) -> asyncio.Event:
        """An event set at the next status change (for status events)."""
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    @property
    def deadline(self) -> float:
        """When this session times out unless it ends before."""
        if self.status is Status.INITIALIZED:
            return self.created + self.timeout
        return self.created + self.max_lifetime

    def result_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "token": self.requestor_token,
            "status": str(self.status),
            "type": "disclosing",
        }
        if self.result is not None:
            out["proofStatus"] = str(self.result.status)
            out["disclosed"] = [[a.to_json() for a in c] for c in self.result.disclosed]
        return out


class Sessions:
    """Every session of one server, in memory (one process; #11 for several)."""

    def __init__(
        self,
        schemes: Schemes,
        *,
        clock: Clock = time.time,
        max_lifetime: float = 900,
        result_lifetime: float = 300,
        max_sessions: int = 10_000,
    ) -> None:
        self.schemes = schemes
        self._clock = clock
        self._max_lifetime = max_lifetime
        self._result_lifetime = result_lifetime
        self._max = max_sessions
        self._by_requestor: dict[str, Session] = {}
        self._by_client: dict[str, Session] = {}

    def start(
        self,
        request: DisclosureRequest,
        *,
        timeout: float = 300,
        validity: int = 120,
        requestor: str = "",
    ) -> Session:
        self.expire()
        if len(self._by_requestor) >= self._max:
            raise SessionError(503, "TOO_MANY_SESSIONS", "Too many sessions; try again later")
        unknown = [t for t in request.credential_types if self.schemes.credential_type(t) is None]
        if unknown:
            raise SessionError(400, "UNKNOWN_CREDENTIAL_TYPE", "Unknown credential type")
        nonce = int.from_bytes(secrets.token_bytes(16), "big")
        session = Session(
            request=_with_nonce(request, nonce),
            requestor_token=token(),
            client_token=token(),
            frontend_authorization=token(),
            created=self._clock(),
            timeout=min(timeout, self._max_lifetime),
            validity=validity,
            requestor=requestor,
            max_lifetime=self._max_lifetime,
        )
        self._by_requestor[session.requestor_token] = session
        self._by_client[session.client_token] = session
        return session

    def by_requestor(self, requestor_token: str) -> Session:
        self.expire()
        session = self._by_requestor.get(requestor_token)
        if session is None:
            raise UNKNOWN
        return session

    def by_requestor_of_client(self, client_token: str) -> Session:
        """The session behind a client token, without binding it (for the frontend)."""
        self.expire()
        session = self._by_client.get(client_token)
        if session is None:
            raise UNKNOWN
        return session

    def set_pairing(self, session: Session, pin: bool) -> None:
        """The frontend asks for pairing (a 4-digit code the app shows), before the app came."""
        if session.status is not Status.INITIALIZED:
            raise SessionError(400, "UNEXPECTED_REQUEST", "Too late to change the options")
        session.pairing_code = (
            "".join(secrets.choice(string.digits) for _ in range(4)) if pin else None
        )

    def by_client(self, client_token: str, authorization: str | None) -> Session:
        """The app's session; its first call binds it to ``authorization``."""
        self.expire()
        session = self._by_client.get(client_token)
        if session is None:
            raise UNKNOWN
        if not authorization or len(authorization) > 200:
            raise UNAUTHORIZED
        if session.binding is None:
            if session.status is not Status.INITIALIZED:
                raise UNAUTHORIZED
            session.binding = authorization
            self._set(session, Status.PAIRING if session.pairing_code else Status.CONNECTED)
        elif not hmac.compare_digest(session.binding, authorization):
            raise UNAUTHORIZED
        return session

    def paired(self, session: Session) -> None:
        if session.status is not Status.PAIRING:
            raise SessionError(400, "UNEXPECTED_REQUEST", "The session is not pairing")
        self._set(session, Status.CONNECTED)

    def prove(self, session: Session, disclosure: object) -> Verified:
        if session.status is not Status.CONNECTED:
            raise SessionError(400, "UNEXPECTED_REQUEST", "Unexpected request in this state")
        result = verify_disclosure(disclosure, session.request, self.schemes, now=self._clock())
        session.result = result
        self._set(session, Status.DONE)
        return result

    def cancel(self, session: Session) -> None:
        if session.status not in FINAL:
            self._set(session, Status.CANCELLED)

    def expire(self) -> None:
        now = self._clock()
        for session in list(self._by_requestor.values()):
            waited = now - session.created
            if session.status is Status.INITIALIZED and waited > session.timeout:
                self._set(session, Status.TIMEOUT)
            elif session.status not in FINAL and waited > session.max_lifetime:
                self._set(session, Status.TIMEOUT)
            if session.ended is not None and now - session.ended > self._result_lifetime:
                self._by_requestor.pop(session.requestor_token, None)
                self._by_client.pop(session.client_token, None)

    async def next_status(self, session: Session, seen: Status, wait: float) -> Status:
        """The status once it differs from ``seen``, or after ``wait`` seconds (keep-alive).

        Timeouts are noticed here too: the wait ends at the session's deadline.
        """
        event = session.change()
        self.expire()
        if session.status is seen:
            left = max(0.0, min(wait, session.deadline - self._clock() + 0.05))
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                self.expire()
        return session.status

    def _set(self, session: Session, status: Status) -> None:
        session.status = status
        session.changed = self._clock()
        if status in FINAL:
            session.ended = session.changed
        event, session._event = session._event, None
        if event is not None:
            event.set()


def _with_nonce(request: DisclosureRequest, nonce: int) -> DisclosureRequest:
    return replace(request, nonce=nonce, context=1)
