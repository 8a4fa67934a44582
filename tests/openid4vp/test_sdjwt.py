"""SD-JWT VC verification (RFC 9901, SD-JWT VC draft), piece by piece: nested and array
disclosures, every way a digest or disclosure can be wrong, key binding, issuer trust by x5c
chain and by DID, validity times, and the Token Status List."""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import ECKey

from idcontact.openid4vp import errors
from idcontact.openid4vp.holder import Credential
from idcontact.openid4vp.issuer import disclosure
from idcontact.openid4vp.sdjwt import Limits, b64url, digest, verify_presentation
from idcontact.openid4vp.statuslist import StatusLists
from idcontact.openid4vp.trust import IssuerTrust, did_jwk_of
from tests.openid4vp.support import PID, did_issuer, make_ca, make_leaf, x5c, x509_issuer

AUD = "x509_san_dns:verifier.example"
NONCE = "n-0123456789"


def sign(key: ECKey, payload: dict[str, Any], **header: Any) -> str:
    return jws.serialize_compact(
        {"alg": "ES256", "typ": "dc+sd-jwt", **header},
        json.dumps(payload).encode(),
        key,
        algorithms=["ES256"],
    )


class Maker:
    """Hand-made SD-JWTs, for structures our issuer does not produce."""

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256")
        self.iss = did_jwk_of(self.key)
        self.holder = ECKey.generate_key("P-256")
        self.trust = IssuerTrust(dids=[self.iss])

    def payload(self, **claims: Any) -> dict[str, Any]:
        now = int(time.time())
        public = {k: v for k, v in self.holder.as_dict(private=False).items() if k != "kid"}
        base = {"iss": self.iss, "vct": PID, "iat": now, "exp": now + 600, "cnf": {"jwk": public}}
        return base | claims

    def present(self, payload: dict[str, Any], disclosures: list[str], **kb: Any) -> str:
        base = (
            sign(self.key, payload, kid=self.iss + "#0")
            + "~"
            + "".join(d + "~" for d in disclosures)
        )
        claims = {"iat": int(time.time()), "aud": AUD, "nonce": NONCE, "sd_hash": digest(base)}
        claims.update(kb)
        return base + jws.serialize_compact(
            {"alg": "ES256", "typ": "kb+jwt"},
            json.dumps(claims).encode(),
            self.holder,
            algorithms=["ES256"],
        )

    def verify(self, presentation: str, **kwargs: Any) -> Any:
        options: dict[str, Any] = {
            "trust": self.trust,
            "audience": AUD,
            "nonce": NONCE,
            "now": time.time(),
            "allowed_vct": [PID],
        }
        options.update(kwargs)
        return verify_presentation(presentation, **options)


@pytest.fixture
def maker() -> Maker:
    return Maker()


def test_nested_and_array_disclosures_unfold_and_decoys_are_ignored(maker: Maker) -> None:
    street = disclosure("street", "Markt 1")
    city = disclosure("locality", "Arnhem")
    nl = b64url(json.dumps(["salt-nl", "NL"]).encode())
    address = disclosure("address", {"_sd": [digest(street), digest(city)]})
    payload = maker.payload(
        _sd=[digest(address), digest("decoy-digest")],
        nationalities=[{"...": digest(nl)}, {"...": digest("another-decoy")}, "DE"],
    )
    shown = maker.verify(maker.present(payload, [address, city, nl]))
    assert shown.claims == {"address": {"locality": "Arnhem"}, "nationalities": ["NL", "DE"]}
    assert "Markt 1" not in repr(shown) and "Arnhem" not in repr(shown)


@pytest.mark.parametrize(
    "case",
    ["unreferenced", "twice", "digest-twice", "array-in-object", "name-clash", "reserved-name"],
)
def test_disclosures_that_do_not_fit_are_refused(maker: Maker, case: str) -> None:
    given = disclosure("given_name", "Demi")
    payload = maker.payload(_sd=[digest(given)])
    disclosures = [given]
    if case == "unreferenced":
        disclosures.append(disclosure("bsn", "999990019"))
    elif case == "twice":
        disclosures.append(given)
    elif case == "digest-twice":
        payload["nested"] = {"_sd": [digest(given)]}
    elif case == "array-in-object":
        element = b64url(json.dumps(["salt", "x"]).encode())
        payload["_sd"].append(digest(element))
        disclosures.append(element)
    elif case == "name-clash":
        payload["given_name"] = "visible"
    elif case == "reserved-name":
        bad = b64url(json.dumps(["salt", "_sd", "x"]).encode())
        payload["_sd"].append(digest(bad))
        disclosures.append(bad)
    with pytest.raises(errors.DisclosureError):
        maker.verify(maker.present(payload, disclosures))


