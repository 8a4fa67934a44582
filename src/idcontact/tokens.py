"""The ID Contact attribute token (protocol §5.1) and the small signed JWTs (§5.3).

The attribute token is a JWS nested in a JWE, with one quirk we must keep for interop: the JWE
plaintext is the JSON object ``{"njwt": "<compact JWS>"}``, not the bare JWS.

Everything here is synchronous and pure (the clock is injectable). Parsing is done by hand and
strictly (canonical base64url, no duplicate JSON keys) before joserfc does the cryptography, so
each failure maps onto one class of :mod:`idcontact.errors` and no token can be re-encoded into a
second valid spelling that would dodge the replay check. Error messages are fixed sentences: they
never contain the token, claim values or key material, and library exceptions are not chained.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe, jws
from joserfc.errors import ExceededSizeError
from joserfc.jwe import JWERegistry
from joserfc.jwk import ECKey, OctKey, RSAKey
from joserfc.jws import JWSRegistry

from idcontact.errors import (
    ConfigError,
    MalformedTokenError,
    TokenDecryptionError,
    TokenExpiredError,
    TokenSignatureError,
    UnknownKeyError,
)
from idcontact.keys import MIN_RSA_BITS, JoseKey

__all__ = [
    "ATTRIBUTES_SUBJECT",
    "MAX_TOKEN_LENGTH",
    "AuthResult",
    "JoseKey",
    "ReceivedToken",
    "SigningKey",
    "TokenIssuer",
    "TokenReader",
    "sign_jwt",
    "verify_jwt",
]

#: A key that can sign or verify a generic JWT: asymmetric, or an HMAC secret for HS256.
SigningKey: TypeAlias = RSAKey | ECKey | OctKey
Clock: TypeAlias = Callable[[], float]

#: ``sub`` of the attribute token we issue (not checked when reading, like the original).
ATTRIBUTES_SUBJECT: Final = "id-contact-attributes"
#: Tokens longer than this are refused before any parsing (they travel in URLs and bodies).
MAX_TOKEN_LENGTH: Final = 64 * 1024
#: HS256 secrets shorter than this are refused (protocol: ``internal_secret`` ≥ 32 chars).
MIN_HMAC_BYTES: Final = 32
_MAX_JTI_LENGTH: Final = 256

_JWE_ENC: Final = "A128CBC-HS256"
_JWE_READ_ALGS: Final = frozenset({"RSA-OAEP", "RSA-OAEP-256", "ECDH-ES"})
_JWE_READ_ENCS: Final = frozenset({"A128CBC-HS256", "A128GCM", "A256GCM"})
_ATTRIBUTE_TOKEN_ALGS: Final = ("RS256", "ES256")

# Explicit registries: joserfc's defaults follow its own "recommended" list, which may drop
# algorithms the protocol needs (RSA-OAEP) or admit ones we do not want (zip, RSA1_5, dir...).
# Reading is lenient about unknown non-critical header names (other implementations add some).
_JWE_WRITE_REGISTRY: Final = JWERegistry(algorithms=["RSA-OAEP", "ECDH-ES", _JWE_ENC])
_JWE_READ_REGISTRY: Final = JWERegistry(
    algorithms=[*sorted(_JWE_READ_ALGS), *sorted(_JWE_READ_ENCS)], strict_check_header=False
)
_JWS_REGISTRIES: Final = {
    alg: JWSRegistry(algorithms=[alg], strict_check_header=False)
    for alg in ("RS256", "ES256", "HS256")
}

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_STATUS_READ: Final[Mapping[str, Literal["success", "failed"]]] = MappingProxyType(
    {"succes": "success", "success": "success", "failed": "failed"}
)


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, repr=False)
class AuthResult:
    """The outcome of an authentication: a status and the disclosed attributes.

    ``attributes`` is copied into a read-only mapping. The repr shows attribute *names* only,
    because results end up in logs and the values are personal data.
    """

    status: Literal["success", "failed"]
    attributes: Mapping[str, str] | None
    session_url: str | None = None
    provenance: Mapping[str, str] | None = None
    """Our extension (claim ``provenance``, ignored by original readers): how the attributes
    were proven — ``method``, ``assurance``, ``issuer``, ``credential`` — for the agent."""

    def __post_init__(self) -> None:
        if self.status not in ("success", "failed"):
            raise ValueError("status must be 'success' or 'failed'")
        if self.attributes is not None:
            copied = dict(self.attributes)
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in copied.items()):
                raise TypeError("attributes must map str to str")
            object.__setattr__(self, "attributes", MappingProxyType(copied))
        if self.session_url is not None and not isinstance(self.session_url, str):
            raise TypeError("session_url must be a str")
        if self.provenance is not None:
            copied = dict(self.provenance)
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in copied.items()):
                raise TypeError("provenance must map str to str")
            object.__setattr__(self, "provenance", MappingProxyType(copied))

    def __repr__(self) -> str:
        names = None if self.attributes is None else sorted(self.attributes)
        # The session URL can carry a session secret: say only whether there is one.
        session = "set" if self.session_url is not None else None
        return f"AuthResult(status={self.status!r}, attributes={names!r}, session_url={session!r})"


@dataclass(frozen=True)
class ReceivedToken:
    """A verified attribute token: the result plus what a receiver needs against replay."""

    result: AuthResult
    #: ``"jti:<jti>"`` or, for tokens without ``jti``, ``"sha256:<hex of the compact JWE>"``;
    #: ``None`` for a result handed over within this process (:meth:`TokenIssuer.hand_over`).
    replay_key: str | None
    issued_at: int
    expires_at: int
    #: The ``kid`` whose configured key verified the inner JWS; ``None`` when the fallback key
    #: did (original tokens carry no ``kid``).
    kid: str | None


# --------------------------------------------------------------------------------------------
# Strict parsing helpers


def _b64decode(segment: str) -> bytes:
    """Decode unpadded base64url, refusing any non-canonical spelling."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise MalformedTokenError()
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise MalformedTokenError() from None
    # Unused trailing bits must be zero, or one token would have many valid spellings.
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        raise MalformedTokenError()
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Parsers disagree on which duplicate wins; refuse rather than guess.
            raise ValueError("duplicate key")
        result[key] = value
    return result


