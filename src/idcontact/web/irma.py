"""The IRMA server's HTTP side, with the Go server's paths and JSON (idcontact.irma.sessions
holds the logic): the requestor API, the app API (protocol 2.8) and the frontend API.

Mounted under a prefix (``/yivi`` in the embedded mode): ``POST /yivi/session`` for
requestors, ``/yivi/irma/session/{clienttoken}/…`` for the app. Starting a session always
needs requestor authentication (token or JWT); errors have the Go server's shape
(``{"status", "error", "description", "message", "stacktrace"}``). Status events are
server-sent events as the Go server sends them (``event: open``, then ``data: "<STATUS>"``).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from joserfc.jwk import RSAKey

from idcontact.irma.requestors import Requestors, parse_json
from idcontact.irma.sessions import (
    FINAL,
    UNAUTHORIZED,
    Session,
    SessionError,
    Sessions,
    Status,
    session_url,
)
from idcontact.tokens import sign_jwt
from idcontact.web.routing import Router

PROTOCOL = "2.8"
MAX_BODY = 1 << 20
KEEPALIVE = 15.0
CLIENT_CONTEXT = "https://irma.app/ld/request/client/v1"
OPTIONS_CONTEXT = "https://irma.app/ld/options/v1"
FRONTEND_OPTIONS_CONTEXT = "https://irma.app/ld/request/frontendoptions/v1"


class GoErrors(APIRoute):
    """Routes whose ``SessionError`` becomes the Go server's error JSON (raised anywhere in
    the handler, so no handler repeats the conversion)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except SessionError as exc:
                return JSONResponse(exc.to_json(), status_code=exc.status)

        return handle


async def _body(request: Request) -> bytes:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise SessionError(413, "REQUEST_TOO_LARGE", "The request is too large")
    return raw


async def _json(request: Request) -> Any:
    return parse_json(await _body(request))


def _version_ok(request: Request) -> bool:
    def parse(value: str | None) -> tuple[int, int] | None:
        try:
            major, minor = (value or "").split(".")
            return int(major), int(minor)
        except ValueError:
            return None

    low = parse(request.headers.get("x-irma-minprotocolversion"))
    high = parse(request.headers.get("x-irma-maxprotocolversion"))
    return low is not None and high is not None and low <= (2, 8) <= high


async def _events(
    sessions: Sessions, session: Session, shape: Callable[[Session], object]
) -> AsyncIterator[bytes]:
    """``event: open``, the status now (the Go server waits for the next change; a client
    that connects late would miss it), then each change; ends after a final status."""
    yield b"event: open\n\n"
    seen = None
    while True:
        if session.status is not seen:
            seen = session.status
            yield f"data: {json.dumps(shape(session))}\n\n".encode()
            if seen in FINAL:
                return
        elif (await sessions.next_status(session, seen, KEEPALIVE)) is seen:
            yield b": keep-alive\n\n"