def test_only_sha256_digests_are_accepted(maker: Maker) -> None:
    with pytest.raises(errors.DisclosureError):
        maker.verify(maker.present(maker.payload(_sd=[], _sd_alg="sha-512"), []))


@pytest.mark.parametrize(
    ("kb", "error"),
    [
        ({"aud": "x509_san_dns:other.example"}, errors.WrongAudienceError),
        ({"nonce": "other"}, errors.WrongNonceError),
        ({"iat": int(time.time()) - 3600}, errors.StalePresentationError),
        ({"iat": int(time.time()) + 3600}, errors.StalePresentationError),
        ({"sd_hash": "AAAA"}, errors.KeyBindingError),
    ],
)
def test_key_binding_claims_are_checked(maker: Maker, kb: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        maker.verify(maker.present(maker.payload(), [], **kb))


def test_key_binding_must_exist_and_be_signed_by_the_holder(maker: Maker) -> None:
    good = maker.present(maker.payload(), [])
    without = good[: good.rindex("~") + 1]
    with pytest.raises(errors.KeyBindingError):
        maker.verify(without)
    maker.holder, real = ECKey.generate_key("P-256"), maker.holder
    forged = maker.present({**maker.payload(), "cnf": {"jwk": real.as_dict(private=False)}}, [])
    with pytest.raises(errors.KeyBindingError):
        maker.verify(forged)


def test_validity_times_and_vct_and_the_signature(maker: Maker) -> None:
    now = int(time.time())
    with pytest.raises(errors.CredentialExpiredError):
        maker.verify(maker.present(maker.payload(exp=now - 100), []))
    with pytest.raises(errors.CredentialExpiredError):
        maker.verify(maker.present(maker.payload(nbf=now + 600), []))
    with pytest.raises(errors.CredentialTypeError):
        maker.verify(maker.present(maker.payload(vct="urn:other"), []))
    good = maker.present(maker.payload(), [])
    sig = good.split("~")[0].split(".")[2]
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(errors.IssuerSignatureError):
        maker.verify(good.replace(sig, flipped, 1))


def test_limits_refuse_oversized_input(maker: Maker) -> None:
    many = [disclosure(f"c{i}", i) for i in range(201)]
    payload = maker.payload(_sd=[digest(d) for d in many])
    with pytest.raises(errors.PresentationTooLargeError):
        maker.verify(maker.present(payload, many), limits=Limits(max_bytes=10**6))
    with pytest.raises(errors.PresentationTooLargeError):
        maker.verify("A" * 40_000 + "~")
    deep: dict[str, Any] = {"x": 1}
    for _ in range(20):
        deep = {"n": deep}
    with pytest.raises(errors.MalformedPresentationError):
        maker.verify(maker.present(maker.payload(deep=deep), []))


def test_x5c_chains_must_end_at_an_anchor_through_cas_only() -> None:
    root = make_ca()
    intermediate_ca = make_leaf(root, "Not a CA")  # basicConstraints ca=False
    issuer_under_leaf = make_leaf(intermediate_ca, "Issuer")
    trust = IssuerTrust([root.cert])
    header = {"x5c": x5c(issuer_under_leaf.cert, intermediate_ca.cert)}
    with pytest.raises(errors.UntrustedIssuerError):
        trust.key_for(header, {"iss": "https://issuer.example"}, time.time())
    good = x509_issuer(root)
    assert trust.key_for({"x5c": x5c(*good.chain)}, {"iss": good.iss}, time.time()).issuer == (
        "Test Issuer B.V."
    )
    with pytest.raises(errors.UntrustedIssuerError):  # the certificate names another host
        trust.key_for({"x5c": x5c(*good.chain)}, {"iss": "https://evil.example"}, time.time())
    with pytest.raises(errors.UntrustedIssuerError):  # expired by then
        trust.key_for({"x5c": x5c(*good.chain)}, {"iss": good.iss}, time.time() + 365 * 86400)
    with pytest.raises(errors.UntrustedIssuerError):  # another root
        IssuerTrust([make_ca("Other").cert]).key_for(
            {"x5c": x5c(*good.chain)}, {"iss": good.iss}, time.time()
        )


def test_dids_are_trusted_only_when_configured_and_did_web_only_pinned() -> None:
    issuer = did_issuer()
    with pytest.raises(errors.UntrustedIssuerError):
        IssuerTrust().key_for({"kid": issuer.iss + "#0"}, {"iss": issuer.iss}, time.time())
    web_key = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    trust = IssuerTrust(did_web={"did:web:issuer.example": [web_key.as_dict(private=False)]})
    found = trust.key_for(
        {"kid": "did:web:issuer.example#k1"}, {"iss": "did:web:issuer.example"}, time.time()
    )
    assert found.key.thumbprint() == web_key.thumbprint()
    with pytest.raises(errors.UntrustedIssuerError):  # kid of another DID
        trust.key_for({"kid": "did:web:evil.example#k1"}, {"iss": "did:web:issuer.example"}, 0)


# -- Token Status List -------------------------------------------------------------------------

STATUS_URI = "https://issuer.example/status/1"


def status_list_token(maker: Maker, values: list[int], bits: int = 2, sub: str = STATUS_URI) -> str:
    packed = bytearray((len(values) * bits + 7) // 8)
    for i, v in enumerate(values):
        packed[i * bits // 8] |= v << (i * bits % 8)
    payload = {
        "iss": maker.iss,
        "sub": sub,
        "iat": int(time.time()),
        "ttl": 60,
        "status_list": {"bits": bits, "lst": b64url(zlib.compress(bytes(packed)))},
    }
    return jws.serialize_compact(
        {"alg": "ES256", "typ": "statuslist+jwt", "kid": maker.iss + "#0"},
        json.dumps(payload).encode(),
        maker.key,
        algorithms=["ES256"],
    )


@pytest.mark.anyio
async def test_the_status_list_refuses_revoked_and_caches(maker: Maker) -> None:
    fetched: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        return httpx.Response(200, text=status_list_token(maker, [0, 1, 0, 2]))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        lists = StatusLists(http, maker.trust)
        await lists.check({"status_list": {"idx": 0, "uri": STATUS_URI}})
        await lists.check({"status_list": {"idx": 2, "uri": STATUS_URI}})
        for idx in (1, 3, 99):
            with pytest.raises(errors.CredentialRevokedError):
                await lists.check({"status_list": {"idx": idx, "uri": STATUS_URI}})
        await lists.check(None)  # no status: nothing to check
    assert fetched == [STATUS_URI]  # cached for its ttl


@pytest.mark.anyio
async def test_a_status_list_of_another_issuer_or_uri_is_refused(maker: Maker) -> None:
    other = Maker()
    for token in (status_list_token(other, [0]), status_list_token(maker, [0], sub="https://x")):

        def handler(request: httpx.Request, token: str = token) -> httpx.Response:
            return httpx.Response(200, text=token)

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            with pytest.raises(errors.CredentialRevokedError):
                await StatusLists(http, maker.trust).check(
                    {"status_list": {"idx": 0, "uri": STATUS_URI}}
                )


def test_our_issuer_and_holder_make_what_the_verifier_accepts() -> None:
    issuer = did_issuer()
    credential: Credential = issuer.credential({"given_name": "Demi", "bsn": "1"})
    presentation = credential.present(["given_name"], aud=AUD, nonce=NONCE)
    shown = verify_presentation(
        presentation,
        trust=IssuerTrust(dids=[issuer.iss]),
        audience=AUD,
        nonce=NONCE,
        now=time.time(),
        allowed_vct=[PID],
    )
    assert shown.claims == {"given_name": "Demi"}  # bsn was not disclosed
