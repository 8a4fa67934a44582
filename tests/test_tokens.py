"""Tests for the attribute token and the generic JWTs, including interop with jwcrypto."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from joserfc.jwk import OctKey
from jwcrypto import jwe as jc_jwe, jwk as jc_jwk, jws as jc_jws, jwt as jc_jwt

from idcontact.errors import (
    ConfigError,
    IdContactError,
    MalformedTokenError,
    TokenDecryptionError,
    TokenError,
    TokenExpiredError,
    TokenSignatureError,
    UnknownKeyError,
)
from idcontact.keys import JoseKey, load_pem
from idcontact.tokens import (
    MAX_TOKEN_LENGTH,
    AuthResult,
    ReceivedToken,
    TokenIssuer,
    TokenReader,
    sign_jwt,
    verify_jwt,
)

NOW = 1_700_000_000
CANARY = "CANARY-7f3a9c-secret-value"


def clock() -> float:
    return float(NOW)


def at(t: float) -> Callable[[], float]:
    return lambda: t


@dataclass(frozen=True)
class Pair:
    """One key pair, in both libraries."""

    jc: jc_jwk.JWK
    private: JoseKey
    public: JoseKey


def make_pair(kind: Literal["RSA", "EC"]) -> Pair:
    if kind == "RSA":
        jc = jc_jwk.JWK.generate(kty="RSA", size=2048)
    else:
        jc = jc_jwk.JWK.generate(kty="EC", crv="P-256")
    return Pair(
        jc,
        load_pem(kind, jc.export_to_pem(private_key=True, password=None), source="test"),
        load_pem(kind, jc.export_to_pem(), source="test"),
    )


@pytest.fixture(scope="module")
def keys() -> dict[str, Pair]:
    return {
        "RSA": make_pair("RSA"),
        "EC": make_pair("EC"),
        "RSA-other": make_pair("RSA"),
        "EC-other": make_pair("EC"),
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def jc_inner(
    signer: jc_jwk.JWK,
    claims: dict[str, Any],
    *,
    alg: str | None = None,
    kid: str | None = None,
) -> str:
    """An inner JWS made with jwcrypto, by default exactly as the original (no kid)."""
    alg = alg or ("RS256" if signer.kty == "RSA" else "ES256")
    header: dict[str, Any] = {"typ": "JWT", "alg": alg}
    if kid is not None:
        header["kid"] = kid
    token = jc_jwt.JWT(header=header, claims=claims)
    token.make_signed_token(signer)
    return str(token.serialize())


def jc_outer(
    recipient: jc_jwk.JWK,
    plaintext: str,
    *,
    alg: str | None = None,
    enc: str = "A128CBC-HS256",
    extra: dict[str, Any] | None = None,
) -> str:
    """An outer JWE made with jwcrypto around any plaintext."""
    alg = alg or ("RSA-OAEP" if recipient.kty == "RSA" else "ECDH-ES")
    header = {"typ": "JWT", "cty": "JWT", "alg": alg, "enc": enc, **(extra or {})}
    token = jc_jwe.JWE(plaintext, protected=json.dumps(header))
    token.add_recipient(recipient)
    return str(token.serialize(compact=True))


def original_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "id-contact-attributes",
        "status": "succes",
        "attributes": {"email": "user@example.org"},
        "iat": NOW,
        "exp": NOW + 300,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def original_token(
    keys: dict[str, Pair], *, signer: str = "RSA", to: str = "RSA", **kw: Any
) -> str:
    alg = kw.pop("alg", None)
    inner = jc_inner(keys[signer].jc, original_claims(**kw))
    return jc_outer(keys[to].jc, json.dumps({"njwt": inner}), alg=alg)


def reader(keys: dict[str, Pair], *, fallback: str | None = "RSA", **kw: Any) -> TokenReader:
    return TokenReader(
        [keys["RSA"].private, keys["EC"].private],
        {"rsa-1": keys["RSA"].public, "ec-1": keys["EC"].public},
        fallback_key=keys[fallback].public if fallback else None,
        clock=kw.pop("clock", clock),
        **kw,
    )


def jc_open(token: str, recipient: jc_jwk.JWK) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decrypt with jwcrypto; return the JWE header and the parsed plaintext."""
    outer = jc_jwe.JWE()
    outer.deserialize(token, key=recipient)
    return dict(outer.jose_header), json.loads(outer.payload)