def _refuse_constant(_name: str) -> Any:
    raise ValueError("non-standard JSON constant")


def _json_object(data: bytes) -> dict[str, Any]:
    """Parse strict JSON that must be an object; anything else is a malformed token."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedTokenError() from None
    if not isinstance(value, dict):
        raise MalformedTokenError()
    return value


def _json_dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _prepare(token: str) -> str:
    """Size and alphabet gate that runs before any decoding."""
    if not isinstance(token, str):
        raise MalformedTokenError()
    if len(token) > MAX_TOKEN_LENGTH:
        raise MalformedTokenError("The token is too large")
    token = token.strip(" \t\r\n")
    if not token.isascii():
        raise MalformedTokenError()
    return token


def _numeric_date(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedTokenError()
    if isinstance(value, float) and not math.isfinite(value):
        raise MalformedTokenError()
    return math.floor(value)


def _check_times(
    claims: Mapping[str, Any], *, now: float, leeway: int, require_exp: bool
) -> tuple[int | None, int | None]:
    """Validate ``exp``/``nbf`` (and the type of ``iat``); return ``(iat, exp)``."""
    iat = _numeric_date(claims, "iat")
    exp = _numeric_date(claims, "exp")
    nbf = _numeric_date(claims, "nbf")
    if exp is None:
        if require_exp:
            raise MalformedTokenError("The token has no expiry time")
    elif now >= exp + leeway:
        raise TokenExpiredError()
    if nbf is not None and now + leeway < nbf:
        raise TokenExpiredError("The token is not valid yet")
    return iat, exp


# --------------------------------------------------------------------------------------------
# Keys and algorithms


def _check_asymmetric(key: object, setting: str) -> JoseKey:
    """Refuse keys the protocol cannot use (wrong family, small RSA, EC other than P-256)."""
    if isinstance(key, RSAKey):
        raw_rsa = key.raw_value
        if not isinstance(raw_rsa, rsa.RSAPrivateKey | rsa.RSAPublicKey):  # pragma: no cover
            raise ConfigError(f"{setting}: unsupported RSA key")
        if raw_rsa.key_size < MIN_RSA_BITS:
            raise ConfigError(f"{setting}: RSA keys must have at least {MIN_RSA_BITS} bits")
        return key
    if isinstance(key, ECKey):
        raw_ec = key.raw_value
        if not isinstance(raw_ec, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
            raise ConfigError(f"{setting}: unsupported EC key")  # pragma: no cover
        if not isinstance(raw_ec.curve, ec.SECP256R1):
            raise ConfigError(f"{setting}: EC keys must use curve P-256")
        return key
    raise ConfigError(f"{setting}: must be an RSA or EC key")


def _check_signing_key(key: object, setting: str) -> SigningKey:
    if isinstance(key, OctKey):
        if len(key.raw_value) < MIN_HMAC_BYTES:
            raise ConfigError(f"{setting}: HMAC secrets must be at least {MIN_HMAC_BYTES} bytes")
        return key
    return _check_asymmetric(key, setting)


def _jws_alg_for(key: SigningKey) -> str:
    if isinstance(key, RSAKey):
        return "RS256"
    if isinstance(key, ECKey):
        return "ES256"
    return "HS256"


def _jws_key_fits(key: SigningKey, alg: str) -> bool:
    """Whether ``key`` may verify ``alg``: this is what stops algorithm-confusion attacks."""
    return _jws_alg_for(key) == alg


def _jwe_key_fits(key: JoseKey, alg: str) -> bool:
    if alg.startswith("RSA-"):
        return isinstance(key, RSAKey)
    return isinstance(key, ECKey)


# --------------------------------------------------------------------------------------------
# Generic JWS / JWT


def sign_jwt(
    claims: dict[str, object],
    key: SigningKey,
    *,
    kid: str | None = None,
    typ: str | None = "JWT",
) -> str:
    """Sign ``claims`` as a compact JWS: RS256/ES256 by key type, HS256 for an ``OctKey``.

    ``typ=None`` leaves ``typ`` out of the header (the tel UI token has none).
    """
    key = _check_signing_key(key, "signing key")
    if not isinstance(key, OctKey) and not key.is_private:
        raise ConfigError("signing key: a private key is needed to sign")
    alg = _jws_alg_for(key)
    header: dict[str, object] = {}
    if typ is not None:
        header["typ"] = typ
    header["alg"] = alg
    if kid is not None:
        header["kid"] = kid
    return jws.serialize_compact(header, _json_dumps(claims), key, registry=_JWS_REGISTRIES[alg])


def _verify_jws(
    token: str,
    keys: Mapping[str, SigningKey],
    fallback_keys: Sequence[SigningKey],
    allowed_algs: Sequence[str],
) -> tuple[str | None, dict[str, Any]]:
    """Verify a compact JWS; return the ``kid`` of the key used (``None`` for a fallback key)
    and the claims. No time checks here.

    Without a known ``kid`` each fallback key that fits the algorithm is tried: original
    plugins sign without ``kid``, one fallback key per remote plugin.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedTokenError()
    header = _json_object(_b64decode(parts[0]))
    payload = _b64decode(parts[1])
    signature = _b64decode(parts[2])

    alg = header.get("alg")
    if not isinstance(alg, str):
        raise MalformedTokenError()
    if "crit" in header:
        # We implement no JWS extensions, so a critical one can never be honoured.
        raise MalformedTokenError()
    if alg not in allowed_algs or alg not in _JWS_REGISTRIES or not signature:
        # Covers "none", HS* where not allowed, and unsigned tokens.
        raise TokenSignatureError()
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise MalformedTokenError()

    key = keys.get(kid) if kid is not None else None
    used_kid = kid if key is not None else None
    candidates = [key] if key is not None else list(fallback_keys)
    if not candidates:
        raise UnknownKeyError()
    candidates = [k for k in candidates if _jws_key_fits(k, alg)]
    if not candidates:
        raise TokenSignatureError()
    for candidate in candidates:
        try:
            jws.deserialize_compact(token, candidate, registry=_JWS_REGISTRIES[alg])
        except ExceededSizeError:
            raise MalformedTokenError() from None
        except Exception:  # noqa: S112 - try the next fallback key
            # BadSignatureError, but also anything a hostile input makes the library raise.
            continue
        return used_kid, _json_object(payload)
    raise TokenSignatureError()


