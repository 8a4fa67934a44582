"""The IRMA server: the same requestor and app conversation against ours and against the Go
reference server (requestors by token, HS256 and RS256 JWT; result JWTs; status events), plus
what only ours is configured for here (pairing, timeouts, bad input)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from joserfc.jwk import OctKey, RSAKey

from idcontact.irma.client import RemoteError, RequestorClient
from idcontact.irma.request import DisclosureRequest
from idcontact.irma.requestors import Requestor, Requestors
from idcontact.irma.sessions import Sessions
from idcontact.irma.wallet import Wallet
from idcontact.tokens import sign_jwt
from idcontact.web.irma import irma_router
from tests.irma.test_wallet import SCHEMES, student
from tests.live import serve
from tests.services import Requestor as Credentials, yivi_requestor

pytestmark = pytest.mark.anyio

ASK = {
    "@context": "https://irma.app/ld/request/disclosure/v2",
    "disclose": [[["irma-demo.RU.studentCard.studentID"]]],
}
APP = {"X-IRMA-MinProtocolVersion": "2.8", "X-IRMA-MaxProtocolVersion": "2.8"}
Method = Literal["token", "hs", "rs"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Server:
    client: httpx.AsyncClient
    credentials: Credentials
    clock: Clock | None = None

    @property
    def requestor(self) -> dict[str, str]:
        return {"Authorization": self.credentials.token}


def _our_credentials() -> tuple[Credentials, RSAKey]:
    result = RSAKey.generate_key(2048)
    credentials = Credentials(
        "",
        secrets.token_urlsafe(30),
        OctKey.import_key(secrets.token_bytes(32)),
        RSAKey.generate_key(2048),
        RSAKey.import_key(result.as_dict(private=False)),
    )
    return credentials, result


OURS, OUR_RESULT_KEY = _our_credentials()


def ours(clock: Callable[[], float] | None = None) -> tuple[httpx.AsyncClient, Clock]:
    """Our server in process, with a fake clock (or ``clock``: the real one for credentials
    issued now)."""
    fake = Clock()
    clock = clock or fake
    app = FastAPI()
    hs = base64.b64encode(OURS.hmac.raw_value).decode()
    rs = RSAKey.import_key(OURS.rs.as_dict(private=False))
    app.include_router(
        irma_router(
            Sessions(SCHEMES, clock=clock),
            Requestors(
                [
                    Requestor.with_token("token", OURS.token, ["irma.gemeente.test"]),
                    Requestor.with_hmac("hs", hs),
                    Requestor.with_public_key("rs", rs),
                ],
                clock=clock,
            ),
            public_url="http://irma.test",
            jwt_key=OUR_RESULT_KEY,
            jwt_issuer="irmaserver",
            clock=clock,
        )
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://irma.test/yivi"
    )
    return client, fake


@pytest.fixture(params=["ours", "go"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    if request.param == "ours":
        client, clock = ours()
        async with client:
            yield Server(client, OURS, clock)
    else:
        go = yivi_requestor()
        async with httpx.AsyncClient(base_url=go.url, timeout=10) as client:
            yield Server(client, go)


@pytest.fixture
async def our_server() -> AsyncIterator[Server]:
    client, clock = ours()
    async with client:
        yield Server(client, OURS, clock)


def requestor(server: Server, method: Method = "token", *, signed: bool = False) -> RequestorClient:
    """Our requestor client, the same against both servers; ``signed``: results as JWT."""
    c = server.credentials
    auth = {"token": c.token, "hs": c.hmac, "rs": c.rs}[method]
    return RequestorClient(
        server.client,
        "",
        auth,
        name=method,
        result_key=c.result_key if signed else None,
        clock=server.clock or time.time,
    )


async def start(server: Server, timeout: int | None = None) -> dict[str, Any]:
    started = await requestor(server).start(ASK, app_timeout=timeout)
    return {
        "token": started.token,
        "sessionPtr": started.session_ptr,
        "frontendRequest": started.frontend_request,
    }


async def status(server: Server, token: str) -> str:
    return await requestor(server).status(token)


async def disclose(server: Server, url: str, student_id: str = "s4242") -> dict[str, Any]:
    """Play the app: open the session, disclose a student card; the server's answer."""
    wallet = Wallet()
    student(wallet, student_id)
    return await app_discloses(server.client, url, wallet)