# --------------------------------------------------------------------------------------------
# Round trips and the exact wire shape


@pytest.mark.parametrize("signer", ["RSA", "EC"])
@pytest.mark.parametrize("to", ["RSA", "EC"])
def test_roundtrip(keys: dict[str, Pair], signer: str, to: str) -> None:
    kid = "rsa-1" if signer == "RSA" else "ec-1"
    issuer = TokenIssuer(keys[signer].private, kid=kid, clock=clock)
    result = AuthResult("success", {"email": "user@example.org", "name": "A"}, "https://s/1")
    token = issuer.issue(result, keys[to].public)

    got = reader(keys, fallback=None).read(token)
    assert got.result == result
    assert got.kid == kid
    assert got.issued_at == NOW
    assert got.expires_at == NOW + 300
    assert got.replay_key.startswith("jti:")


@pytest.mark.parametrize("kind", ["RSA", "EC"])
def test_wire_format_seen_by_jwcrypto(keys: dict[str, Pair], kind: str) -> None:
    issuer = TokenIssuer(keys[kind].private, kid="k-1")
    token = issuer.issue(AuthResult("success", {"email": "e"}), keys[kind].public)
    assert len(token.split(".")) == 5

    header, plaintext = jc_open(token, keys[kind].jc)
    expected = {"typ": "JWT", "cty": "JWT", "enc": "A128CBC-HS256"}
    if kind == "RSA":
        assert header == {**expected, "alg": "RSA-OAEP"}
    else:
        assert header.pop("epk")["crv"] == "P-256"
        assert header == {**expected, "alg": "ECDH-ES"}
    # The quirk: a claims object holding the JWS, not the bare JWS.
    assert list(plaintext) == ["njwt"]
    assert isinstance(plaintext["njwt"], str)

    # jwcrypto verifies the signature and the expiry of the inner token.
    inner = jc_jwt.JWT(jwt=plaintext["njwt"], key=keys[kind].jc, expected_type="JWS")
    assert json.loads(inner.header) == {
        "typ": "JWT",
        "alg": "RS256" if kind == "RSA" else "ES256",
        "kid": "k-1",
    }
    claims = json.loads(inner.claims)
    assert set(claims) == {"sub", "status", "attributes", "iat", "exp", "jti"}
    assert claims["sub"] == "id-contact-attributes"
    assert claims["status"] == "succes"
    assert claims["attributes"] == {"email": "e"}
    assert claims["exp"] - claims["iat"] == 300
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) == 16


def test_issuer_options(keys: dict[str, Pair]) -> None:
    issuer = TokenIssuer(
        keys["EC"].private, status_spelling="success", lifetime=60, clock=at(NOW + 0.9)
    )
    ok = issuer.issue(AuthResult("success", None, "https://auth/session/1"), keys["RSA"].public)
    failed = issuer.issue(AuthResult("failed", None), keys["RSA"].public)

    _, plain = jc_open(ok, keys["RSA"].jc)
    inner = jc_jwt.JWT(jwt=plain["njwt"], key=keys["EC"].jc, check_claims=False)
    claims = json.loads(inner.claims)
    assert "kid" not in json.loads(inner.header)
    assert "attributes" not in claims  # omitted, not null
    assert claims["status"] == "success"
    assert claims["session_url"] == "https://auth/session/1"
    assert (claims["iat"], claims["exp"]) == (NOW, NOW + 60)

    _, plain = jc_open(failed, keys["RSA"].jc)
    inner = jc_jwt.JWT(jwt=plain["njwt"], key=keys["EC"].jc, check_claims=False)
    assert json.loads(inner.claims)["status"] == "failed"

    got = reader(keys, fallback="EC").read(failed)
    assert got.result == AuthResult("failed", None)
    assert got.kid is None