def verify_jwt(
    token: str,
    keys: Mapping[str, SigningKey],
    *,
    fallback_key: SigningKey | None = None,
    leeway: int = 5,
    clock: Clock = time.time,
    require_exp: bool = True,
    allowed_algs: tuple[str, ...] = _ATTRIBUTE_TOKEN_ALGS,
) -> dict[str, object]:
    """Verify a compact JWS made by :func:`sign_jwt` (or a peer) and return its claims.

    The key is picked by header ``kid`` from ``keys``; without a known ``kid`` the
    ``fallback_key`` is used. ``exp`` (required unless ``require_exp`` is false) and ``nbf``
    are checked with ``leeway`` seconds. HS256 is only accepted when listed in ``allowed_algs``.
    """
    token = _prepare(token)
    fallbacks = () if fallback_key is None else (fallback_key,)
    _, claims = _verify_jws(token, keys, fallbacks, allowed_algs)
    _check_times(claims, now=clock(), leeway=leeway, require_exp=require_exp)
    return claims


# --------------------------------------------------------------------------------------------
# The attribute token


def _new_jti() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


class TokenIssuer:
    """Makes attribute tokens in the original ID Contact format (what auth plugins send).

    Tokens carry a random ``jti`` (receivers use it against replay) and, when configured, a
    ``kid``; both are extra claims/headers that original readers ignore.
    """

    def __init__(
        self,
        signing_key: JoseKey,
        *,
        kid: str | None = None,
        status_spelling: Literal["succes", "success"] = "succes",
        lifetime: int = 300,
        clock: Clock = time.time,
    ) -> None:
        key = _check_asymmetric(signing_key, "signing key")
        if not key.is_private:
            raise ConfigError("signing key: a private key is needed to sign")
        if status_spelling not in ("succes", "success"):
            raise ConfigError("status_spelling: must be 'succes' or 'success'")
        if lifetime <= 0:
            raise ConfigError("lifetime: must be positive")
        self._key = key
        self._kid = kid
        self._status_spelling = status_spelling
        self._lifetime = lifetime
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenIssuer(kid={self._kid!r}, alg={_jws_alg_for(self._key)!r})"

    def hand_over(self, result: AuthResult) -> ReceivedToken:
        """What a reader would make of ``issue(result)``, for a receiver in this process: the
        token protects a result between processes, and this one never leaves."""
        now = int(self._clock())
        return ReceivedToken(
            result=result,
            replay_key=None,
            issued_at=now,
            expires_at=now + self._lifetime,
            kid=self._kid,
        )

    def issue(self, result: AuthResult, encrypt_to: JoseKey) -> str:
        """Sign ``result`` and encrypt it to ``encrypt_to``; returns the compact JWE."""
        recipient = _check_asymmetric(encrypt_to, "encryption key")
        now = int(self._clock())
        claims: dict[str, object] = {
            "sub": ATTRIBUTES_SUBJECT,
            "status": self._status_spelling if result.status == "success" else "failed",
        }
        if result.attributes is not None:
            claims["attributes"] = dict(result.attributes)
        if result.session_url is not None:
            claims["session_url"] = result.session_url
        if result.provenance is not None:
            claims["provenance"] = dict(result.provenance)
        claims["iat"] = now
        claims["exp"] = now + self._lifetime
        claims["jti"] = _new_jti()
        inner = sign_jwt(claims, self._key, kid=self._kid)

        alg = "RSA-OAEP" if isinstance(recipient, RSAKey) else "ECDH-ES"
        header = {"typ": "JWT", "cty": "JWT", "alg": alg, "enc": _JWE_ENC}
        return jwe.encrypt_compact(
            header, _json_dumps({"njwt": inner}), recipient, registry=_JWE_WRITE_REGISTRY
        )