async def app_discloses(client: httpx.AsyncClient, url: str, wallet: Wallet) -> dict[str, Any]:
    """Play the app with ``wallet``: open the session, answer its request."""
    binding = secrets.token_urlsafe(12)
    opened = await client.get(url + "/", headers={**APP, "Authorization": binding})
    assert opened.status_code == 200, opened.text
    request = DisclosureRequest.parse(opened.json()["request"])
    sent = await client.post(
        url + "/proofs", json=wallet.disclose(request), headers={"Authorization": binding}
    )
    answer: dict[str, Any] = sent.json()
    return answer


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
    result = await requestor(server).result(token)
    assert result["status"] == "DONE" and result["proofStatus"] == "VALID"
    assert result["type"] == "disclosing"
    [[attribute]] = result["disclosed"]
    signed = wallet.credentials[0].metadata.signing_date
    assert attribute == {  # the whole attribute, the same from both servers
        "id": "irma-demo.RU.studentCard.studentID",
        "rawvalue": "s4242",
        "value": {"": "s4242", "en": "s4242", "nl": "s4242"},
        "status": "PRESENT",
        "issuancetime": signed,
    }
    assert set(result) == {"token", "status", "type", "proofStatus", "disclosed"}
    again = await server.client.post(
        url + "/proofs", json=wallet.disclose(request), headers={"Authorization": binding}
    )
    assert again.status_code in (400, 403)  # a session takes one answer


async def test_a_disclosure_replayed_into_another_session_is_invalid(server: Server) -> None:
    """Proofs are bound to their session's nonce: a valid disclosure, sent again to a new
    session, does not verify there."""
    wallet = Wallet()
    student(wallet)
    first = (await start(server))["sessionPtr"]["u"]
    opened = await server.client.get(first + "/", headers={**APP, "Authorization": "a"})
    disclosure = wallet.disclose(DisclosureRequest.parse(opened.json()["request"]))
    sent = await server.client.post(
        first + "/proofs", json=disclosure, headers={"Authorization": "a"}
    )
    assert sent.json() == {"proofStatus": "VALID"}
    second = await start(server)
    url = second["sessionPtr"]["u"]
    await server.client.get(url + "/", headers={**APP, "Authorization": "b"})
    replayed = await server.client.post(
        url + "/proofs", json=disclosure, headers={"Authorization": "b"}
    )
    assert replayed.json() == {"proofStatus": "INVALID"}
    result = await requestor(server).result(second["token"])
    assert result["proofStatus"] == "INVALID" and not result.get("disclosed")


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
    with pytest.raises(RemoteError) as caught:
        await requestor(server).result("aaaaaaaaaaaaaaaaaaaa")
    assert (caught.value.status, caught.value.error) == (400, "SESSION_UNKNOWN")


async def test_the_requestor_can_cancel(server: Server) -> None:
    started = await start(server)
    await requestor(server).cancel(started["token"])
    assert await status(server, started["token"]) == "CANCELLED"


@pytest.mark.parametrize("method", ["token", "hs", "rs"])
async def test_each_requestor_method_runs_a_session_with_a_signed_result(
    server: Server, method: Method
) -> None:
    client = requestor(server, method, signed=True)
    started = await client.start(ASK, validity=60)
    assert await disclose(server, started.session_ptr["u"], "s5150") == {"proofStatus": "VALID"}
    result = await client.result(started.token)
    assert result["sub"] == "disclosing_result" and result["iss"] == "irmaserver"
    assert result["exp"] - result["iat"] == 60
    assert result["status"] == "DONE" and result["proofStatus"] == "VALID"
    assert result["disclosed"][0][0]["rawvalue"] == "s5150"
    # A result JWT checked against another key is not trusted.
    stranger = RSAKey.import_key(RSAKey.generate_key(2048).as_dict(private=False))
    doubtful = RequestorClient(server.client, "", "x", result_key=stranger, clock=client._clock)
    with pytest.raises(RemoteError, match="RESULT_NOT_TRUSTED"):
        await doubtful.result(started.token)


def _jwt(key: OctKey | RSAKey, iss: str, now: float, **claims: Any) -> str:
    body = {
        "iss": iss,
        "iat": int(now),
        "sub": "verification_request",
        "sprequest": {"request": ASK},
    }
    return sign_jwt({**body, **claims}, key)


async def test_requestor_authentication_failures_start_nothing(server: Server) -> None:
    c = server.credentials
    now = (server.clock or time.time)()
    stranger = OctKey.import_key(secrets.token_bytes(32))
    unsigned = ".".join(
        [
            base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode(),
            _jwt(c.hmac, "hs", now).split(".")[1],
            "",
        ]
    )
    # The Go server's answers: a wrong token is 403; what it cannot authenticate is 400.
    cases: list[tuple[dict[str, str], str, int, str]] = [
        ({}, json.dumps(ASK), 400, "INVALID_REQUEST"),  # nothing at all
        ({"Authorization": c.token[:-1]}, json.dumps(ASK), 403, "UNAUTHORIZED"),
        ({}, _jwt(stranger, "hs", now), 400, "INVALID_REQUEST"),  # someone else's key
        ({}, _jwt(c.hmac, "rs", now), 400, "INVALID_REQUEST"),  # HS256 where RS256 is agreed
        ({}, _jwt(c.rs, "nobody", now), 400, "INVALID_REQUEST"),  # unknown requestor
        ({}, unsigned, 400, "INVALID_REQUEST"),
        ({}, "not.a.jwt", 400, "INVALID_REQUEST"),
        ({}, _jwt(c.hmac, "hs", now - 3600), 403, "UNAUTHORIZED"),  # too old
    ]
    for headers, body, status_code, error in cases:
        kind = "application/json" if body.startswith("{") else "text/plain"
        answer = await server.client.post(
            "/session", content=body, headers={"Content-Type": kind, **headers}
        )
        assert (answer.status_code, answer.json()["error"]) == (status_code, error), body
        assert set(answer.json()) >= {"status", "error", "description"}
        assert c.token not in answer.text


