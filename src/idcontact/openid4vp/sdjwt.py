"""SD-JWT VC verification (RFC 9901 SD-JWT; draft-ietf-oauth-sd-jwt-vc), for presentations
with key binding.

A presentation is ``<issuer-signed JWT>~<disclosure>~…~<KB-JWT>``. We check, in this order:
the issuer's key against our trust (:mod:`~idcontact.openid4vp.trust`) and its signature, the
``vct`` allow-list, the validity times, every disclosure's digest (each must be referenced
exactly once, RFC 9901 §7.1), then the key-binding JWT: signed by the credential's ``cnf.jwk``,
``typ: kb+jwt``, ``aud`` our client id, our ``nonce``, a fresh ``iat`` and the ``sd_hash`` of
the presentation (§7.3). Only SHA-256 digests (``_sd_alg``) are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from idcontact.openid4vp.errors import (
    CredentialExpiredError,
    CredentialTypeError,
    DisclosureError,
    IssuerSignatureError,
    KeyBindingError,
    MalformedPresentationError,
    PresentationTooLargeError,
    StalePresentationError,
    WrongAudienceError,
    WrongNonceError,
)
from idcontact.openid4vp.trust import IssuerTrust, b64url_decode

SD_JWT_TYPES = ("dc+sd-jwt", "vc+sd-jwt")
KB_TYPE = "kb+jwt"
MAX_DISCLOSURES = 200
MAX_DEPTH = 16
RESERVED = frozenset({"_sd", "...", "_sd_alg", "cnf", "iss", "vct", "iat", "exp", "nbf", "status"})


@dataclass(frozen=True)
class Limits:
    algorithms: tuple[str, ...] = ("ES256",)
    max_bytes: int = 32 * 1024
    kb_max_age: int = 300
    """A key-binding JWT older than this (seconds) is stale."""
    leeway: int = 30


@dataclass(frozen=True)
class VerifiedCredential:
    """What a verified presentation says; ``claims`` is the disclosed payload without the SD-JWT
    machinery (``_sd``, ``cnf``…). Never logged (it holds the resident's values)."""

    vct: str
    issuer: str
    claims: Mapping[str, Any]
    issued_at: int | None
    status: Mapping[str, Any] | None

    def __repr__(self) -> str:
        return f"VerifiedCredential(vct={self.vct!r}, issuer={self.issuer!r}, claims=<hidden>)"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def digest(text: str) -> str:
    """The base64url SHA-256 of ``text`` (a disclosure, or the presentation for ``sd_hash``)."""
    return b64url(hashlib.sha256(text.encode("ascii")).digest())


def _strict_json(raw: bytes) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError("duplicate key")
            result[key] = value
        return result

    try:
        return json.loads(raw, object_pairs_hook=no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedPresentationError() from None


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a compact JWS, unverified (to find the key)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedPresentationError()
    header, payload = _strict_json(b64url_decode(parts[0])), _strict_json(b64url_decode(parts[1]))
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise MalformedPresentationError()
    return header, payload


MAX_HEADER_BYTES = 16 * 1024
"""``x5c`` chains make big headers; joserfc's default limit is 512 bytes."""


def registry(algorithms: Collection[str]) -> jws.JWSRegistry:
    """A JWS registry for ``algorithms`` that admits certificate chains in the header."""
    found = jws.JWSRegistry(algorithms=list(algorithms))
    found.max_header_length = MAX_HEADER_BYTES
    return found


def verify_jws(token: str, key: ECKey, algorithms: Collection[str]) -> bool:
    try:
        jws.deserialize_compact(token, key, registry=registry(algorithms))
    except (JoseError, ValueError):
        return False
    return True


def split(presentation: str) -> tuple[str, list[str], str]:
    """Issuer-signed JWT, disclosures, KB-JWT (empty when the presentation has none)."""
    parts = presentation.split("~")
    if len(parts) < 2 or not parts[0]:
        raise MalformedPresentationError("not an SD-JWT")
    disclosures = parts[1:-1]
    if any(not d for d in disclosures):
        raise MalformedPresentationError("an empty disclosure")
    return parts[0], disclosures, parts[-1]


@dataclass(frozen=True)
class _Disclosure:
    name: str | None
    value: Any


def _parse_disclosure(text: str) -> _Disclosure:
    item = _strict_json(b64url_decode(text))
    if not isinstance(item, list) or not isinstance(item[0] if item else None, str):
        raise DisclosureError("A disclosure is malformed")
    if len(item) == 3 and isinstance(item[1], str):
        if item[1] in ("_sd", "..."):
            raise DisclosureError("A disclosure uses a reserved name")
        return _Disclosure(item[1], item[2])
    if len(item) == 2:
        return _Disclosure(None, item[1])
    raise DisclosureError("A disclosure is malformed")


class _Unfolder:
    """Replaces digests with the disclosed values, recursively (RFC 9901 §7.1 step 3)."""

    def __init__(self, disclosures: Mapping[str, _Disclosure]) -> None:
        self.disclosures = disclosures
        self.seen: set[str] = set()
        self.used: set[str] = set()

    def _take(self, value: object) -> _Disclosure | None:
        if not isinstance(value, str):
            raise DisclosureError("A digest is malformed")
        if value in self.seen:
            raise DisclosureError("A digest occurs twice")
        self.seen.add(value)
        found = self.disclosures.get(value)
        if found is not None:
            self.used.add(value)
        return found

    def unfold(self, node: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise MalformedPresentationError("nested too deeply")
        if isinstance(node, dict):
            out: dict[str, Any] = {
                k: self.unfold(v, depth + 1) for k, v in node.items() if k not in ("_sd", "_sd_alg")
            }
            digests = node.get("_sd", [])
            if not isinstance(digests, list):
                raise DisclosureError("_sd is malformed")
            for value in digests:
                found = self._take(value)
                if found is None:
                    continue  # a decoy, or a claim not disclosed
                if found.name is None or found.name in out:
                    raise DisclosureError("A disclosure does not fit where it is referenced")
                out[found.name] = self.unfold(found.value, depth + 1)
            return out
        if isinstance(node, list):
            items: list[Any] = []
            for element in node:
                if isinstance(element, dict) and set(element) == {"..."}:
                    found = self._take(element["..."])
                    if found is None:
                        continue
                    if found.name is not None:
                        raise DisclosureError("A disclosure does not fit where it is referenced")
                    items.append(self.unfold(found.value, depth + 1))
                else:
                    items.append(self.unfold(element, depth + 1))
            return items
        return node


def _int_claim(payload: Mapping[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedPresentationError(f"{name} is not a number")
    return int(value)


def verify_presentation(
    presentation: str,
    *,
    trust: IssuerTrust,
    audience: str,
    nonce: str,
    now: float,
    allowed_vct: Collection[str],
    limits: Limits = Limits(),
) -> VerifiedCredential:
    """Verify one SD-JWT VC presentation with key binding; raise a :class:`PresentationError`
    subclass that says what is wrong."""
    if len(presentation) > limits.max_bytes:
        raise PresentationTooLargeError()
    if not presentation.isascii():
        raise MalformedPresentationError()
    issuer_jwt, disclosure_texts, kb_jwt = split(presentation)
    if len(disclosure_texts) > MAX_DISCLOSURES:
        raise PresentationTooLargeError("Too many disclosures")

    header, payload = jwt_parts(issuer_jwt)
    if header.get("typ") not in SD_JWT_TYPES:
        raise MalformedPresentationError("The credential is not an SD-JWT VC (typ)")
    if header.get("alg") not in limits.algorithms:
        raise IssuerSignatureError("The credential's algorithm is not accepted")
    issuer = trust.key_for(header, payload, now)
    if not verify_jws(issuer_jwt, issuer.key, limits.algorithms):
        raise IssuerSignatureError()

    vct = payload.get("vct")
    if not isinstance(vct, str) or vct not in allowed_vct:
        raise CredentialTypeError()
    exp, nbf, iat = (_int_claim(payload, n) for n in ("exp", "nbf", "iat"))
    if exp is not None and now > exp + limits.leeway:
        raise CredentialExpiredError()
    if (nbf is not None and now + limits.leeway < nbf) or (
        iat is not None and now + limits.leeway < iat
    ):
        raise CredentialExpiredError()
    if payload.get("_sd_alg", "sha-256") != "sha-256":
        raise DisclosureError("Only sha-256 digests are accepted")

    disclosures: dict[str, _Disclosure] = {}
    for text in disclosure_texts:
        key = digest(text)
        if key in disclosures:
            raise DisclosureError("A disclosure occurs twice")
        disclosures[key] = _parse_disclosure(text)
    unfolder = _Unfolder(disclosures)
    claims = unfolder.unfold(payload)
    if unfolder.used != set(disclosures):
        raise DisclosureError()

    _check_key_binding(
        kb_jwt,
        payload.get("cnf"),
        sd_hash=digest(presentation[: len(presentation) - len(kb_jwt)]),
        audience=audience,
        nonce=nonce,
        now=now,
        limits=limits,
    )
    status = payload.get("status")
    kept = {k: v for k, v in claims.items() if k not in RESERVED}
    return VerifiedCredential(
        vct=vct,
        issuer=issuer.issuer,
        claims=kept,
        issued_at=iat,
        status=status if isinstance(status, dict) else None,
    )


def _check_key_binding(
    kb_jwt: str,
    cnf: object,
    *,
    sd_hash: str,
    audience: str,
    nonce: str,
    now: float,
    limits: Limits,
) -> None:
    if not kb_jwt:
        raise KeyBindingError("The presentation has no key-binding JWT")
    if not isinstance(cnf, dict) or not isinstance(cnf.get("jwk"), dict):
        raise KeyBindingError("The credential names no holder key (cnf.jwk)")
    try:
        holder = ECKey.import_key(cnf["jwk"])
    except (JoseError, ValueError, TypeError):
        raise KeyBindingError("The holder key is not usable") from None
    if holder.is_private:
        raise KeyBindingError("The holder key is not usable")
    header, claims = jwt_parts(kb_jwt)
    if header.get("typ") != KB_TYPE or header.get("alg") not in limits.algorithms:
        raise KeyBindingError("The key-binding JWT has the wrong type or algorithm")
    if not verify_jws(kb_jwt, holder, limits.algorithms):
        raise KeyBindingError("The key-binding JWT's signature is not valid")
    if claims.get("aud") != audience:
        raise WrongAudienceError()
    if claims.get("nonce") != nonce:
        raise WrongNonceError()
    iat = _int_claim(claims, "iat")
    if iat is None or iat < now - limits.kb_max_age or iat > now + limits.leeway:
        raise StalePresentationError()
    if claims.get("sd_hash") != sd_hash:
        raise KeyBindingError("The key-binding JWT is for another presentation (sd_hash)")
