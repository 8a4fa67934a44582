"""Idemix issuer keys we generate, and the demo issuer ``irma-demo.gemeente`` made with them."""

from __future__ import annotations

import gmpy2  # type: ignore[import-untyped]
import pytest

from idcontact.irma.gabi import ProofD, PublicKey, verify_proofs
from idcontact.irma.keygen import generate, safe_prime
from idcontact.irma.verify import ProofStatus, verify_disclosure
from idcontact.irma.wallet import Issuer, PrivateKey, Wallet
from tests.irma.test_wallet import CONFIG, SCHEMES, ask, ctype, values

GEMEENTE_KEY = SCHEMES.public_key("irma-demo.gemeente", 0)


def test_safe_primes_are_safe() -> None:
    p = safe_prime(256)
    assert p.bit_length() == 256 and gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)


def test_a_generated_key_signs_credentials_that_verify() -> None:
    keys = generate(1024, 8, counter=7, expiry=4_000_000_000)
    assert keys.n.bit_length() == 1024
    assert repr(keys) == "IssuerKeys(counter=7, bits=1024)"  # no secret in the repr
    public = PublicKey("irma-demo.RU", 7, keys.expiry, keys.n, keys.Z, keys.S, keys.R)
    private = PrivateKey(7, (keys.p - 1) // 2, (keys.q - 1) // 2)
    issuer = Issuer(public, private)
    wallet = Wallet()
    card = issuer.issue(
        ctype("irma-demo.RU.studentCard"),
        {"university": "Radboud", "studentCardNumber": "1", "studentID": "s7", "level": "MSc"},
        wallet.secret,
    )
    wallet.add(card)
    request = ask([["irma-demo.RU.studentCard.studentID"]])
    disclosure = wallet.disclose(request)
    # The scheme does not know this key: the proof is checked against it directly.
    proofs = [ProofD.parse(p) for p in disclosure["proofs"]]
    assert request.nonce is not None
    assert verify_proofs(proofs, [public], request.context, request.nonce)
    other = generate(1024, 8, counter=8, expiry=4_000_000_000)
    stranger = PublicKey("irma-demo.RU", 8, other.expiry, other.n, other.Z, other.S, other.R)
    assert not verify_proofs(proofs, [stranger], request.context, request.nonce)


def test_the_demo_issuer_is_in_the_packaged_scheme_and_issues() -> None:
    assert GEMEENTE_KEY is not None and len(GEMEENTE_KEY.R) >= 20
    private = PrivateKey.load(CONFIG / "irma-demo/gemeente/PrivateKeys/0.xml")
    gemeente = Issuer(GEMEENTE_KEY, private)
    wallet = Wallet()
    wallet.add(
        gemeente.issue(
            ctype("irma-demo.gemeente.address"),
            {
                "street": "Markt",
                "houseNumber": "1",
                "zipcode": "6811AA",
                "municipality": "Arnhem",
                "city": "Arnhem",
            },
            wallet.secret,
        )
    )
    request = ask([["irma-demo.gemeente.address.zipcode"]])
    result = verify_disclosure(wallet.disclose(request), request, SCHEMES)
    assert result.status is ProofStatus.VALID
    assert [v[:2] for v in values(result)[0]] == [("zipcode", "6811AA")]


@pytest.mark.parametrize("bits", [1024])
def test_generated_bases_are_distinct_residues(bits: int) -> None:
    keys = generate(bits, 4, expiry=4_000_000_000)
    assert len(set(keys.R)) == 4
    order = ((keys.p - 1) // 2) * ((keys.q - 1) // 2)
    for r in (keys.S, keys.Z, *keys.R):
        assert pow(r, order, keys.n) == 1  # in the group of quadratic residues