def test_each_token_gets_its_own_jti(keys: dict[str, Pair]) -> None:
    issuer = TokenIssuer(keys["EC"].private, kid="ec-1", clock=clock)
    read = reader(keys).read
    result = AuthResult("success", {})
    assert (
        read(issuer.issue(result, keys["EC"].public)).replay_key
        != read(issuer.issue(result, keys["EC"].public)).replay_key
    )


# --------------------------------------------------------------------------------------------
# Reading the original format (made with jwcrypto)


@pytest.mark.parametrize(
    ("to", "alg"), [("RSA", "RSA-OAEP"), ("RSA", "RSA-OAEP-256"), ("EC", "ECDH-ES")]
)
@pytest.mark.parametrize("signer", ["RSA", "EC"])
def test_reads_original_format(keys: dict[str, Pair], to: str, alg: str, signer: str) -> None:
    token = original_token(keys, signer=signer, to=to, alg=alg)
    got = reader(keys, fallback=signer).read(token)
    assert got.result == AuthResult("success", {"email": "user@example.org"})
    assert got.kid is None
    # No jti in the original: the replay key is the hash of the JWE itself.
    assert got.replay_key == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert (got.issued_at, got.expires_at) == (NOW, NOW + 300)


@pytest.mark.parametrize(
    ("status", "expected"),
    [("succes", "success"), ("success", "success"), ("failed", "failed")],
)
def test_status_spellings(keys: dict[str, Pair], status: str, expected: str) -> None:
    token = original_token(keys, status=status)
    assert reader(keys).read(token).result.status == expected


@pytest.mark.parametrize("enc", ["A128GCM", "A256GCM"])
def test_gcm_content_encryption(keys: dict[str, Pair], enc: str) -> None:
    inner = jc_inner(keys["RSA"].jc, original_claims())
    token = jc_outer(keys["EC"].jc, json.dumps({"njwt": inner}), enc=enc)
    assert reader(keys).read(token).result.status == "success"


def test_verder_helpen_variant(keys: dict[str, Pair]) -> None:
    token = original_token(keys, sub="verder-helpen-attributes", status="failed", attributes={})
    assert reader(keys).read(token).result == AuthResult("failed", {})


def test_surrounding_whitespace_is_ignored(keys: dict[str, Pair]) -> None:
    token = original_token(keys)
    got = reader(keys).read(token + "\r\n")
    assert got.replay_key == "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def test_tries_each_decryption_key(keys: dict[str, Pair]) -> None:
    token = original_token(keys, to="RSA")
    two_rsa = TokenReader(
        [keys["RSA-other"].private, keys["EC"].private, keys["RSA"].private],
        {},
        fallback_key=keys["RSA"].public,
        clock=clock,
    )
    assert two_rsa.read(token).result.status == "success"


# --------------------------------------------------------------------------------------------
# Time


def test_expiry_with_leeway(keys: dict[str, Pair]) -> None:
    token = original_token(keys)
    assert reader(keys, clock=at(NOW + 304)).read(token)
    with pytest.raises(TokenExpiredError):
        reader(keys, clock=at(NOW + 305)).read(token)
    with pytest.raises(TokenExpiredError):
        reader(keys, clock=at(NOW + 301), leeway=0).read(token)


def test_not_before(keys: dict[str, Pair]) -> None:
    token = original_token(keys, nbf=NOW + 60)
    with pytest.raises(TokenExpiredError):
        reader(keys).read(token)
    assert reader(keys, clock=at(NOW + 56)).read(token)


@pytest.mark.parametrize("changes", [{"exp": None}, {"exp": "soon"}, {"exp": True}, {"iat": None}])
def test_bad_or_missing_times(keys: dict[str, Pair], changes: dict[str, Any]) -> None:
    with pytest.raises(MalformedTokenError):
        reader(keys).read(original_token(keys, **changes))


# --------------------------------------------------------------------------------------------
# Refusals


