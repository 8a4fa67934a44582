"""The IRMA server: the same requestor and app conversation against ours and against the Go
reference server, plus what only ours is configured for here (requestor authentication,
pairing, timeouts, bad input)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from idcontact.irma.request import DisclosureRequest
from idcontact.irma.requestors import Requestor, Requestors
from idcontact.irma.sessions import Sessions
from idcontact.irma.wallet import Wallet
from idcontact.web.irma import irma_router
from tests.irma.test_wallet import SCHEMES, student
from tests.services import yivi_url

pytestmark = pytest.mark.anyio

REQUESTOR_TOKEN = "requestor-token-for-tests-0123456789"
ASK = {
    "@context": "https://irma.app/ld/request/disclosure/v2",
    "disclose": [[["irma-demo.RU.studentCard.studentID"]]],
}
APP = {"X-IRMA-MinProtocolVersion": "2.8", "X-IRMA-MaxProtocolVersion": "2.8"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Server:
    client: httpx.AsyncClient
    requestor: dict[str, str]
    clock: Clock | None = None


def ours() -> tuple[httpx.AsyncClient, Clock]:
    clock = Clock()
    app = FastAPI()
    app.include_router(
        irma_router(
            Sessions(SCHEMES, clock=clock),
            Requestors([Requestor.with_token("tests", REQUESTOR_TOKEN)]),
            public_url="http://irma.test",
        )
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://irma.test/yivi"
    )
    return client, clock


@pytest.fixture(params=["ours", "go"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    if request.param == "ours":
        client, clock = ours()
        async with client:
            yield Server(client, {"Authorization": REQUESTOR_TOKEN}, clock)
    else:
        async with httpx.AsyncClient(base_url=yivi_url(), timeout=10) as client:
            yield Server(client, {})  # the reference runs without requestor authentication


@pytest.fixture
async def our_server() -> AsyncIterator[Server]:
    client, clock = ours()
    async with client:
        yield Server(client, {"Authorization": REQUESTOR_TOKEN}, clock)


async def start(server: Server, body: Any = None) -> dict[str, Any]:
    started = await server.client.post("/session", json=body or ASK, headers=server.requestor)
    assert started.status_code == 200, started.text
    result: dict[str, Any] = started.json()
    return result


async def status(server: Server, token: str) -> str:
    return str((await server.client.get(f"/session/{token}/status")).json())


async def test_a_disclosure_session_from_start_to_result(server: Server) -> None:
    started = await start(server)
    assert started["sessionPtr"]["irmaqr"] == "disclosing"
    url, token = started["sessionPtr"]["u"], started["token"]
    assert await status(server, token) == "INITIALIZED"
    binding = secrets.token_urlsafe(12)
    opened = await server.client.get(url + "/", headers={**APP, "Authorization": binding})
    assert opened.status_code == 200
    session = opened.json()
    assert session["@context"] == "https://irma.app/ld/request/client/v1"
    assert session["protocolVersion"] == "2.8" and session["options"]["pairingMethod"] == "none"
    assert await status(server, token) == "CONNECTED"
    wallet = Wallet()
    student(wallet, "s4242")
    request = DisclosureRequest.parse(session["request"])
    sent = await server.client.post(
        url + "/proofs", json=wallet.disclose(request), headers={"Authorization": binding}
    )
    assert sent.json() == {"proofStatus": "VALID"}
    result = (await server.client.get(f"/session/{token}/result")).json()
    assert result["status"] == "DONE" and result["proofStatus"] == "VALID"
    assert result["type"] == "disclosing"
    [[attribute]] = result["disclosed"]
    assert (attribute["id"], attribute["rawvalue"], attribute["status"]) == (
        "irma-demo.RU.studentCard.studentID",
        "s4242",
        "PRESENT",
    )
    again = await server.client.post(
        url + "/proofs", json=wallet.disclose(request), headers={"Authorization": binding}
    )
    assert again.status_code in (400, 403)  # a session takes one answer


async def test_another_caller_cannot_use_a_bound_session(server: Server) -> None:
    url = (await start(server))["sessionPtr"]["u"]
    first = await server.client.get(url + "/", headers={**APP, "Authorization": "first"})
    request = DisclosureRequest.parse(first.json()["request"])
    wallet = Wallet()
    student(wallet)
    stolen = await server.client.post(
        url + "/proofs", json=wallet.disclose(request), headers={"Authorization": "second"}
    )
    assert stolen.status_code == 403 and stolen.json()["error"] == "UNAUTHORIZED"


async def test_the_app_can_cancel(server: Server) -> None:
    started = await start(server)
    url = started["sessionPtr"]["u"]
    await server.client.get(url + "/", headers={**APP, "Authorization": "me"})
    cancelled = await server.client.delete(url, headers={"Authorization": "me"})
    assert cancelled.status_code in (200, 204)
    assert await status(server, started["token"]) == "CANCELLED"


async def test_an_old_protocol_version_is_refused(server: Server) -> None:
    url = (await start(server))["sessionPtr"]["u"]
    old = {"X-IRMA-MinProtocolVersion": "2.4", "X-IRMA-MaxProtocolVersion": "2.5"}
    refused = await server.client.get(url + "/", headers={**old, "Authorization": "me"})
    assert refused.status_code == 400
    assert refused.json()["error"] == "PROTOCOL_VERSION"


async def test_unknown_sessions_have_the_reference_error_shape(server: Server) -> None:
    unknown = await server.client.get("/session/aaaaaaaaaaaaaaaaaaaa/status")
    assert unknown.status_code == 400
    body = unknown.json()
    assert body["error"] == "SESSION_UNKNOWN" and body["status"] == 400


async def test_starting_a_session_needs_a_requestor(our_server: Server) -> None:
    for headers in ({}, {"Authorization": "wrong"}):
        refused = await our_server.client.post("/session", json=ASK, headers=headers)
        assert refused.status_code == 403
        assert refused.json()["error"] == "UNAUTHORIZED"
        assert REQUESTOR_TOKEN not in refused.text


async def test_pairing_holds_the_request_back_until_the_code_is_confirmed(
    our_server: Server,
) -> None:
    started = await start(our_server)
    url = started["sessionPtr"]["u"]
    frontend = {"Authorization": started["frontendRequest"]["authorization"]}
    options = await our_server.client.post(
        url + "/frontend/options",
        json={"@context": "https://irma.app/ld/request/frontendoptions/v1", "pairingMethod": "pin"},
        headers=frontend,
    )
    code = options.json()["pairingCode"]
    assert len(code) == 4 and code.isdigit()
    opened = (
        await our_server.client.get(url + "/", headers={**APP, "Authorization": "app"})
    ).json()
    assert opened["options"]["pairingMethod"] == "pin" and "request" not in opened
    early = await our_server.client.get(url + "/request", headers={"Authorization": "app"})
    assert early.status_code == 400
    stranger = await our_server.client.post(
        url + "/frontend/pairingcompleted", headers={"Authorization": "not the frontend"}
    )
    assert stranger.status_code == 403
    done = await our_server.client.post(url + "/frontend/pairingcompleted", headers=frontend)
    assert done.status_code == 204
    request = await our_server.client.get(url + "/request", headers={"Authorization": "app"})
    assert request.status_code == 200 and request.json()["disclose"] == ASK["disclose"]


async def test_a_session_nobody_opens_times_out_and_is_forgotten(our_server: Server) -> None:
    assert our_server.clock is not None
    started = await start(our_server, {"request": ASK, "timeout": 60})
    our_server.clock.now += 61
    assert await status(our_server, started["token"]) == "TIMEOUT"
    our_server.clock.now += 301
    gone = await our_server.client.get(f"/session/{started['token']}/status")
    assert gone.json()["error"] == "SESSION_UNKNOWN"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"@context": "https://irma.app/ld/request/disclosure/v2", "disclose": [[["bad"]]]}',
        b'{"@context": "https://irma.app/ld/request/disclosure/v2", '
        b'"disclose": [[["irma-demo.X.y.z"]]]}',
        b'{"request": {}, "timeout": 99999}',
        b"x" * (2 << 20),
    ],
)
async def test_bad_session_requests_are_clear_4xx(our_server: Server, body: bytes) -> None:
    refused = await our_server.client.post(
        "/session",
        content=body,
        headers={**our_server.requestor, "Content-Type": "application/json"},
    )
    assert 400 <= refused.status_code < 500
    assert set(refused.json()) >= {"status", "error", "description"}


async def test_bad_proofs_end_the_session_invalid_not_in_an_error(our_server: Server) -> None:
    started = await start(our_server)
    url = started["sessionPtr"]["u"]
    await our_server.client.get(url + "/", headers={**APP, "Authorization": "me"})
    nested = {"proofs": json.loads("[" * 50 + "]" * 50), "indices": []}
    sent = await our_server.client.post(
        url + "/proofs", json=nested, headers={"Authorization": "me"}
    )
    assert sent.json() == {"proofStatus": "INVALID"}
    result = (await our_server.client.get(f"/session/{started['token']}/result")).json()
    assert result["status"] == "DONE" and result["proofStatus"] == "INVALID"
