"""The test issuer and wallet against our verifier: real CL signatures from the demo schemes'
published private keys, real disclosure proofs. (Against the Go server: with the server.)"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

import pytest

from idcontact.irma.request import DisclosureRequest
from idcontact.irma.schemes import Schemes
from idcontact.irma.verify import AttributeStatus, ProofStatus, verify_disclosure
from idcontact.irma.wallet import Credential, Issuer, PrivateKey, Wallet, is_probable_prime, prove

DATA = Path(__file__).parent / "testdata"
SCHEMES = Schemes.load(DATA / "irma_configuration")
CONFIG = DATA / "irma_configuration"


def issuer(name: str, counter: int, private: Path) -> Issuer:
    key = SCHEMES.public_key(name, counter)
    assert key is not None
    return Issuer(key, PrivateKey.load(private))


RU = issuer("irma-demo.RU", 2, DATA / "privatekeys" / "irma-demo.RU.2.xml")
MIJN = issuer("irma-demo.MijnOverheid", 2, CONFIG / "irma-demo/MijnOverheid/PrivateKeys/2.xml")
TEST = issuer("test.test", 3, DATA / "privatekeys" / "test.test.xml")


def ctype(type_id: str) -> Any:
    found = SCHEMES.credential_type(type_id)
    assert found is not None
    return found


def student(wallet: Wallet, student_id: str = "s1234") -> Credential:
    card = RU.issue(
        ctype("irma-demo.RU.studentCard"),
        {
            "university": "Radboud",
            "studentCardNumber": "7",
            "studentID": student_id,
            "level": "MSc",
        },
        wallet.secret,
    )
    wallet.add(card)
    return card


def name(wallet: Wallet, prefix: str | None = None) -> Credential:
    full = MIJN.issue(
        ctype("irma-demo.MijnOverheid.fullName"),
        {"firstnames": "Demi", "firstname": "Demi", "familyname": "Demo", "prefix": prefix},
        wallet.secret,
    )
    wallet.add(full)
    return full


def ask(*conjunctions: list[list[Any]]) -> DisclosureRequest:
    return DisclosureRequest.parse(
        {
            "@context": "https://irma.app/ld/request/disclosure/v2",
            "disclose": list(conjunctions),
            "nonce": base64.b64encode(secrets.token_bytes(16)).decode(),
            "context": "AQ==",
        }
    )


def values(result: Any) -> list[list[tuple[str, str | None, AttributeStatus]]]:
    return [[(a.id.rsplit(".", 1)[1], a.rawvalue, a.status) for a in c] for c in result.disclosed]


def test_one_issued_credential_discloses_one_attribute() -> None:
    wallet = Wallet()
    student(wallet)
    request = ask([["irma-demo.RU.studentCard.studentID"]])
    result = verify_disclosure(wallet.disclose(request), request, SCHEMES)
    assert result.status is ProofStatus.VALID
    assert values(result) == [[("studentID", "s1234", AttributeStatus.PRESENT)]]


def test_a_value_longer_than_lm_is_signed_as_its_hash_hidden_or_shown() -> None:
    """Values over 256 bits (photos, long names) are signed as their SHA-256: the verifier
    hashes a disclosed one, the wallet answers for a hidden one with the hash."""
    long_name = "Universiteit " * 8  # 104 bytes
    wallet = Wallet()
    card = RU.issue(
        ctype("irma-demo.RU.studentCard"),
        {"university": long_name, "studentCardNumber": "7", "studentID": "s1", "level": "BSc"},
        wallet.secret,
    )
    wallet.add(card)
    assert card.m[2].bit_length() > card.key.params.lm
    for attribute, raw in (("university", long_name), ("studentID", "s1")):
        request = ask([[f"irma-demo.RU.studentCard.{attribute}"]])
        result = verify_disclosure(wallet.disclose(request), request, SCHEMES)
        assert result.status is ProofStatus.VALID, attribute
        assert values(result) == [[(attribute, raw, AttributeStatus.PRESENT)]]


def test_two_issuers_in_one_disclosure_share_the_secret_key() -> None:
    wallet = Wallet()
    student(wallet)
    name(wallet)
    request = ask(
        [["irma-demo.MijnOverheid.fullName.firstname", "irma-demo.MijnOverheid.fullName.prefix"]],
        [["irma-demo.RU.studentCard.studentID"]],
    )
    disclosure = wallet.disclose(request)
    assert len(disclosure["proofs"]) == 2
    assert (
        disclosure["proofs"][0]["a_responses"]["0"] == disclosure["proofs"][1]["a_responses"]["0"]
    )
    result = verify_disclosure(disclosure, request, SCHEMES)
    assert result.status is ProofStatus.VALID
    assert values(result) == [
        [("firstname", "Demi", AttributeStatus.PRESENT), ("prefix", None, AttributeStatus.NULL)],
        [("studentID", "s1234", AttributeStatus.PRESENT)],
    ]


def test_credentials_of_two_people_cannot_be_combined() -> None:
    mine, theirs = Wallet(), Wallet()
    card = student(mine)
    borrowed = name(theirs)
    request = ask(
        [["irma-demo.MijnOverheid.fullName.firstname"]], [["irma-demo.RU.studentCard.studentID"]]
    )
    proofs = prove([(borrowed, {3}), (card, {4})], request.context, request.nonce or 0)
    disclosure = {
        "proofs": [p.to_json() for p in proofs],
        "indices": [[{"cred": 0, "attr": 3}], [{"cred": 1, "attr": 4}]],
    }
    assert verify_disclosure(disclosure, request, SCHEMES).status is ProofStatus.INVALID


def test_a_keyshare_scheme_keeps_its_own_secret() -> None:
    """Proofs of a distributed scheme (``test``) need not share the secret with the others:
    there the key is the wallet's and the keyshare server's together."""
    local, distributed = Wallet(), Wallet()
    card = student(local)
    email = TEST.issue(ctype("test.test.email"), {"email": "demi@example.com"}, distributed.secret)
    request = ask([["irma-demo.RU.studentCard.studentID"]], [["test.test.email.email"]])
    proofs = prove([(card, {4}), (email, {2})], request.context, request.nonce or 0)
    disclosure = {
        "proofs": [p.to_json() for p in proofs],
        "indices": [[{"cred": 0, "attr": 4}], [{"cred": 1, "attr": 2}]],
    }
    assert verify_disclosure(disclosure, request, SCHEMES).status is ProofStatus.VALID


def test_a_singleton_credential_may_appear_once() -> None:
    wallet = Wallet()
    singleton = ctype("irma-demo.MijnOverheid.singleton")
    first = MIJN.issue(singleton, {"BSN": "999990019"}, wallet.secret)
    second = MIJN.issue(singleton, {"BSN": "999990020"}, wallet.secret)
    request = ask(
        [["irma-demo.MijnOverheid.singleton.BSN"]], [["irma-demo.MijnOverheid.singleton.BSN"]]
    )
    proofs = prove([(first, {2}), (second, {2})], request.context, request.nonce or 0)
    disclosure = {
        "proofs": [p.to_json() for p in proofs],
        "indices": [[{"cred": 0, "attr": 2}], [{"cred": 1, "attr": 2}]],
    }
    assert verify_disclosure(disclosure, request, SCHEMES).status is ProofStatus.INVALID


def test_expired_and_value_constraints_with_issued_credentials() -> None:
    wallet = Wallet()
    card = RU.issue(
        ctype("irma-demo.RU.studentCard"),
        {"university": "Radboud", "studentCardNumber": "7", "studentID": "s1", "level": "BSc"},
        wallet.secret,
        validity_weeks=1,
        now=1_700_000_000,
    )
    wallet.add(card)
    request = ask([[{"type": "irma-demo.RU.studentCard.level", "value": "BSc"}]])
    disclosure = wallet.disclose(request)
    assert verify_disclosure(disclosure, request, SCHEMES, now=1_700_000_000).valid
    later = verify_disclosure(disclosure, request, SCHEMES, now=1_700_000_000 + 3 * 604_800)
    assert later.status is ProofStatus.EXPIRED
    with pytest.raises(LookupError):
        wallet.disclose(ask([[{"type": "irma-demo.RU.studentCard.level", "value": "PhD"}]]))


def test_the_wallet_picks_an_alternative_it_can_satisfy() -> None:
    wallet = Wallet()
    student(wallet)
    request = ask(
        [["irma-demo.MijnOverheid.fullName.firstname"], ["irma-demo.RU.studentCard.studentID"]]
    )
    result = verify_disclosure(wallet.disclose(request), request, SCHEMES)
    assert result.valid and values(result)[0][0][0] == "studentID"


def test_primality() -> None:
    assert is_probable_prime(2**127 - 1) and not is_probable_prime(2**128 + 1)
    assert not is_probable_prime(561)  # a Carmichael number
