"""The built-in IRMA server inside the app: mounted at ``/yivi`` in the embedded mode, the
requestors and the result key of ``[irma]``, status events over a real server, and production
mode. (The protocol itself, against ours and the Go server alike: tests/irma/test_server.py.)"""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import OctKey, RSAKey

from idcontact.app import DEMO_SCHEMES
from idcontact.errors import ConfigError
from idcontact.irma.download import update_scheme
from idcontact.irma.request import DisclosureRequest
from idcontact.irma.wallet import Wallet
from idcontact.keys import generate_keypair
from idcontact.tokens import sign_jwt, verify_jwt
from tests.conftest import PUBLIC, AppFactory, demo_settings, until
from tests.irma.schemetools import publish, scheme_server
from tests.irma.test_download import PIN
from tests.irma.test_wallet import student
from tests.live import served, stream

pytestmark = pytest.mark.anyio

TOKEN = "a-requestor-token-of-the-tests-0123456789"
HMAC_KEY = secrets.token_bytes(32)
ASK = {
    "@context": "https://irma.app/ld/request/disclosure/v2",
    "disclose": [[["irma-demo.RU.studentCard.studentID"]]],
}
APP = {"X-IRMA-MinProtocolVersion": "2.8", "X-IRMA-MaxProtocolVersion": "2.8"}


def rsa_pair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    directory = tmp_path / "requestor-keys"
    directory.mkdir(exist_ok=True)
    return generate_keypair("RSA", directory, name)


