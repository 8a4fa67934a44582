"""The IRMA server's HTTP side, with the Go server's paths and JSON (idcontact.irma.sessions
holds the logic): the requestor API, the app API (protocol 2.8) and the frontend API.

Mounted under a prefix (``/yivi`` in the embedded mode): ``POST /yivi/session`` for
requestors, ``/yivi/irma/session/{clienttoken}/…`` for the app. Starting a session always
needs a requestor's token; errors have the Go server's shape
(``{"status", "error", "description", "message", "stacktrace"}``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from idcontact.irma.request import DisclosureRequest, RequestFormatError
from idcontact.irma.sessions import UNAUTHORIZED, Session, SessionError, Sessions, Status

PROTOCOL = "2.8"
MAX_BODY = 1 << 20
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


async def _json(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise SessionError(413, "REQUEST_TOO_LARGE", "The request is too large")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise SessionError(400, "MALFORMED_INPUT", "The body is not valid JSON") from None


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


def irma_router(
    sessions: Sessions,
    requestors: Mapping[str, str],
    *,
    public_url: str,
    prefix: str = "/yivi",
    dev_mode: bool = True,
) -> APIRouter:
    """``requestors``: name → token (``Authorization: <token>`` to start a session)."""
    router = APIRouter(prefix=prefix, include_in_schema=False, route_class=GoErrors)

    def requestor(request: Request) -> str:
        given = request.headers.get("authorization", "")
        for name, expected in requestors.items():
            if given and hmac.compare_digest(given.encode(), expected.encode()):
                return name
        raise SessionError(403, "UNAUTHORIZED", "Requestor authentication failed")

    def client_request(session: Session) -> dict[str, Any]:
        body = session.request.to_json()
        body["protocolVersion"] = PROTOCOL
        body["devMode"] = dev_mode
        return body

    @router.post("/session")
    async def start(request: Request) -> Response:
        requestor(request)
        body = await _json(request)
        timeout = 300
        if isinstance(body, dict) and "request" in body and "@context" not in body:
            timeout = body.get("timeout", 300)
            if type(timeout) is not int or not 0 < timeout <= 900:
                raise SessionError(400, "INVALID_REQUEST", "timeout must be 1 to 900 s")
            body = body["request"]
        try:
            parsed = DisclosureRequest.parse(body)
        except RequestFormatError as exc:
            raise SessionError(400, "INVALID_REQUEST", str(exc)) from None
        if parsed.kind != "disclosing":
            raise SessionError(400, "INVALID_REQUEST", "only disclosure sessions")
        session = sessions.start(parsed, timeout=timeout)
        return JSONResponse(
            {
                "token": session.requestor_token,
                "sessionPtr": {
                    "u": f"{public_url}{prefix}/irma/session/{session.client_token}",
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

    @router.get("/session/{token}/result")
    async def result(token: str) -> Response:
        return JSONResponse(sessions.by_requestor(token).result_json())

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

    return router
