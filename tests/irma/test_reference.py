"""Cross-checks against the reference implementation: the Go IRMA server (``yivi irma
server``, pinned, started by ``scripts/services/yivi`` with the same test schemes).

Our test wallet plays the Yivi app in the real app protocol (version 2.8, the session bound
by the ``Authorization`` header): the Go server must accept its disclosures, and its requests
must read the same in our parser.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from idcontact.irma.request import DisclosureRequest
from idcontact.irma.wallet import Wallet
from tests.irma.test_wallet import name, student
from tests.services import yivi_url

pytestmark = pytest.mark.anyio

DISCLOSURE = "https://irma.app/ld/request/disclosure/v2"


async def app_session(
    client: httpx.AsyncClient, disclose: list[Any]
) -> tuple[str, str, str, dict[str, Any]]:
    """Start a session as a requestor, then open it as the app: the session pointer's URL,
    the requestor token, the app's binding and the request the app receives."""
    started = await client.post("/session", json={"@context": DISCLOSURE, "disclose": disclose})
    assert started.status_code == 200, started.text
    body = started.json()
    url = body["sessionPtr"]["u"]
    binding = secrets.token_urlsafe(16)
    opened = await client.get(
        url + "/",
        headers={
            "X-IRMA-MinProtocolVersion": "2.8",
            "X-IRMA-MaxProtocolVersion": "2.8",
            "Authorization": binding,
        },
    )
    assert opened.status_code == 200, opened.text
    session = opened.json()
    assert session["protocolVersion"] == "2.8"
    return url, body["token"], binding, session["request"]


@pytest.fixture
async def reference() -> Any:
    async with httpx.AsyncClient(base_url=yivi_url(), timeout=10) as client:
        yield client


@pytest.mark.parametrize("two", [False, True], ids=["one credential", "two issuers"])
async def test_the_go_server_accepts_our_wallets_disclosures(reference: Any, two: bool) -> None:
    wallet = Wallet()
    student(wallet, "s7788")
    disclose: list[Any] = [[["irma-demo.RU.studentCard.studentID"]]]
    if two:
        name(wallet)
        disclose.append([["irma-demo.MijnOverheid.fullName.familyname"]])
    url, token, binding, raw = await app_session(reference, disclose)
    request = DisclosureRequest.parse(raw)
    assert request.nonce is not None and request.context == 1
    answer = await reference.post(
        url + "/proofs", json=wallet.disclose(request), headers={"Authorization": binding}
    )
    assert answer.status_code == 200 and answer.json()["proofStatus"] == "VALID", answer.text
    result = (await reference.get(f"/session/{token}/result")).json()
    assert result["status"] == "DONE" and result["proofStatus"] == "VALID"
    got = [[(a["id"], a["rawvalue"], a["status"]) for a in c] for c in result["disclosed"]]
    expected = [[("irma-demo.RU.studentCard.studentID", "s7788", "PRESENT")]]
    if two:
        expected.append([("irma-demo.MijnOverheid.fullName.familyname", "Demo", "PRESENT")])
    assert got == expected


async def test_the_go_server_refuses_a_proof_for_another_nonce(reference: Any) -> None:
    """The same wallet, the same credential, a stale nonce: not valid there either."""
    wallet = Wallet()
    student(wallet)
    url, _, binding, raw = await app_session(reference, [[["irma-demo.RU.studentCard.studentID"]]])
    stale = DisclosureRequest.parse({**raw, "nonce": "AAAAAAAAAAAAAAAAAAAAAA=="})
    answer = await reference.post(
        url + "/proofs", json=wallet.disclose(stale), headers={"Authorization": binding}
    )
    assert answer.json().get("proofStatus") == "INVALID", answer.text


async def test_the_session_is_bound_to_the_first_authorization(reference: Any) -> None:
    wallet = Wallet()
    student(wallet)
    url, _, _, raw = await app_session(reference, [[["irma-demo.RU.studentCard.studentID"]]])
    request = DisclosureRequest.parse(raw)
    stranger = await reference.post(
        url + "/proofs", json=wallet.disclose(request), headers={"Authorization": "someone else"}
    )
    assert stranger.status_code >= 400