def flip(segment: str, index: int) -> str:
    ch = segment[index]
    return segment[:index] + ("B" if ch != "B" else "C") + segment[index + 1 :]


@pytest.mark.parametrize("part", range(5))
def test_tampering_any_part_is_refused(keys: dict[str, Pair], part: int) -> None:
    issuer = TokenIssuer(keys["RSA"].private, kid="rsa-1", clock=clock)
    parts = issuer.issue(AuthResult("success", {"email": "e"}), keys["RSA"].public).split(".")
    for index in (0, len(parts[part]) // 2, len(parts[part]) - 1):
        tampered = parts.copy()
        tampered[part] = flip(parts[part], index)
        with pytest.raises((MalformedTokenError, TokenDecryptionError)):
            reader(keys).read(".".join(tampered))


def test_ecdh_es_encrypted_key_must_be_empty(keys: dict[str, Pair]) -> None:
    parts = original_token(keys, to="EC").split(".")
    assert parts[1] == ""
    parts[1] = "AAAA"
    with pytest.raises(MalformedTokenError):
        reader(keys).read(".".join(parts))


def test_wrong_decryption_key(keys: dict[str, Pair]) -> None:
    for to in ("RSA-other", "EC-other"):
        with pytest.raises(TokenDecryptionError):
            reader(keys).read(original_token(keys, to=to))


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "RSA1_5", "enc": "A128CBC-HS256"},
        {"alg": "dir", "enc": "A128CBC-HS256"},
        {"alg": "RSA-OAEP", "enc": "A128CBC-HS256", "zip": "DEF"},
    ],
)
def test_refused_jwe_algorithms(keys: dict[str, Pair], header: dict[str, str]) -> None:
    parts = original_token(keys).split(".")
    parts[0] = b64json(header)
    with pytest.raises(TokenDecryptionError):
        reader(keys).read(".".join(parts))


def test_untrusted_signer(keys: dict[str, Pair]) -> None:
    # Via the fallback key (no kid) ...
    with pytest.raises(TokenSignatureError):
        reader(keys).read(original_token(keys, signer="RSA-other"))
    # ... and via a kid we know but a key that is not the one it names.
    inner = jc_inner(keys["RSA-other"].jc, original_claims(), kid="rsa-1")
    with pytest.raises(TokenSignatureError):
        reader(keys).read(jc_outer(keys["RSA"].jc, json.dumps({"njwt": inner})))


def test_kid_selects_key(keys: dict[str, Pair]) -> None:
    inner = jc_inner(keys["EC"].jc, original_claims(), kid="ec-1")
    got = reader(keys, fallback="RSA").read(jc_outer(keys["RSA"].jc, json.dumps({"njwt": inner})))
    assert got.kid == "ec-1"


def test_unknown_kid(keys: dict[str, Pair]) -> None:
    inner = jc_inner(keys["RSA"].jc, original_claims(), kid="nobody")
    token = jc_outer(keys["RSA"].jc, json.dumps({"njwt": inner}))
    with pytest.raises(UnknownKeyError):
        reader(keys, fallback=None).read(token)
    # With a fallback configured, an unknown kid is checked against the fallback key, and the
    # result does not claim that kid (it names no trusted key).
    assert reader(keys, fallback="RSA").read(token).kid is None
    # No kid and no fallback: nothing to verify with.
    with pytest.raises(UnknownKeyError):
        reader(keys, fallback=None).read(original_token(keys))


def test_unsigned_inner_token(keys: dict[str, Pair]) -> None:
    for header in ({"typ": "JWT", "alg": "none"}, {"typ": "JWT", "alg": "RS256"}):
        inner = f"{b64json(header)}.{b64json(original_claims())}."
        token = jc_outer(keys["RSA"].jc, json.dumps({"njwt": inner}))
        with pytest.raises(TokenSignatureError):
            reader(keys).read(token)


def test_hmac_inner_token(keys: dict[str, Pair]) -> None:
    # The classic confusion: HMAC keyed with the verifier's public key PEM.
    secret = jc_jwk.JWK.from_password(keys["RSA"].jc.export_to_pem().decode())
    inner = jc_inner(secret, original_claims(), alg="HS256")
    with pytest.raises(TokenSignatureError):
        reader(keys).read(jc_outer(keys["RSA"].jc, json.dumps({"njwt": inner})))


