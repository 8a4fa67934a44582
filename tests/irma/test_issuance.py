"""Issuance without the Go server: our wallet's commitments (ProofU) against our own check of
them, and the whole interactive protocol with our test issuer on the other side. (Against the
Go server: tests/irma/test_reference.py.)"""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from idcontact.irma import issuance
from idcontact.irma.attributes import Metadata
from idcontact.irma.der import hash_commit
from idcontact.irma.issuance import IssuanceError, IssuanceRequest, ProofU
from idcontact.irma.request import DisclosureRequest
from idcontact.irma.verify import AttributeStatus, ProofStatus, verify_disclosure
from idcontact.irma.wallet import Wallet
from tests.irma.test_wallet import MIJN, RU, SCHEMES, student

NOW = 1_800_000_000
ISSUERS = {"irma-demo.RU": RU, "irma-demo.MijnOverheid": MIJN}
CARD_VALUES = {
    "university": "Radboud",
    "studentCardNumber": "7",
    "studentID": "s77",
    "level": "MSc",
}
CARD = {
    "credential": "irma-demo.RU.studentCard",
    "keyCounter": 2,
    "validity": NOW + 52 * 604_800,
    "attributes": CARD_VALUES,
}
FULL_NAME = {
    "credential": "irma-demo.MijnOverheid.fullName",
    "keyCounter": 2,
    "validity": NOW + 10 * 604_800,
    "attributes": {"firstnames": "Demi", "firstname": "Demi", "familyname": "Demo"},
}


def request(*credentials: dict[str, Any], **extra: Any) -> IssuanceRequest:
    return IssuanceRequest.parse(
        {
            "@context": issuance.ISSUANCE_CONTEXT,
            "credentials": list(credentials) or [CARD],
            "nonce": "bm9uY2Ugb2YgdGhlIGlzc3Vlcg==",
            "context": "AQ==",
            **extra,
        },
        SCHEMES,
    )


def flip(value: str, mask: int = 0x01) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[-1] ^= mask
    return base64.b64encode(bytes(raw)).decode()


def test_our_proof_u_verifies_and_a_flipped_bit_does_not() -> None:
    wanted = request(CARD, FULL_NAME)
    message = issuance.commit(Wallet(), wanted).message
    assert [set(p) for p in message["combinedProofs"]] == 2 * [
        {"U", "c", "v_prime_response", "s_response"}
    ]
    assert issuance.verify_commitments(message, wanted, SCHEMES)
    for k in range(2):
        for field in ("U", "c", "v_prime_response", "s_response"):
            tampered = copy.deepcopy(message)
            tampered["combinedProofs"][k][field] = flip(tampered["combinedProofs"][k][field])
            assert not issuance.verify_commitments(tampered, wanted, SCHEMES), (k, field)
    other_nonce = request(CARD, FULL_NAME, nonce="AQID")
    assert not issuance.verify_commitments(message, other_nonce, SCHEMES)


def test_the_proof_u_layout_and_sizes() -> None:
    """One challenge ``HashCommit([context, U, Û, nonce])``; ``v'`` of ``Ln + Lstatzk`` bits,
    so the ``v'`` response stays below ``2^(LvPrimeCommit + 1)``."""
    wanted = request()
    pending = issuance.commit(Wallet(secret=5), wanted)
    proof = ProofU.parse(pending.message["combinedProofs"][0])
    key = wanted.credentials[0].key
    assert proof.c == hash_commit([1, proof.U, proof.commitment(key), wanted.nonce])
    assert pending.v_primes[0].bit_length() <= key.params.lv_prime
    assert proof.in_bounds(key)
    assert 0 < pending.nonce2 < 2**128


def test_our_issuer_and_wallet_run_the_whole_protocol() -> None:
    wallet = Wallet()
    wanted = request(CARD, FULL_NAME)
    pending = issuance.commit(wallet, wanted)
    answer = issuance.sign_commitments(ISSUERS, wanted, pending.message, SCHEMES, now=NOW)
    card, full_name = pending.finish(answer, now=NOW)
    assert wallet.credentials == [card, full_name]
    with pytest.raises(IssuanceError, match="already finished"):
        pending.finish(answer, now=NOW)
    assert card.m[0] == wallet.secret
    assert card.metadata.signing_date == NOW // 604_800 * 604_800
    assert card.metadata.validity_weeks == 52
    assert full_name.metadata.key_counter == 2

    ask = DisclosureRequest.parse(
        {
            "@context": "https://irma.app/ld/request/disclosure/v2",
            "disclose": [
                [["irma-demo.RU.studentCard.studentID"]],
                [["irma-demo.MijnOverheid.fullName.prefix"]],
            ],
            "nonce": "AQIDBA==",
        }
    )
    result = verify_disclosure(wallet.disclose(ask), ask, SCHEMES, now=NOW)
    assert result.status is ProofStatus.VALID
    assert [[(a.rawvalue, a.status) for a in c] for c in result.disclosed] == [
        [("s77", AttributeStatus.PRESENT)],
        [(None, AttributeStatus.NULL)],
    ]


