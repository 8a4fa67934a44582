"""Who may start IRMA sessions: requestor authentication as the Go server does it, and the
session request a requestor sends.

Three methods, per requestor: ``token`` (an API key in the ``Authorization`` header, the body
is JSON), ``hmac`` (the body is an HS256 JWT) and ``publickey`` (an RS256 JWT). A JWT names its
requestor in ``iss``, says what it asks in ``sub`` and carries the request in ``sprequest``;
it must be younger than ``max_age`` seconds. Starting a session without authentication is not
possible here, not even in developer mode: the requestor API faces the network.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from joserfc.jwk import OctKey, RSAKey

from idcontact.errors import TokenError
from idcontact.irma.request import DisclosureRequest, RequestFormatError
from idcontact.irma.sessions import SessionError
from idcontact.tokens import MIN_HMAC_BYTES, SigningKey, verify_jwt

Method = Literal["token", "hmac", "publickey"]
MAX_TIMEOUT = 900
DEFAULT_VALIDITY = 120
# The Go server's answers: a wrong token or a JWT past its age is 403; a request it cannot
# authenticate at all (no token, not a JWT, a bad signature) is 400, the reason in ``message``.
HOST_PATTERN = r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?"
HOST = re.compile(HOST_PATTERN)
UNAUTHORIZED = SessionError(
    403, "UNAUTHORIZED", "You are not authorized to issue or verify this attribute"
)


def _unauthenticated(reason: str) -> SessionError:
    return SessionError(400, "INVALID_REQUEST", "Invalid HTTP request", reason)


@dataclass(frozen=True, repr=False)
class Requestor:
    """One requestor: for ``token`` the API key, for ``hmac`` and ``publickey`` the JWT key."""

    name: str
    method: Method
    token: bytes = b""
    key: SigningKey | None = None
    hosts: frozenset[str] = frozenset()
    """Host names this requestor may put in ``sessionPtr.u`` (the request's ``host``)."""

    def __repr__(self) -> str:
        return f"Requestor({self.name!r}, {self.method!r})"

    @classmethod
    def with_token(cls, name: str, token: str, hosts: Iterable[str] = ()) -> Requestor:
        return cls(name, "token", token=token.encode(), hosts=frozenset(hosts))

    @classmethod
    def with_hmac(cls, name: str, key_base64: str, hosts: Iterable[str] = ()) -> Requestor:
        """The HS256 key, base64 as in the Go server's requestor configuration."""
        try:
            raw = base64.b64decode(key_base64, validate=True)
        except binascii.Error:
            raise ValueError("the hmac key must be base64") from None
        if len(raw) < MIN_HMAC_BYTES:
            raise ValueError(f"the hmac key must be at least {MIN_HMAC_BYTES} bytes")
        return cls(name, "hmac", key=OctKey.import_key(raw), hosts=frozenset(hosts))

    @classmethod
    def with_public_key(cls, name: str, key: RSAKey, hosts: Iterable[str] = ()) -> Requestor:
        return cls(name, "publickey", key=key, hosts=frozenset(hosts))


@dataclass(frozen=True)
class SessionRequest:
    """What a requestor asks: the IRMA request, how long to wait for the app, how long the
    result JWT stays valid."""

    request: DisclosureRequest
    timeout: int = 300
    validity: int = DEFAULT_VALIDITY
    host: str | None = None
    """The host name asked for in ``sessionPtr.u`` (needs the requestor's permission)."""

    @classmethod
    def parse(cls, body: object) -> SessionRequest:
        """A plain request, or the extended form ``{"request", "timeout", "validity"}``."""
        timeout, validity = 300, DEFAULT_VALIDITY
        if isinstance(body, dict) and "request" in body and "@context" not in body:
            unknown = set(body) - {"request", "timeout", "validity"}
            if unknown:
                # callbackUrl and nextSession are not offered: say so instead of ignoring them.
                raise SessionError(400, "INVALID_REQUEST", "Unsupported request fields")
            timeout = body.get("timeout", timeout)
            validity = body.get("validity", validity)
            if type(timeout) is not int or not 0 < timeout <= MAX_TIMEOUT:
                raise SessionError(400, "INVALID_REQUEST", "timeout must be 1 to 900 s")
            if type(validity) is not int or not 0 < validity <= 3600:
                raise SessionError(400, "INVALID_REQUEST", "validity must be 1 to 3600 s")
            body = body["request"]
        host = body.get("host") if isinstance(body, dict) else None
        if host is not None and (not isinstance(host, str) or not HOST.fullmatch(host)):
            raise SessionError(400, "INVALID_REQUEST", "host must be a host name")
        try:
            parsed = DisclosureRequest.parse(body)
        except RequestFormatError as exc:
            raise SessionError(400, "INVALID_REQUEST", str(exc)) from None
        if parsed.kind != "disclosing":
            raise SessionError(400, "INVALID_REQUEST", "Only disclosure sessions are offered")
        return cls(parsed, timeout, validity, host)


class Requestors:
    """The configured requestors; :meth:`authenticate` turns an HTTP request into a
    :class:`SessionRequest` or refuses it."""

    def __init__(
        self,
        requestors: Iterable[Requestor],
        *,
        max_age: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._all = {r.name: r for r in requestors}
        self._max_age = max_age
        self._clock = clock

    def authenticate(
        self, authorization: str | None, body: bytes
    ) -> tuple[Requestor, SessionRequest]:
        """Who asks and what: a token in ``authorization`` with a JSON body, or a JWT body."""
        if authorization:
            given = authorization.encode()
            for requestor in self._all.values():
                if requestor.method == "token" and hmac.compare_digest(given, requestor.token):
                    return requestor, SessionRequest.parse(parse_json(body))
            raise UNAUTHORIZED
        if not body.lstrip().startswith(b"ey"):
            raise _unauthenticated("request could not be authenticated")
        return self._from_jwt(body)

    def _from_jwt(self, body: bytes) -> tuple[Requestor, SessionRequest]:
        try:
            text = body.decode("ascii").strip()
            claims = _unverified_claims(text)
        except (UnicodeDecodeError, ValueError):
            raise _unauthenticated("request could not be authenticated") from None
        requestor = self._all.get(str(claims.get("iss")))
        if requestor is None or requestor.key is None:
            raise _unauthenticated("unknown requestor")
        alg = "HS256" if requestor.method == "hmac" else "RS256"
        try:
            claims = verify_jwt(
                text, {}, fallback_key=requestor.key, require_exp=False, allowed_algs=(alg,)
            )
        except TokenError:
            raise _unauthenticated("signature is invalid") from None
        iat = claims.get("iat")
        now = self._clock()
        if type(iat) is not int or not now - self._max_age <= iat <= now + 5:
            raise UNAUTHORIZED  # as the Go server answers a request older than its max age
        if claims.get("sub") != "verification_request" or "sprequest" not in claims:
            raise SessionError(400, "INVALID_REQUEST", "Only verification requests are offered")
        return requestor, SessionRequest.parse(claims["sprequest"])


def parse_json(body: bytes) -> Any:
    """A request body as JSON, or the Go server's ``MALFORMED_INPUT`` (deep nesting too)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise SessionError(400, "MALFORMED_INPUT", "The body is not valid JSON") from None


def _unverified_claims(token: str) -> dict[str, Any]:
    """The payload, only to find the requestor whose key then verifies the whole token."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 1 << 20:
        raise ValueError("not a JWT")
    payload = parts[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    if not isinstance(claims, dict):
        raise ValueError("not a JWT")
    return claims