@pytest.mark.parametrize(
    "plaintext",
    [
        json.dumps({"jwt": "a.b.c"}),
        json.dumps({"njwt": 5}),
        json.dumps(["njwt"]),
        "not json",
        '{"njwt": "a.b.c", "njwt": "d.e.f"}',
    ],
)
def test_bad_plaintext(keys: dict[str, Pair], plaintext: str) -> None:
    with pytest.raises(MalformedTokenError):
        reader(keys).read(jc_outer(keys["RSA"].jc, plaintext))


def test_bare_jws_plaintext_is_refused(keys: dict[str, Pair]) -> None:
    # What RFC 7519 nesting would do; the protocol wraps it in {"njwt": ...} instead.
    inner = jc_inner(keys["RSA"].jc, original_claims())
    with pytest.raises(MalformedTokenError):
        reader(keys).read(jc_outer(keys["RSA"].jc, inner))


@pytest.mark.parametrize(
    "changes",
    [
        {"attributes": {"email": 5}},
        {"attributes": {"email": None}},
        {"attributes": {"email": {"nested": "x"}}},
        {"attributes": ["email"]},
        {"status": None},
        {"status": "ok"},
        {"status": 1},
        {"session_url": 7},
        {"sub": 7},
        {"jti": 7},
        {"jti": ""},
    ],
)
def test_bad_claims(keys: dict[str, Pair], changes: dict[str, Any]) -> None:
    with pytest.raises(MalformedTokenError):
        reader(keys).read(original_token(keys, **changes))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c.d",
        "a.b.c.d.e.f",
        "!!!.a.b.c.d",
        "a=.b.c.d.e",
        b64(b"not json") + ".AA.AA.AA.AA",
        b64json([1, 2]) + ".AA.AA.AA.AA",
        b64json({"enc": "A128CBC-HS256"}) + ".AA.AA.AA.AA",
        b64json({"alg": "RSA-OAEP", "enc": 5}) + ".AA.AA.AA.AA",
        b64json({"alg": "RSA-OAEP", "enc": "A128CBC-HS256"}) + ".AA.AA.AA.A",
        "é" + b64json({"alg": "RSA-OAEP", "enc": "A128CBC-HS256"}) + ".AA.AA.AA.AA",
    ],
)
def test_malformed_tokens(keys: dict[str, Pair], token: str) -> None:
    with pytest.raises(MalformedTokenError):
        reader(keys).read(token)


def test_non_canonical_base64_is_refused(keys: dict[str, Pair]) -> None:
    # Same bytes, second spelling: must not be accepted (it would dodge hash-based replay keys).
    parts = original_token(keys).split(".")
    tag = parts[4]  # 16 bytes -> 22 chars, the last one carries 4 unused bits
    assert len(tag) == 22
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(tag[-1]) | 1]
    assert twin != tag[-1]
    parts[4] = tag[:-1] + twin
    with pytest.raises(MalformedTokenError):
        reader(keys).read(".".join(parts))


def test_oversized_token(keys: dict[str, Pair]) -> None:
    big = "A" * (MAX_TOKEN_LENGTH + 1)
    with pytest.raises(MalformedTokenError):
        reader(keys).read(big)
    with pytest.raises(MalformedTokenError):
        verify_jwt(big, {"k": keys["RSA"].public})
    # Large plaintext within the limit is fine.
    token = original_token(keys, attributes={"blob": "x" * 30_000})
    assert len(token) < MAX_TOKEN_LENGTH
    assert reader(keys).read(token).result.attributes == {"blob": "x" * 30_000}