async def test_a_requestor_uses_only_the_host_names_it_may(server: Server) -> None:
    """A municipality's host in the session URL (the app names it), if the requestor may."""
    client = requestor(server)
    started = await client.start({**ASK, "host": "irma.gemeente.test"})
    pointer = urlsplit(started.session_ptr["u"])
    assert pointer.netloc == "irma.gemeente.test" and "/irma/session/" in pointer.path
    with pytest.raises(RemoteError) as refused:
        await client.start({**ASK, "host": "other.example"})
    assert (refused.value.status, refused.value.error) == (403, "UNAUTHORIZED")


async def test_only_disclosure_requests_are_taken_from_a_jwt(our_server: Server) -> None:
    c, now = our_server.credentials, our_server.clock or time.time
    for claims in ({"sub": "issue_request"}, {"sprequest": {"request": {"x": 1}}}):
        answer = await our_server.client.post(
            "/session", content=_jwt(c.hmac, "hs", now(), **claims)
        )
        assert (answer.status_code, answer.json()["error"]) == (400, "INVALID_REQUEST")


@pytest.fixture(params=["ours", "go"])
async def live(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """A server over real HTTP (streams stay open): ours behind uvicorn, or the Go one."""
    if request.param == "go":
        go = yivi_requestor()
        async with httpx.AsyncClient(base_url=go.url, timeout=10) as client:
            yield Server(client, go)
        return

    def make(base: str) -> FastAPI:
        app = FastAPI()
        requestors = Requestors([Requestor.with_token("token", OURS.token)])
        app.include_router(irma_router(Sessions(SCHEMES), requestors, public_url=base))
        return app

    with serve(make) as base:
        async with httpx.AsyncClient(base_url=f"{base}/yivi", timeout=10) as client:
            yield Server(client, OURS)


async def test_status_events_follow_a_session_to_its_end(live: Server) -> None:
    client = requestor(live)
    started = await client.start(ASK)
    events = client.status_events(started.token)
    assert await anext(events) == "INITIALIZED"
    binding = {"Authorization": "app"}
    await live.client.get(started.session_ptr["u"] + "/", headers={**APP, **binding})
    assert await anext(events) == "CONNECTED"
    await live.client.delete(started.session_ptr["u"], headers=binding)
    assert [s async for s in events] == ["CANCELLED"]  # and then the stream ends


async def test_pairing_holds_the_request_back_until_the_code_is_confirmed(
    server: Server,
) -> None:
    started = await start(server)
    url = started["sessionPtr"]["u"]
    frontend = {"Authorization": started["frontendRequest"]["authorization"]}
    options = await server.client.post(
        url + "/frontend/options",
        json={"@context": "https://irma.app/ld/request/frontendoptions/v1", "pairingMethod": "pin"},
        headers=frontend,
    )
    code = options.json()["pairingCode"]
    assert len(code) == 4 and code.isdigit()
    opened = (await server.client.get(url + "/", headers={**APP, "Authorization": "app"})).json()
    # The app shows the code, to be typed where the QR code was; no request before that.
    assert opened["options"] == {
        "@context": "https://irma.app/ld/options/v1",
        "pairingMethod": "pin",
        "pairingCode": code,
    }
    assert "request" not in opened
    assert await status(server, started["token"]) == "PAIRING"
    early = await server.client.get(url + "/request", headers={"Authorization": "app"})
    assert early.status_code in (400, 403)
    stranger = await server.client.post(
        url + "/frontend/pairingcompleted", headers={"Authorization": "not the frontend"}
    )
    assert stranger.status_code == 403
    done = await server.client.post(url + "/frontend/pairingcompleted", headers=frontend)
    assert done.status_code == 204
    request = await server.client.get(url + "/request", headers={"Authorization": "app"})
    assert request.status_code == 200 and request.json()["disclose"] == ASK["disclose"]


async def test_a_session_nobody_opens_times_out_and_is_forgotten(our_server: Server) -> None:
    assert our_server.clock is not None
    started = await start(our_server, timeout=60)
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