def _stream(sessions: Sessions, session: Session, shape: Callable[[Session], object]) -> Response:
    return StreamingResponse(
        _events(sessions, session, shape),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def irma_router(
    sessions: Sessions,
    requestors: Requestors,
    *,
    public_url: str,
    prefix: str = "/yivi",
    dev_mode: bool = True,
    jwt_key: RSAKey | None = None,
    jwt_issuer: str = "idcontact",
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """``dev_mode`` is what the app is told (false in production: the app then insists on
    HTTPS); ``jwt_key`` signs ``result-jwt`` (RS256) and is served at ``/publickey``."""
    router = Router(prefix=prefix, include_in_schema=False, route_class=GoErrors)
    public_pem = None
    if jwt_key is not None:
        private = jwt_key.raw_value
        public = private.public_key() if isinstance(private, rsa.RSAPrivateKey) else private
        public_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def client_request(session: Session) -> dict[str, Any]:
        body = session.request.to_json()
        body["protocolVersion"] = PROTOCOL
        body["devMode"] = dev_mode
        return body

    @router.post("/session")
    async def start(request: Request) -> Response:
        raw = await _body(request)
        requestor, asked = requestors.authenticate(request.headers.get("authorization"), raw)
        if asked.host is not None and asked.host not in requestor.hosts:
            raise SessionError(
                403,
                "UNAUTHORIZED",
                "You are not authorized to issue or verify this attribute",
                "requestor not allowed to use the requested host",
            )
        session = sessions.start(
            asked.request,
            timeout=asked.timeout,
            validity=asked.validity,
            requestor=requestor.name,
        )
        return JSONResponse(
            {
                "token": session.requestor_token,
                "sessionPtr": {
                    "u": session_url(public_url, prefix, session.client_token, asked.host),
                    "irmaqr": "disclosing",
                },
                "frontendRequest": {
                    "authorization": session.frontend_authorization,
                    "pairingHint": True,
                    "minProtocolVersion": "1.0",
                    "maxProtocolVersion": "1.1",
                },
            }
        )

    @router.get("/session/{token}/status")
    async def status(token: str) -> Response:
        return JSONResponse(str(sessions.by_requestor(token).status))

    @router.get("/session/{token}/statusevents")
    async def status_events(token: str) -> Response:
        return _stream(sessions, sessions.by_requestor(token), lambda s: str(s.status))

    @router.get("/session/{token}/result")
    async def result(token: str) -> Response:
        return JSONResponse(sessions.by_requestor(token).result_json())

    @router.get("/session/{token}/result-jwt")
    async def result_jwt(token: str) -> Response:
        session = sessions.by_requestor(token)
        if jwt_key is None:
            raise SessionError(500, "UNKNOWN", "No key to sign results with")
        now = int(clock())
        claims = {
            **session.result_json(),
            "iss": jwt_issuer,
            "iat": now,
            "exp": now + session.validity,
            "sub": "disclosing_result",
        }
        return Response(sign_jwt(claims, jwt_key), media_type="text/plain")

    @router.get("/publickey")
    async def public_key() -> Response:
        if public_pem is None:
            raise SessionError(404, "UNKNOWN", "No public key configured")
        return Response(public_pem, media_type="text/plain")

    @router.delete("/session/{token}")
    async def cancel(token: str) -> Response:
        sessions.cancel(sessions.by_requestor(token))
        return Response(status_code=204)

    # -- the app -------------------------------------------------------------------------

    @router.get("/irma/session/{client}/")
    async def open_session(request: Request, client: str) -> Response:
        if not _version_ok(request):
            raise SessionError(400, "PROTOCOL_VERSION", "Protocol version negotiation failed")
        session = sessions.by_client(client, request.headers.get("authorization"))
        pairing = session.status is Status.PAIRING
        body: dict[str, Any] = {
            "@context": CLIENT_CONTEXT,
            "protocolVersion": PROTOCOL,
            "options": {
                "@context": OPTIONS_CONTEXT,
                "pairingMethod": "pin" if pairing else "none",
            },
        }
        if pairing:
            # The app shows the code; the resident types it where the QR code was shown.
            body["options"]["pairingCode"] = session.pairing_code
        if not pairing:
            body["request"] = client_request(session)
        return JSONResponse(body)

    @router.get("/irma/session/{client}/request")
    async def session_request(request: Request, client: str) -> Response:
        session = sessions.by_client(client, request.headers.get("authorization"))
        if session.status is not Status.CONNECTED:
            raise SessionError(400, "UNEXPECTED_REQUEST", "Pairing is not complete")
        return JSONResponse(client_request(session))

    @router.get("/irma/session/{client}/status")
    async def app_status(request: Request, client: str) -> Response:
        session = sessions.by_client(client, request.headers.get("authorization"))
        return JSONResponse(str(session.status))

    @router.get("/irma/session/{client}/statusevents")
    async def app_status_events(request: Request, client: str) -> Response:
        session = sessions.by_client(client, request.headers.get("authorization"))
        return _stream(sessions, session, lambda s: str(s.status))

    @router.post("/irma/session/{client}/proofs")
    async def proofs(request: Request, client: str) -> Response:
        session = sessions.by_client(client, request.headers.get("authorization"))
        disclosure = await _json(request)
        verified = sessions.prove(session, disclosure)
        return JSONResponse({"proofStatus": str(verified.status)})

    @router.delete("/irma/session/{client}")
    async def app_cancel(request: Request, client: str) -> Response:
        sessions.cancel(sessions.by_client(client, request.headers.get("authorization")))
        return Response(status_code=204)

    # -- the frontend (the page that shows the QR code) -----------------------------------

    def frontend(request: Request, client: str) -> Session:
        session = sessions.by_requestor_of_client(client)
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), session.frontend_authorization.encode()):
            raise UNAUTHORIZED
        return session

    @router.post("/irma/session/{client}/frontend/options")
    async def options(request: Request, client: str) -> Response:
        session = frontend(request, client)
        body = await _json(request)
        method = body.get("pairingMethod") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or body.get("@context") != FRONTEND_OPTIONS_CONTEXT
            or method not in ("none", "pin")
        ):
            raise SessionError(400, "MALFORMED_INPUT", "Unknown frontend options")
        sessions.set_pairing(session, method == "pin")
        out: dict[str, Any] = {"@context": OPTIONS_CONTEXT, "pairingMethod": method}
        if session.pairing_code:
            out["pairingCode"] = session.pairing_code
        return JSONResponse(out)

    @router.post("/irma/session/{client}/frontend/pairingcompleted")
    async def pairing_completed(request: Request, client: str) -> Response:
        sessions.paired(frontend(request, client))
        return Response(status_code=204)

    @router.get("/irma/session/{client}/frontend/status")
    async def frontend_status(request: Request, client: str) -> Response:
        session = frontend(request, client)
        return JSONResponse({"status": str(session.status)})

    @router.get("/irma/session/{client}/frontend/statusevents")
    async def frontend_status_events(request: Request, client: str) -> Response:
        session = frontend(request, client)
        return _stream(sessions, session, lambda s: {"status": str(s.status)})

    return router