def test_reader_and_issuer_configuration(keys: dict[str, Pair]) -> None:
    with pytest.raises(ConfigError):
        TokenReader([], {})
    with pytest.raises(ConfigError):
        TokenReader([keys["RSA"].public], {})
    with pytest.raises(ConfigError):
        TokenReader([keys["RSA"].private], {}, leeway=-1)
    with pytest.raises(ConfigError):
        TokenIssuer(keys["RSA"].public)
    with pytest.raises(ConfigError):
        TokenIssuer(keys["RSA"].private, lifetime=0)
    with pytest.raises(ConfigError):
        TokenIssuer(keys["RSA"].private).issue(AuthResult("failed", None), OctKey.generate_key(256))  # type: ignore[arg-type]
    assert "PRIVATE" not in repr(TokenIssuer(keys["RSA"].private))
    assert "rsa-1" in repr(reader(keys))


# --------------------------------------------------------------------------------------------
# Nothing leaks


def test_results_never_show_values(keys: dict[str, Pair]) -> None:
    result = AuthResult("success", {"bsn": CANARY}, f"https://auth/logout/{CANARY}")
    for text in (repr(result), str(result)):
        assert CANARY not in text
        assert "bsn" in text
    token = TokenIssuer(keys["RSA"].private, kid="rsa-1", clock=clock).issue(
        result, keys["RSA"].public
    )
    received = reader(keys).read(token)
    assert received.result.attributes == {"bsn": CANARY}
    for text in (repr(received), str(received)):
        assert CANARY not in text
        assert token not in text


def test_errors_never_show_token_or_values(keys: dict[str, Pair]) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        (original_token(keys, attributes={"bsn": CANARY}), {"clock": at(NOW + 10_000)}),
        (original_token(keys, attributes={"bsn": [CANARY]}), {}),
        (original_token(keys, status=CANARY), {}),
        (original_token(keys, attributes={"bsn": CANARY}, signer="EC-other"), {}),
        (original_token(keys, attributes={"bsn": CANARY}, to="RSA-other"), {}),
        (jc_outer(keys["RSA"].jc, json.dumps({"njwt": CANARY})), {}),
        (jc_outer(keys["RSA"].jc, CANARY), {}),
        (f"{b64json({'alg': CANARY, 'enc': CANARY})}.a.b.c.d", {}),
        (CANARY + ".x.y.z.w", {}),
    ]
    seen: list[IdContactError] = []
    for token, options in cases:
        with pytest.raises(TokenError) as info:
            reader(keys, **options).read(token)
        seen.append(info.value)
        for text in (str(info.value), repr(info.value), info.value.detail):
            assert CANARY not in text
            assert token not in text
        # The library's own message (which may quote input) is not chained on.
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__ or info.value.__context__ is None
    assert {type(e) for e in seen} >= {
        TokenExpiredError,
        MalformedTokenError,
        TokenSignatureError,
        TokenDecryptionError,
    }


def test_auth_result_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        AuthResult("succes", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError) as info:
        AuthResult("success", {"bsn": 5})  # type: ignore[dict-item]
    assert "5" not in str(info.value)
    source = {"email": "e"}
    result = AuthResult("success", source)
    source["email"] = "changed"
    assert result.attributes == {"email": "e"}
    with pytest.raises(TypeError):
        result.attributes["email"] = "x"  # type: ignore[index]


def test_received_token_is_plain_data(keys: dict[str, Pair]) -> None:
    got = reader(keys).read(original_token(keys))
    assert isinstance(got, ReceivedToken)
    with pytest.raises(AttributeError):
        got.replay_key = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Generic JWTs


@pytest.mark.parametrize("kind", ["RSA", "EC"])
def test_sign_and_verify_jwt(keys: dict[str, Pair], kind: str) -> None:
    claims: dict[str, object] = {"request": {"purpose": "p"}, "iat": NOW, "exp": NOW + 300}
    token = sign_jwt(claims, keys[kind].private, kid="start-1")
    assert verify_jwt(token, {"start-1": keys[kind].public}, clock=clock) == claims

    # jwcrypto agrees on signature and header.
    checked = jc_jws.JWS()
    checked.deserialize(token, key=keys[kind].jc)
    assert json.loads(checked.objects["protected"]) == {
        "typ": "JWT",
        "alg": "RS256" if kind == "RSA" else "ES256",
        "kid": "start-1",
    }
    # Unknown kid, no fallback; untrusted key.
    with pytest.raises(UnknownKeyError):
        verify_jwt(token, {"other": keys[kind].public}, clock=clock)
    with pytest.raises(TokenSignatureError):
        verify_jwt(token, {"start-1": keys[f"{kind}-other"].public}, clock=clock)
    with pytest.raises(TokenExpiredError):
        verify_jwt(token, {"start-1": keys[kind].public}, clock=at(NOW + 400))


