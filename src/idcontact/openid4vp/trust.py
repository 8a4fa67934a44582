"""Whose credentials we accept: the issuer's key from an ``x5c`` chain that ends at one of our
configured trust anchors, or (development) from a trusted ``did:jwk`` / pinned ``did:web``.

SD-JWT VC draft §3.5 (issuer-signed JWT verification key), RFC 5280 chains checked link by
link with ``cryptography``: signatures, validity times, ``basicConstraints`` of every issuing
certificate. ``did:web`` documents are not fetched at verification time: their keys are pinned
in the configuration.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from idcontact.openid4vp.errors import MalformedPresentationError, UntrustedIssuerError

MAX_CHAIN = 5
MAX_CACHED_CHAINS = 1000


@dataclass(frozen=True)
class IssuerKey:
    key: ECKey
    issuer: str
    """Who signed, for the agent: a certificate's organisation or common name, or the DID."""


def b64url_decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise MalformedPresentationError() from None


def did_jwk_key(did: str) -> ECKey:
    """The key a ``did:jwk`` names (its method-specific id is the base64url JWK)."""
    if not did.startswith("did:jwk:"):
        raise MalformedPresentationError("not a did:jwk")
    try:
        jwk = json.loads(b64url_decode(did.removeprefix("did:jwk:").split("#", 1)[0]))
        if not isinstance(jwk, dict) or "d" in jwk:
            raise ValueError("not a public JWK")
        return ECKey.import_key(jwk)
    except (ValueError, JoseError):
        raise MalformedPresentationError("the did:jwk is not a usable key") from None


def did_jwk_of(key: ECKey) -> str:
    public = {k: v for k, v in key.as_dict(private=False).items() if k in ("kty", "crv", "x", "y")}
    raw = json.dumps(public, separators=(",", ":"), sort_keys=True).encode()
    return "did:jwk:" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def load_pem_certificates(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def parse_x5c(x5c: object) -> list[x509.Certificate]:
    """An ``x5c`` header (standard base64 DER, leaf first) as certificates."""
    if not isinstance(x5c, list) or not 1 <= len(x5c) <= MAX_CHAIN:
        raise MalformedPresentationError("x5c must list 1 to 5 certificates")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
    except (TypeError, ValueError, binascii.Error):
        raise MalformedPresentationError("x5c holds no valid certificate") from None


def verify_chain(
    chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate], now: float
) -> None:
    """The chain (leaf first) links up to one of ``anchors``; every certificate is valid now.

    Raises :class:`UntrustedIssuerError`."""
    at = datetime.fromtimestamp(now, UTC)
    for cert in chain:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise UntrustedIssuerError("A certificate of the issuer is expired or not yet valid")
    for child, parent in itertools.pairwise(chain):
        _issued_by(child, parent)
    last = chain[-1]
    for anchor in anchors:
        if last == anchor:
            return
        if last.issuer == anchor.subject:
            try:
                _issued_by(last, anchor)
            except UntrustedIssuerError:
                continue
            return
    raise UntrustedIssuerError("The issuer's certificate does not lead to a trust anchor")


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> None:
    try:
        constraints = parent.extensions.get_extension_for_class(x509.BasicConstraints)
        if not constraints.value.ca:
            raise UntrustedIssuerError("A certificate in the issuer's chain is not a CA")
        child.verify_directly_issued_by(parent)
    except x509.ExtensionNotFound:
        raise UntrustedIssuerError("A certificate in the issuer's chain is not a CA") from None
    except (ValueError, TypeError, InvalidSignature):
        raise UntrustedIssuerError("The issuer's certificate chain is broken") from None


def ec_key_of(cert: x509.Certificate) -> ECKey:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise UntrustedIssuerError("The issuer's key is not a P-256 key")
    return ECKey.import_key(public)


def display_name(cert: x509.Certificate) -> str:
    for oid in (NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME):
        names = cert.subject.get_attributes_for_oid(oid)
        if names:
            return str(names[0].value)
    return cert.subject.rfc4514_string()


def _san(
    cert: x509.Certificate, kind: type[x509.DNSName | x509.UniformResourceIdentifier]
) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(kind)]


def dns_names(cert: x509.Certificate) -> list[str]:
    return _san(cert, x509.DNSName)


def uri_names(cert: x509.Certificate) -> list[str]:
    return _san(cert, x509.UniformResourceIdentifier)


def sha256_b64url(data: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return base64.urlsafe_b64encode(digest.finalize()).rstrip(b"=").decode()


@dataclass(frozen=True)
class _CheckedChain:
    leaf: x509.Certificate
    key: IssuerKey
    valid_from: float
    valid_until: float


class IssuerTrust:
    """The configured trust anchors and DIDs; finds and checks the key of a credential."""

    def __init__(
        self,
        anchors: Sequence[x509.Certificate] = (),
        dids: Sequence[str] = (),
        did_web: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.anchors = list(anchors)
        self._did_jwk = {d: did_jwk_key(d) for d in dids}
        self._did_web: dict[str, list[ECKey]] = {}
        self._chains: dict[tuple[str, ...], _CheckedChain] = {}
        for did, keys in (did_web or {}).items():
            self._did_web[did] = [ECKey.import_key(dict(k)) for k in keys]

    def _chain_key(self, x5c: object, now: float) -> tuple[x509.Certificate, IssuerKey]:
        """The leaf and its key, once the chain is checked; a chain seen before is not checked
        again while all its certificates are valid (signatures do not change with time)."""
        cache_key = (
            tuple(x5c) if isinstance(x5c, list) and all(isinstance(c, str) for c in x5c) else None
        )
        hit = self._chains.get(cache_key) if cache_key is not None else None
        if hit is not None and hit.valid_from <= now <= hit.valid_until:
            return hit.leaf, hit.key
        chain = parse_x5c(x5c)
        verify_chain(chain, self.anchors, now)
        leaf = chain[0]
        found = IssuerKey(ec_key_of(leaf), display_name(leaf))
        if cache_key is not None:
            if len(self._chains) >= MAX_CACHED_CHAINS:
                self._chains.pop(next(iter(self._chains)))
            self._chains[cache_key] = _CheckedChain(
                leaf,
                found,
                max(c.not_valid_before_utc.timestamp() for c in chain),
                min(c.not_valid_after_utc.timestamp() for c in chain),
            )
        return leaf, found

    def key_for(
        self, header: Mapping[str, Any], payload: Mapping[str, Any], now: float
    ) -> IssuerKey:
        """The key that must have signed a credential with this header and payload."""
        iss = payload.get("iss")
        if "x5c" in header:
            leaf, found = self._chain_key(header["x5c"], now)
            if isinstance(iss, str) and iss.startswith("https://"):
                # An https issuer must be the one the certificate names (SD-JWT VC §3.5).
                host = urlsplit(iss).hostname or ""
                if host not in dns_names(leaf) and iss not in uri_names(leaf):
                    raise UntrustedIssuerError("The issuer's certificate does not name it")
            return found
        if isinstance(iss, str) and iss.startswith("did:"):
            kid = header.get("kid")
            if kid is not None and (not isinstance(kid, str) or kid.split("#", 1)[0] != iss):
                raise UntrustedIssuerError("The credential's key id is not the issuer's")
            if iss in self._did_jwk:
                return IssuerKey(self._did_jwk[iss], iss)
            keys = self._did_web.get(iss)
            if keys:
                wanted = kid.split("#", 1)[1] if isinstance(kid, str) and "#" in kid else None
                for key in keys:
                    if wanted is None or key.kid == wanted:
                        return IssuerKey(key, iss)
        raise UntrustedIssuerError()