def _try_decrypt(token: str, key: JoseKey) -> bytes | None:
    try:
        return jwe.decrypt_compact(token, key, registry=_JWE_READ_REGISTRY).plaintext
    except Exception:
        # A wrong key, a tampered part, or odd input the library trips over: all "not ours".
        return None


class TokenReader:
    """Reads attribute tokens: decrypt with any of our keys, verify, check time and shape.

    Accepts the original format (no ``kid``, no ``jti``, status ``"succes"``) as well as ours.
    """

    def __init__(
        self,
        decryption_keys: Sequence[JoseKey],
        verification_keys: Mapping[str, JoseKey],
        *,
        fallback_key: JoseKey | Sequence[JoseKey] | None = None,
        leeway: int = 5,
        clock: Clock = time.time,
    ) -> None:
        if not decryption_keys:
            raise ConfigError("decryption keys: at least one is needed")
        checked = [_check_asymmetric(k, "decryption key") for k in decryption_keys]
        if not all(k.is_private for k in checked):
            raise ConfigError("decryption key: a private key is needed to decrypt")
        self._decryption_keys = tuple(checked)
        self._verification_keys: Mapping[str, SigningKey] = MappingProxyType(
            {
                kid: _check_asymmetric(k, f"verification key {kid}")
                for kid, k in verification_keys.items()
            }
        )
        if fallback_key is None:
            fallbacks: Sequence[JoseKey] = ()
        elif isinstance(fallback_key, RSAKey | ECKey):
            fallbacks = (fallback_key,)
        else:
            fallbacks = tuple(fallback_key)
        self._fallback_keys: tuple[SigningKey, ...] = tuple(
            _check_asymmetric(k, "fallback key") for k in fallbacks
        )
        if leeway < 0:
            raise ConfigError("leeway: must not be negative")
        self._leeway = leeway
        self._clock = clock

    def __repr__(self) -> str:
        return (
            f"TokenReader(decryption_keys={len(self._decryption_keys)}, "
            f"kids={sorted(self._verification_keys)!r}, "
            f"fallbacks={len(self._fallback_keys)})"
        )

    def read(self, token: str) -> ReceivedToken:
        """Decrypt, verify and parse an attribute token, or raise a :class:`TokenError`."""
        token = _prepare(token)
        parts = token.split(".")
        if len(parts) != 5:
            raise MalformedTokenError()
        header = _json_object(_b64decode(parts[0]))
        for part in parts[1:]:
            _b64decode(part)
        alg, enc = header.get("alg"), header.get("enc")
        if not isinstance(alg, str) or not isinstance(enc, str):
            raise MalformedTokenError()
        if alg not in _JWE_READ_ALGS or enc not in _JWE_READ_ENCS:
            raise TokenDecryptionError()
        if "zip" in header or "crit" in header:
            # Compression invites decompression bombs and the original never used it.
            raise TokenDecryptionError()
        if alg == "ECDH-ES" and (parts[1] != "" or not isinstance(header.get("epk"), dict)):
            # Direct key agreement has an empty encrypted key and needs the ephemeral key.
            raise MalformedTokenError()

        plaintext: bytes | None = None
        for key in self._decryption_keys:
            if _jwe_key_fits(key, alg):
                plaintext = _try_decrypt(token, key)
                if plaintext is not None:
                    break
        if plaintext is None:
            raise TokenDecryptionError()

        inner = _json_object(plaintext).get("njwt")
        if not isinstance(inner, str):
            raise MalformedTokenError("The token holds no signed attribute token")
        kid, claims = _verify_jws(
            inner, self._verification_keys, self._fallback_keys, _ATTRIBUTE_TOKEN_ALGS
        )
        iat, exp = _check_times(claims, now=self._clock(), leeway=self._leeway, require_exp=True)
        if iat is None or exp is None:
            # Both are always present in the original format; we need them for replay records.
            raise MalformedTokenError()

        result = _parse_result(claims)
        jti = claims.get("jti")
        if jti is None:
            replay_key = "sha256:" + hashlib.sha256(token.encode("ascii")).hexdigest()
        elif isinstance(jti, str) and 0 < len(jti) <= _MAX_JTI_LENGTH:
            replay_key = "jti:" + jti
        else:
            raise MalformedTokenError()
        return ReceivedToken(
            result=result,
            replay_key=replay_key,
            issued_at=iat,
            expires_at=exp,
            kid=kid,
        )


def _parse_result(claims: Mapping[str, Any]) -> AuthResult:
    """Turn verified claims into an :class:`AuthResult`, refusing anything off-shape."""
    sub = claims.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise MalformedTokenError()
    raw_status = claims.get("status")
    status = _STATUS_READ.get(raw_status) if isinstance(raw_status, str) else None
    if status is None:
        raise MalformedTokenError()
    attributes = claims.get("attributes")
    if attributes is not None and not (
        isinstance(attributes, dict)
        and all(isinstance(v, str) for v in attributes.values())  # keys are str in JSON
    ):
        raise MalformedTokenError()
    session_url = claims.get("session_url")
    if session_url is not None and not isinstance(session_url, str):
        raise MalformedTokenError()
    provenance = claims.get("provenance")
    if provenance is not None and not (
        isinstance(provenance, dict) and all(isinstance(v, str) for v in provenance.values())
    ):
        raise MalformedTokenError()
    return AuthResult(
        status=status, attributes=attributes, session_url=session_url, provenance=provenance
    )