@pytest.mark.parametrize(
    ("part", "field", "error"),
    [
        ("signature", "A", "ProofS"),
        ("signature", "e", "ProofS"),
        ("signature", "v", "signature does not verify"),
        ("proof", "c", "ProofS"),
        ("proof", "e_response", "ProofS"),
    ],
)
def test_a_tampered_answer_is_refused_and_nothing_is_kept(
    part: str, field: str, error: str
) -> None:
    wallet = Wallet()
    wanted = request(CARD, FULL_NAME)
    pending = issuance.commit(wallet, wanted)
    answer = issuance.sign_commitments(ISSUERS, wanted, pending.message, SCHEMES, now=NOW)
    answer["sigs"][1][part][field] = flip(answer["sigs"][1][part][field], 0x10)
    with pytest.raises(IssuanceError, match=error):
        pending.finish(answer, now=NOW)
    assert wallet.credentials == []  # the first, valid, credential is not kept either


def test_other_metadata_than_the_request_implies_is_refused() -> None:
    """The issuer signed another week (or validity) than the wallet derives: the wallet would
    hold a credential it cannot prove, so it refuses it."""
    wallet = Wallet()
    wanted = request()
    pending = issuance.commit(wallet, wanted)
    answer = issuance.sign_commitments(
        ISSUERS, wanted, pending.message, SCHEMES, now=NOW - 2 * 604_800
    )
    with pytest.raises(IssuanceError, match="signature does not verify on the attributes"):
        pending.finish(answer, now=NOW)


def test_answers_of_the_wrong_shape_are_refused() -> None:
    pending = issuance.commit(Wallet(), request())
    for answer in ([], {"proofStatus": "INVALID"}, {"sigs": []}, {"sigs": [{"signature": {}}]}):
        with pytest.raises(IssuanceError):
            pending.finish(answer, now=NOW)


def test_a_disclosure_in_the_same_session_shares_challenge_and_secret() -> None:
    wallet = Wallet()
    student(wallet, "s1")
    wanted = request(FULL_NAME, disclose=[[["irma-demo.RU.studentCard.studentID"]]])
    pending = issuance.commit(wallet, wanted)
    proof_d, proof_u = pending.message["combinedProofs"]
    assert pending.message["indices"] == [[{"cred": 0, "attr": 4}]]
    assert proof_d["c"] == proof_u["c"] and proof_d["a_responses"]["0"] == proof_u["s_response"]
    assert issuance.verify_commitments(pending.message, wanted, SCHEMES)
    answer = issuance.sign_commitments(ISSUERS, wanted, pending.message, SCHEMES, now=NOW)
    assert len(pending.finish(answer, now=NOW)) == 1

    with pytest.raises(LookupError):
        issuance.commit(Wallet(), wanted)  # nothing to disclose


def test_a_disclosed_credential_of_another_secret_key_is_refused_by_the_issuer() -> None:
    wallet, other = Wallet(), Wallet()
    wallet.add(student(other))
    wanted = request(FULL_NAME, disclose=[[["irma-demo.RU.studentCard.studentID"]]])
    message = issuance.commit(wallet, wanted).message
    assert not issuance.verify_commitments(message, wanted, SCHEMES)
    with pytest.raises(IssuanceError, match="commitments do not verify"):
        issuance.sign_commitments(ISSUERS, wanted, message, SCHEMES)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"credential": "irma-demo.RU.nope"}, "unknown credential type"),
        ({"attributes": {"university": "Radboud"}}, "required attribute"),
        ({"attributes": {**CARD_VALUES, "shoeSize": "44"}}, "attributes the type lacks"),
        ({"keyCounter": 9}, "no public key 9"),
        ({"credential": "test.test.email", "attributes": {"email": "a@b"}}, "keyshare"),
        ({"revocationSupported": True}, "revocation"),
    ],
)
def test_requests_the_wallet_cannot_serve(change: dict[str, Any], error: str) -> None:
    with pytest.raises(IssuanceError, match=error):
        request({**CARD, **change})


def test_a_validity_that_has_passed_is_refused() -> None:
    wanted = request({**CARD, "validity": NOW - 2 * 604_800})
    with pytest.raises(IssuanceError, match="already passed"):
        wanted.credentials[0].values(now=NOW)


def test_not_an_issuance_request() -> None:
    with pytest.raises(IssuanceError, match="not an issuance request"):
        IssuanceRequest.parse({"@context": "https://irma.app/ld/request/disclosure/v2"}, SCHEMES)
    with pytest.raises(IssuanceError, match="credentials"):
        request(credentials=[])


def test_without_validity_a_credential_lasts_six_calendar_months() -> None:
    """Go's ``AddDate(0, 6, 0)``: 31 August plus six months is 2 March in a leap year."""
    signing = int(datetime(2023, 8, 31, tzinfo=UTC).timestamp())  # a Thursday: a week start
    assert signing % 604_800 == 0
    wanted = request({k: v for k, v in CARD.items() if k != "validity"})
    metadata = Metadata.decode(wanted.credentials[0].values(now=signing)[0])
    expiry = datetime(2024, 3, 2, tzinfo=UTC).timestamp()
    assert metadata.validity_weeks == int(expiry - signing) // 604_800
