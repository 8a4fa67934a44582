"""Cross-checks against the reference implementation: the Go IRMA server (``yivi irma
server``, pinned, started by ``scripts/services/yivi`` with the same test schemes and the
demo issuers' published private keys).

Our test wallet plays the Yivi app in the real app protocol (version 2.8, the session bound
by the ``Authorization`` header): the Go server must accept its disclosures and issuance
commitments, its requests must read the same in our parser, and the credentials it issues must
verify in our wallet and then disclose to both verifiers.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

import httpx
import pytest

from idcontact.irma import issuance
from idcontact.irma.client import RequestorClient
from idcontact.irma.request import DisclosureRequest
from idcontact.irma.verify import AttributeStatus, ProofStatus, verify_disclosure
from idcontact.irma.wallet import Wallet
from tests.irma import test_server
from tests.irma.test_wallet import SCHEMES, name, student
from tests.services import yivi_requestor

pytestmark = pytest.mark.anyio

DISCLOSURE = "https://irma.app/ld/request/disclosure/v2"
FULL_NAME = {
    "credential": "irma-demo.MijnOverheid.fullName",
    "attributes": {"firstnames": "Demi Dora", "firstname": "Demi", "familyname": "Démo"},
}
STUDENT_CARD = {
    "credential": "irma-demo.RU.studentCard",
    "attributes": {
        "university": "Radboud",
        "studentCardNumber": "1234",
        "studentID": "s9911",
        "level": "PhD",
    },
}


async def app_session(
    client: httpx.AsyncClient, disclose: list[Any]
) -> tuple[str, str, str, dict[str, Any]]:
    """Start a disclosure session as a requestor, then open it as the app: the session
    pointer's URL, the requestor token, the app's binding and the request the app receives."""
    return await open_session(client, {"@context": DISCLOSURE, "disclose": disclose})


async def open_session(
    client: httpx.AsyncClient, session_request: dict[str, Any]
) -> tuple[str, str, str, dict[str, Any]]:
    """:func:`app_session` for any session request (disclosure or issuance)."""
    started = await client.post("/session", json=session_request)
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
    """The Go server, as its requestor ``token`` (the app's calls carry their own binding)."""
    go = yivi_requestor()
    async with httpx.AsyncClient(
        base_url=go.url, timeout=10, headers={"Authorization": go.token}
    ) as client:
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


async def issue(
    client: httpx.AsyncClient, wallet: Wallet, *credentials: dict[str, Any], **extra: Any
) -> tuple[issuance.Commitment, dict[str, Any], str]:
    """An issuance session as the app plays it, up to the issuer's answer: the wallet's
    pending commitment, the answer (not yet checked) and the requestor token."""
    url, token, binding, raw = await open_session(
        client, {"@context": issuance.ISSUANCE_CONTEXT, "credentials": list(credentials), **extra}
    )
    pending = issuance.commit(wallet, issuance.IssuanceRequest.parse(raw, SCHEMES))
    answer = await client.post(
        url + "/commitments", json=pending.message, headers={"Authorization": binding}
    )
    assert answer.status_code == 200, answer.text
    return pending, answer.json(), token


async def disclose_to_go(client: httpx.AsyncClient, wallet: Wallet, attribute: str) -> Any:
    url, token, binding, raw = await app_session(client, [[[attribute]]])
    answer = await client.post(
        url + "/proofs",
        json=wallet.disclose(DisclosureRequest.parse(raw)),
        headers={"Authorization": binding},
    )
    assert answer.status_code == 200, answer.text
    return (await client.get(f"/session/{token}/result")).json()


def ask(attribute: str) -> DisclosureRequest:
    return DisclosureRequest.parse(
        {
            "@context": DISCLOSURE,
            "disclose": [[[attribute]]],
            "nonce": "c2VydmVyIG5vbmNlIDEyMw==",
            "context": "AQ==",
        }
    )


ADDRESS = {
    "credential": "irma-demo.gemeente.address",
    "attributes": {
        "street": "Markt",
        "houseNumber": "1",
        "zipcode": "6811AA",
        "municipality": "Arnhem",
        "city": "Arnhem",
    },
}


@pytest.mark.parametrize(
    ("credential", "attribute", "value"),
    [
        (FULL_NAME, "familyname", "Démo"),
        (STUDENT_CARD, "studentID", "s9911"),
        # Our own demo issuer (keys made by idcontact.irma.keygen): the Go server uses them too.
        (ADDRESS, "zipcode", "6811AA"),
    ],
    ids=["MijnOverheid.fullName", "RU.studentCard", "gemeente.address"],
)
async def test_the_go_server_issues_to_our_wallet(
    reference: Any, credential: dict[str, Any], attribute: str, value: str
) -> None:
    """Issued by the Go server, accepted by our wallet (ProofS and the CL signature on the
    values it derived itself), then disclosed to our verifier and to the Go server."""
    wallet = Wallet()
    pending, answer, token = await issue(reference, wallet, credential)
    assert answer["proofStatus"] == "VALID"
    [issued] = pending.finish(answer)
    assert wallet.credentials == [issued]
    assert issued.type.id == credential["credential"]
    result = (await reference.get(f"/session/{token}/result")).json()
    assert result["status"] == "DONE" and result["proofStatus"] == "VALID"

    attribute_id = f"{credential['credential']}.{attribute}"
    request = ask(attribute_id)
    ours = verify_disclosure(wallet.disclose(request), request, SCHEMES)
    assert ours.status is ProofStatus.VALID
    assert [(a.id, a.rawvalue, a.status) for a in ours.disclosed[0]] == [
        (attribute_id, value, AttributeStatus.PRESENT)
    ]
    assert ours.disclosed[0][0].issuancetime == issued.metadata.signing_date

    # And in a whole session at our server, as the app would disclose it there.
    client, _ = test_server.ours(time.time)
    async with client:
        our_requestor = RequestorClient(client, "", test_server.OURS.token)
        started = await our_requestor.start(
            {"@context": DISCLOSURE, "disclose": [[[attribute_id]]]}
        )
        answer = await test_server.app_discloses(client, started.session_ptr["u"], wallet)
        assert answer == {"proofStatus": "VALID"}
        result = await our_requestor.result(started.token)
        assert result["disclosed"][0][0]["rawvalue"] == value

    theirs = await disclose_to_go(reference, wallet, attribute_id)
    assert theirs["proofStatus"] == "VALID"
    assert [(a["id"], a["rawvalue"]) for a in theirs["disclosed"][0]] == [(attribute_id, value)]


async def test_the_go_server_issues_two_credentials_in_one_session(reference: Any) -> None:
    wallet = Wallet()
    pending, answer, _ = await issue(
        reference, wallet, FULL_NAME, {**STUDENT_CARD, "validity": 1_850_000_000}
    )
    full_name, card = pending.finish(answer)
    assert full_name.value_of("prefix") == 0  # absent optional attribute
    assert card.metadata.expiry <= 1_850_000_000 < card.metadata.expiry + 604_800
    request = DisclosureRequest.parse(
        {
            "@context": DISCLOSURE,
            "disclose": [
                [["irma-demo.MijnOverheid.fullName.prefix"]],
                [["irma-demo.RU.studentCard.level"]],
            ],
            "nonce": "AQID",
        }
    )
    result = verify_disclosure(wallet.disclose(request), request, SCHEMES)
    assert result.status is ProofStatus.VALID
    assert [[(a.rawvalue, a.status) for a in c] for c in result.disclosed] == [
        [(None, AttributeStatus.NULL)],
        [("PhD", AttributeStatus.PRESENT)],
    ]


async def test_the_go_server_issues_after_a_disclosure_in_the_same_proof_list(
    reference: Any,
) -> None:
    """Disclosure proofs first, then the ProofUs, under one challenge and one secret key: the
    Go server checks the whole list and the request's disclosure before it signs."""
    wallet = Wallet()
    student(wallet, "s5150")
    pending, answer, token = await issue(
        reference, wallet, FULL_NAME, disclose=[[["irma-demo.RU.studentCard.studentID"]]]
    )
    assert len(pending.message["combinedProofs"]) == 2
    pending.finish(answer)
    result = (await reference.get(f"/session/{token}/result")).json()
    assert result["proofStatus"] == "VALID"
    assert [(a["id"], a["rawvalue"]) for a in result["disclosed"][0]] == [
        ("irma-demo.RU.studentCard.studentID", "s5150")
    ]


async def test_the_go_server_refuses_commitments_to_another_secret(reference: Any) -> None:
    """A credential disclosed from one secret key cannot get credentials issued to another:
    one challenge over both proofs, but their secret-key responses differ."""
    wallet, other = Wallet(), Wallet()
    wallet.add(student(other))
    url, token, binding, raw = await open_session(
        reference,
        {
            "@context": issuance.ISSUANCE_CONTEXT,
            "credentials": [FULL_NAME],
            "disclose": [[["irma-demo.RU.studentCard.studentID"]]],
        },
    )
    pending = issuance.commit(wallet, issuance.IssuanceRequest.parse(raw, SCHEMES))
    answer = await reference.post(
        url + "/commitments", json=pending.message, headers={"Authorization": binding}
    )
    assert answer.status_code >= 400 and "sigs" not in answer.json(), answer.text
    result = (await reference.get(f"/session/{token}/result")).json()
    assert result["status"] != "DONE"


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ("signature", "A"),
        ("signature", "e"),
        ("signature", "v"),
        ("proof", "c"),
        ("proof", "e_response"),
    ],
)
async def test_our_wallet_refuses_a_tampered_answer_of_the_go_server(
    reference: Any, part: str, field: str
) -> None:
    wallet = Wallet()
    pending, answer, _ = await issue(reference, wallet, STUDENT_CARD)
    sig = answer["sigs"][0][part]
    raw = bytearray(base64.b64decode(sig[field]))
    raw[-1] ^= 0x04
    sig[field] = base64.b64encode(bytes(raw)).decode()
    # ProofS covers A and e (Q = A^e), not the issuer's share of v.
    expected = "signature does not verify" if field == "v" else "ProofS"
    with pytest.raises(issuance.IssuanceError, match=expected):
        pending.finish(answer)
    assert wallet.credentials == []