def test_jwt_without_typ_and_exp(keys: dict[str, Pair]) -> None:
    token = sign_jwt({"continuation": "tel:+31,1"}, keys["EC"].private, typ=None)
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==")) == {"alg": "ES256"}
    with pytest.raises(MalformedTokenError):
        verify_jwt(token, {}, fallback_key=keys["EC"].public, clock=clock)
    claims = verify_jwt(token, {}, fallback_key=keys["EC"].public, clock=clock, require_exp=False)
    assert claims == {"continuation": "tel:+31,1"}


def test_jwt_made_by_jwcrypto(keys: dict[str, Pair]) -> None:
    token = jc_inner(keys["RSA"].jc, {"request": {}, "iat": NOW, "exp": NOW + 300}, kid="a")
    assert verify_jwt(token, {"a": keys["RSA"].public}, clock=clock)["request"] == {}


def test_hs256_jwt(keys: dict[str, Pair]) -> None:
    secret = OctKey.import_key(b"s" * 32)
    claims: dict[str, object] = {"attr_url": "http://x", "iat": NOW, "exp": NOW + 1800}
    token = sign_jwt(claims, secret)
    # Only when asked for, and only with an HMAC key.
    with pytest.raises(TokenSignatureError):
        verify_jwt(token, {}, fallback_key=secret, clock=clock)
    assert verify_jwt(token, {}, fallback_key=secret, clock=clock, allowed_algs=("HS256",)) == (
        claims
    )
    with pytest.raises(TokenSignatureError):
        verify_jwt(
            token,
            {},
            fallback_key=OctKey.import_key(b"t" * 32),
            clock=clock,
            allowed_algs=("HS256",),
        )
    with pytest.raises(TokenSignatureError):
        verify_jwt(
            token,
            {},
            fallback_key=keys["RSA"].public,
            clock=clock,
            allowed_algs=("HS256", "RS256"),
        )
    with pytest.raises(ConfigError):
        sign_jwt(claims, OctKey.import_key(b"x" * 20))


def test_jwt_refusals(keys: dict[str, Pair]) -> None:
    pub = {"k": keys["RSA"].public}
    claims: dict[str, object] = {"iat": NOW, "exp": NOW + 300}
    token = sign_jwt(claims, keys["RSA"].private, kid="k")
    head, body, sig = token.split(".")
    unsigned = f"{b64json({'alg': 'none', 'kid': 'k'})}.{body}."
    crit = f"{b64json({'alg': 'RS256', 'kid': 'k', 'crit': ['b64'], 'b64': False})}.{body}.{sig}"
    cases: list[tuple[str, type[Exception]]] = [
        (unsigned, TokenSignatureError),
        (f"{head}.{body}.", TokenSignatureError),
        (f"{head}.{body}", MalformedTokenError),
        (f"{head}.{body}.{sig}.x", MalformedTokenError),
        (f"{head}.{b64(b'[]')}.{sig}", TokenSignatureError),
        (f"{head}.{body}.{sig[:-4]}AAAA", TokenSignatureError),
        (crit, MalformedTokenError),
        (f"{b64json({'alg': 'RS256', 'kid': 5})}.{body}.{sig}", MalformedTokenError),
        (f"{b64(b'{}')}.{body}.{sig}", MalformedTokenError),
    ]
    for bad, error in cases:
        with pytest.raises(error):
            verify_jwt(bad, pub, clock=clock)
    with pytest.raises(ConfigError):
        sign_jwt(claims, keys["RSA"].public)