def irma(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    _, public = rsa_pair(tmp_path, "rs256")
    return {
        "enabled": True,
        "requestors": [
            {"name": "token", "secret": TOKEN},
            {"name": "hs", "auth": "hmac", "secret": base64.b64encode(HMAC_KEY).decode()},
            {"name": "rs", "auth": "publickey", "key": {"type": "RSA", "key_file": str(public)}},
        ],
        **extra,
    }


def jwt_request(key: OctKey | RSAKey, iss: str, **claims: Any) -> str:
    body = {
        "iss": iss,
        "iat": int(time.time()),
        "sub": "verification_request",
        "sprequest": {"request": ASK, "validity": 60},
        **claims,
    }
    return sign_jwt(body, key)


async def disclose(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """Play the Yivi app: open the session, disclose a student card, return the answer."""
    binding = secrets.token_urlsafe(12)
    opened = await client.get(url + "/", headers={**APP, "Authorization": binding})
    assert opened.status_code == 200, opened.text
    wallet = Wallet()
    student(wallet, "s7777")
    request = DisclosureRequest.parse(opened.json()["request"])
    sent = await client.post(
        url + "/proofs", json=wallet.disclose(request), headers={"Authorization": binding}
    )
    answer: dict[str, Any] = sent.json()
    return answer


async def test_embedded_mode_serves_a_whole_session_under_yivi(
    make_app: AppFactory, tmp_path: Path
) -> None:
    inst = await make_app(demo_settings(tmp_path, irma=irma(tmp_path)))
    client = inst.client
    started = await client.post("/yivi/session", json=ASK, headers={"Authorization": TOKEN})
    assert started.status_code == 200, started.text
    url = started.json()["sessionPtr"]["u"]
    assert url.startswith(f"{PUBLIC}/yivi/irma/session/")
    opened = await client.get(url + "/", headers={**APP, "Authorization": "x"})
    assert opened.json()["request"]["devMode"] is True  # not production
    token = started.json()["token"]
    assert (await client.delete(f"/yivi/session/{token}")).status_code == 204

    started = await client.post("/yivi/session", json=ASK, headers={"Authorization": TOKEN})
    token, url = started.json()["token"], started.json()["sessionPtr"]["u"]
    assert await disclose(client, url) == {"proofStatus": "VALID"}
    result = (await client.get(f"/yivi/session/{token}/result")).json()
    assert result["proofStatus"] == "VALID"
    assert result["disclosed"][0][0]["rawvalue"] == "s7777"


async def test_result_jwt_is_signed_by_the_served_public_key(
    make_app: AppFactory, tmp_path: Path
) -> None:
    inst = await make_app(demo_settings(tmp_path, irma=irma(tmp_path)))
    client = inst.client
    body = {"request": ASK, "validity": 60}
    started = await client.post("/yivi/session", json=body, headers={"Authorization": TOKEN})
    token = started.json()["token"]
    await disclose(client, started.json()["sessionPtr"]["u"])
    pem = await client.get("/yivi/publickey")
    assert pem.status_code == 200 and pem.text.startswith("-----BEGIN PUBLIC KEY-----")
    public = RSAKey.import_key(pem.text)
    signed = (await client.get(f"/yivi/session/{token}/result-jwt")).text
    claims = verify_jwt(signed, {}, fallback_key=public, allowed_algs=("RS256",))
    assert claims["sub"] == "disclosing_result" and claims["iss"] == "idcontact"
    assert claims["proofStatus"] == "VALID" and claims["status"] == "DONE"
    assert isinstance(claims["iat"], int) and claims["exp"] == claims["iat"] + 60
    disclosed: Any = claims["disclosed"]
    assert disclosed[0][0]["rawvalue"] == "s7777"
    # Another key does not verify it: the signature is over these claims.
    other = RSAKey.generate_key(2048)
    with pytest.raises(Exception, match="signature"):
        jws.deserialize_compact(signed, other)


@pytest.mark.parametrize("who", ["hs", "rs"])
async def test_jwt_requestors_start_sessions(
    make_app: AppFactory, tmp_path: Path, who: str
) -> None:
    inst = await make_app(demo_settings(tmp_path, irma=irma(tmp_path)))
    key: OctKey | RSAKey = (
        OctKey.import_key(HMAC_KEY)
        if who == "hs"
        else RSAKey.import_key((tmp_path / "requestor-keys/rs256.key.pem").read_text())
    )
    started = await inst.client.post(
        "/yivi/session",
        content=jwt_request(key, who),
        headers={"content-type": "text/plain"},
    )
    assert started.status_code == 200, started.text
    session = inst.services.irma.by_requestor(started.json()["token"])
    assert session.requestor == who and session.validity == 60


async def test_the_embedded_demo_has_no_outside_requestor(make_app: AppFactory) -> None:
    inst = await make_app()
    answer = await inst.client.post("/yivi/session", json=ASK, headers={"Authorization": "x"})
    assert answer.status_code == 403 and answer.json()["error"] == "UNAUTHORIZED"
    assert inst.services.irma is not None and not inst.services.irma._by_requestor


async def test_status_events_follow_the_session_to_its_end(tmp_path: Path) -> None:
    with served(tmp_path, irma=irma(tmp_path)) as base:
        async with httpx.AsyncClient(trust_env=False, timeout=15) as client:
            started = await client.post(
                f"{base}/yivi/session", json=ASK, headers={"Authorization": TOKEN}
            )
            token, url = started.json()["token"], started.json()["sessionPtr"]["u"]
            front = {"Authorization": started.json()["frontendRequest"]["authorization"]}
            async with (
                stream(client, f"{base}/yivi/session/{token}/statusevents") as requestor,
                stream(client, f"{url}/frontend/statusevents", front) as frontend,
            ):
                assert requestor.response.headers["content-type"].startswith("text/event-stream")
                assert await requestor.event() == "INITIALIZED"
                assert await frontend.event() == {"status": "INITIALIZED"}
                binding = {"Authorization": "app-binding"}
                await client.get(url + "/", headers={**APP, **binding})
                assert await requestor.event() == "CONNECTED"
                assert await frontend.event() == {"status": "CONNECTED"}
                async with stream(client, f"{url}/statusevents", binding) as app:
                    assert await app.event() == "CONNECTED"
                    assert (await client.delete(url, headers=binding)).status_code == 204
                    assert await app.event() == "CANCELLED"
                    assert await app.next() is None
                assert await requestor.event() == "CANCELLED"
                assert await requestor.next() is None  # final: the stream ends
                assert await frontend.event() == {"status": "CANCELLED"}
                assert requestor.raw[:2] == ["event: open", ""]
            wrong = await client.get(
                f"{url}/frontend/statusevents", headers={"Authorization": "wrong"}
            )
            assert wrong.status_code == 403


async def test_status_events_tell_a_timeout_without_anyone_asking(tmp_path: Path) -> None:
    with served(tmp_path, irma=irma(tmp_path)) as base:
        async with httpx.AsyncClient(trust_env=False, timeout=15) as client:
            body = {"request": ASK, "timeout": 1}
            started = await client.post(
                f"{base}/yivi/session", json=body, headers={"Authorization": TOKEN}
            )
            token = started.json()["token"]
            async with stream(client, f"{base}/yivi/session/{token}/statusevents") as events:
                assert await events.event() == "INITIALIZED"
                assert await events.event() == "TIMEOUT"
                assert await events.next() is None


def test_production_mode_needs_https_schemes_and_a_result_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="production"):
        demo_settings(tmp_path, irma={"production": True, "demo_wallet": False})
    key, _ = rsa_pair(tmp_path, "jwt")
    production = {
        "enabled": True,
        "demo_wallet": False,
        "production": True,
        "schemes_path": str(DEMO_SCHEMES),
        "jwt_key": {"type": "RSA", "key_file": str(key)},
    }
    with pytest.raises(ConfigError, match="https"):
        demo_settings(tmp_path, irma=production)
    assert demo_settings(tmp_path, irma=production, public_url="https://gemeente.example")


async def test_production_mode_tells_the_app_it_is_not_in_developer_mode(
    make_app: AppFactory, tmp_path: Path
) -> None:
    key, _ = rsa_pair(tmp_path, "jwt")
    settings = demo_settings(
        tmp_path,
        public_url="https://gemeente.example",
        irma=irma(
            tmp_path,
            demo_wallet=False,
            production=True,
            schemes_path=str(DEMO_SCHEMES),
            jwt_key={"type": "RSA", "key_file": str(key)},
        ),
    )
    inst = await make_app(settings)
    started = await inst.client.post("/yivi/session", json=ASK, headers={"Authorization": TOKEN})
    url = started.json()["sessionPtr"]["u"]
    assert url.startswith("https://gemeente.example/yivi/irma/session/")
    opened = await inst.client.get(
        url.removeprefix("https://gemeente.example") + "/", headers={**APP, "Authorization": "x"}
    )
    assert opened.json()["request"]["devMode"] is False


def test_a_broken_scheme_directory_stops_start_up(tmp_path: Path) -> None:
    from idcontact.app import create_app

    with pytest.raises(ConfigError, match=r"irma\.schemes_path"):
        create_app(
            demo_settings(tmp_path, irma={"demo_wallet": False, "schemes_path": str(tmp_path)})
        )


async def test_the_running_server_takes_up_a_published_scheme_update(
    make_app: AppFactory, tmp_path: Path
) -> None:
    with scheme_server(tmp_path / "publisher") as served:
        local = tmp_path / "irma_configuration" / "irma-demo"
        await update_scheme(served.url, local, public_key=PIN)
        assert (local / "RU/PublicKeys/0.xml").is_file()
        (served.scheme / "RU/PublicKeys/0.xml").unlink()  # the publisher withdraws a key
        publish(served.scheme)
        irma = {
            "enabled": True,
            "demo_wallet": False,
            "schemes_path": str(local.parent),
            "scheme_urls": {"irma-demo": served.url},
            "scheme_update_minutes": 60,
        }
        inst = await make_app(demo_settings(tmp_path, irma=irma))
        sessions = inst.services.irma
        assert sessions is not None

        async def withdrawn() -> bool:
            return sessions.schemes.public_key("irma-demo.RU", 0) is None

        await until(withdrawn, "the app loads the updated scheme")
        assert sessions.schemes.public_key("irma-demo.RU", 2) is not None


def test_scheme_urls_need_a_scheme_directory_of_their_own(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scheme_urls"):
        demo_settings(tmp_path, irma={"enabled": True, "scheme_urls": {"pbdf": "https://x"}})
